"""The free-text PII detector: what it must find, what it must leave alone, and the canary corpus."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.detect import Label, Span, detect, redact, redact_text, redact_value

CORPUS = Path(__file__).resolve().parent.parent / "canary" / "transcripts.jsonl"


def found(text: str, regions: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    return [(s.label.name, text[s.start : s.end]) for s in detect(text, regions)]


@pytest.mark.parametrize(
    ("text", "regions", "expected"),
    [
        # phone numbers, international and national (region from the call)
        ("call +44 20 7946 0958 now", (), [("PHONE", "+44 20 7946 0958")]),
        ("call 020 7946 0958 now", ("GB",), [("PHONE", "020 7946 0958")]),
        ("call 020 7946 0958 now", ("US",), []),  # not a US number: region matters
        ("ring (415) 555-2671.", ("US",), [("PHONE", "(415) 555-2671")]),
        ("ring 415.555.2671", ("US",), [("PHONE", "415.555.2671")]),
        ("dial 0044 161 496 0753", ("GB",), [("PHONE", "0044 161 496 0753")]),
        ("au 06 12 34 56 78 merci", ("FR",), [("PHONE", "06 12 34 56 78")]),
        ("+1 (415) 555-2671 ext 12", (), [("PHONE", "+1 (415) 555-2671")]),
        ("mobile 98765 43210", ("IN",), [("PHONE", "98765 43210")]),
        ("ref A-7723419 1 800 555 0199", ("US",), [("PHONE", "1 800 555 0199")]),
        ("order 12345 020 7946 0958 ok", ("GB",), [("PHONE", "020 7946 0958")]),
        ("call (415) 555-2671 10 times", ("US",), [("PHONE", "(415) 555-2671")]),
        ("call 020 7946 0958 2024-03-15", ("GB",), [("PHONE", "020 7946 0958")]),
        (
            "2 020 7946 0958 0161 496 0753 3",
            ("GB",),
            [("PHONE", "020 7946 0958"), ("PHONE", "0161 496 0753")],
        ),
        ("fijo 91 234 56 78", ("ES",), [("PHONE", "91 234 56 78")]),
        # emails
        ("mail jane.doe@example.com.", (), [("EMAIL", "jane.doe@example.com")]),
        ("<a.b+tag@mail.example.co.uk>", (), [("EMAIL", "a.b+tag@mail.example.co.uk")]),
        ("user@localhost is no address", (), []),
        # internationalized addresses (RFC 6531 local parts, IDNA domains): the whole address
        ("write to müller@example.de", (), [("EMAIL", "müller@example.de")]),
        ("contact: zoë.o'brien@example.ie", (), [("EMAIL", "zoë.o'brien@example.ie")]),
        ("write to bob@exämple.de", (), [("EMAIL", "bob@exämple.de")]),
        ("write to 张伟@例子.中国", (), [("EMAIL", "张伟@例子.中国")]),
        ("почта: иван@пример.рф, спасибо", (), [("EMAIL", "иван@пример.рф")]),
        ("ईमेल डाटामेल@डाटामेल.भारत पर", (), [("EMAIL", "डाटामेल@डाटामेल.भारत")]),
        ("mu\u0308ller@example.de (decomposed)", (), [("EMAIL", "mu\u0308ller@example.de")]),
        ("José.Núñez@correo.es.", (), [("EMAIL", "José.Núñez@correo.es")]),
        ("«marie@exemple.fr»", (), [("EMAIL", "marie@exemple.fr")]),
        ("“anna@example.com”", (), [("EMAIL", "anna@example.com")]),
        ("mailto:bob@example.xn--p1ai today", (), [("EMAIL", "bob@example.xn--p1ai")]),
        ("o'brien's address 'sean@example.ie'", (), [("EMAIL", "sean@example.ie")]),
        ("用户名：张伟@例子.中国", (), [("EMAIL", "张伟@例子.中国")]),
        ("zoë.o’brien@example.ie", (), [("EMAIL", "zoë.o’brien@example.ie")]),
        ("‘bob@example.com’ …", (), [("EMAIL", "bob@example.com")]),
        ("अपना ईमेल दें। राम@उदाहरण.भारत।", (), [("EMAIL", "राम@उदाहरण.भारत")]),
        ("meet @ 5 or ping @bob or see you@home", (), []),
        ("ö@ü and née@ex", (), []),  # no domain with a TLD
        # IPs
        ("from 203.0.113.45.", (), [("IP", "203.0.113.45")]),
        (
            "at 2001:db8::1 and fe80::1ff:fe23:4567:890a",
            (),
            [("IP", "2001:db8::1"), ("IP", "fe80::1ff:fe23:4567:890a")],
        ),
        ("999.1.1.1 is no address", (), []),
        ("mapped ::ffff:192.0.2.1 too", (), [("IP", "::ffff:192.0.2.1")]),
        ("port 10.0.0.1:8080", (), [("IP", "10.0.0.1")]),
        # cards (Luhn) and IBANs (mod 97)
        ("card 4111 1111 1111 1111", ("US",), [("CARD", "4111 1111 1111 1111")]),
        ("amex 378282246310005", ("US",), [("CARD", "378282246310005")]),
        ("card 4111 1111 1111 1112", ("US",), []),  # fails Luhn
        ("card 4111 1111 1111 1111 12/27 cvv 123", ("US",), [("CARD", "4111 1111 1111 1111")]),
        ("amex 3782 822463 10005", ("US",), [("CARD", "3782 822463 10005")]),
        (
            "2 cards 4111111111111111 5500000000000004",
            ("US",),
            [("CARD", "4111111111111111"), ("CARD", "5500000000000004")],
        ),
        ("iban GB82 WEST 1234 5698 7654 32", (), [("IBAN", "GB82 WEST 1234 5698 7654 32")]),
        ("iban NL91ABNA0417164300", (), [("IBAN", "NL91ABNA0417164300")]),
        ("iban GB83 WEST 1234 5698 7654 32", (), []),  # bad check digits
    ],
)
def test_detects(text: str, regions: tuple[str, ...], expected: list[tuple[str, str]]) -> None:
    assert found(text, regions) == expected


MANY = ("US", "GB", "DE", "ES", "FR", "IT", "JP", "IN", "BR", "AU", "CN", "KR", "TR", "MX", "NL", "PL")


@pytest.mark.parametrize(
    ("text", "regions", "expected"),
    [
        # IBANs whose length is a multiple of 4, followed by a word; dashes; lower case
        (
            "wire the refund to ES91 2100 0418 4502 0005 1332 by monday",
            (),
            [("IBAN", "ES91 2100 0418 4502 0005 1332")],
        ),
        ("to ES91-2100-0418-4502-0005-1332 by monday", (), [("IBAN", "ES91-2100-0418-4502-0005-1332")]),
        ("BE68 5390 0754 7034 thanks", (), [("IBAN", "BE68 5390 0754 7034")]),
        ("iban BE68539007547034.", (), [("IBAN", "BE68539007547034")]),
        ("PL61 1090 1014 0000 0712 1981 2874 please", (), [("IBAN", "PL61 1090 1014 0000 0712 1981 2874")]),
        ("AT61 1904 3002 3457 3201 ok", (), [("IBAN", "AT61 1904 3002 3457 3201")]),
        ("my iban is de89370400440532013000", (), [("IBAN", "de89370400440532013000")]),
        ("IBAN:NO9386011117947 ok", (), [("IBAN", "NO9386011117947")]),
        # cards outside 2-6 and 13-19: JCB 15 (1800, 2131), Maestro 12; and the other brands
        ("charge it to 180017582537953", ("US",), [("CARD", "180017582537953")]),
        ("jcb 213100000001231", ("US",), [("CARD", "213100000001231")]),
        ("maestro 675900001230", ("GB",), [("CARD", "675900001230")]),
        ("maestro 5018 0000 1239", ("GB",), [("CARD", "5018 0000 1239")]),
        ("jcb 3530 1113 3330 0000", ("JP",), [("CARD", "3530 1113 3330 0000")]),
        ("diners 3056 930902 5904", ("US",), [("CARD", "3056 930902 5904")]),
        ("discover 6011-1111-1111-1117", ("US",), [("CARD", "6011-1111-1111-1117")]),
        ("unionpay 6200000000000001230", ("CN",), [("CARD", "6200000000000001230")]),
        ("mastercard 2221 0012 3412 3450", ("US",), [("CARD", "2221 0012 3412 3450")]),
        ("visa 4222222222222", ("US",), [("CARD", "4222222222222")]),
        # IPv4 in parentheses; dotted groups over 255 are offered to the phone check
        ("(192.168.1.1)", (), [("IP", "192.168.1.1")]),
        ("(415) 555-2671 (192.168.1.1)", ("US",), [("PHONE", "(415) 555-2671"), ("IP", "192.168.1.1")]),
        ("call 532.123.45.67", ("TR",), [("PHONE", "532.123.45.67")]),
        ("or +90 532.123.45.67", (), [("PHONE", "+90 532.123.45.67")]),
        # international call prefixes other than 00, whatever the call's region
        ("call 0011 61 2 9876 5432", ("AU",), [("PHONE", "0011 61 2 9876 5432")]),
        ("call 011 44 20 7946 0958", ("GB",), [("PHONE", "011 44 20 7946 0958")]),
        ("call 010 1 650 253 0000", ("JP",), [("PHONE", "010 1 650 253 0000")]),
        ("call 001 650 253 0000", ("KR",), [("PHONE", "001 650 253 0000")]),
        ("call 008 44 20 7946 0958", ("TH",), [("PHONE", "008 44 20 7946 0958")]),
        ("call 0011 44 20 7946 0958", ("US",), [("PHONE", "0011 44 20 7946 0958")]),
        # doubled, full-width and glued plus signs; full-width separators
        ("++1 650 253 0000", (), [("PHONE", "++1 650 253 0000")]),
        ("＋1 650 253 0000", (), [("PHONE", "＋1 650 253 0000")]),
        ("＋１－６５０－２５３－００００", (), [("PHONE", "＋１－６５０－２５３－００００")]),
        ("call+64 3 331 6005", (), [("PHONE", "+64 3 331 6005")]),
        # an amount does not swallow the number after it
        ("$20 415-666-7777", ("US",), [("PHONE", "415-666-7777")]),
        ("paid €5 0161 496 0753", ("GB",), [("PHONE", "0161 496 0753")]),
        # unspaced Chinese, Japanese, Korean
        ("我的电话号码是415-666-7777", ("US",), [("PHONE", "415-666-7777")]),
        ("電話番号は090-1234-5678です", ("JP",), [("PHONE", "090-1234-5678")]),
        ("電話：０９０－１２３４－５６７８", ("JP",), [("PHONE", "０９０－１２３４－５６７８")]),
        ("전화번호는010-1234-5678입니다", ("KR",), [("PHONE", "010-1234-5678")]),
        ("我的电话号码是+86 138 0013 8000。", (), [("PHONE", "+86 138 0013 8000")]),
        ("账户ES9121000418450200051332。", (), [("IBAN", "ES9121000418450200051332")]),
        # many regions at once: no phone over an IBAN's or a ZIP code's digits
        ("ES91 2100 0418 4502 0005 1332 zip 94103", MANY, [("IBAN", "ES91 2100 0418 4502 0005 1332")]),
        ("zip 94103 415 555 2671", MANY, [("PHONE", "415 555 2671")]),
        ("postal code 94103-1234, +44 20 7946 0958", MANY, [("PHONE", "+44 20 7946 0958")]),
        # an extension stays visible: only the number is personal (as libphonenumber reads it)
        ("+1 (650) 253-0000 x123", (), [("PHONE", "+1 (650) 253-0000")]),
        # Arabic-Indic digits
        ("رقمي ٠٧٩١١ ١٢٣٤٥٦", ("GB",), [("PHONE", "٠٧٩١١ ١٢٣٤٥٦")]),
    ],
)
def test_detects_text_written_by_others(
    text: str, regions: tuple[str, ...], expected: list[tuple[str, str]]
) -> None:
    assert found(text, regions) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The bill was $1,250.00, or £49.99, or 250,00 EUR, or 120 €.",
        "See you at 10:30, 9:15 am or 14:45:10.",
        "Dates: 2024-03-15, 15/03/2024, 03/15/2024, 15.03.2024, 2024-03-15T10:30:00Z.",
        "Order 4155550123, order number 20240315001, ticket #48213, invoice INV-2024-00042.",
        "Case 12345678 and case no. 7723419 and reference 20240315.",
        "Versions 2.4.1, v10.3.2, 4.12.0 and build 20240315.1 on iOS 17.4.1.",
        "In 2023 prices rose 12.5% (30 percent over 3 years), to 1,250,000 points.",
        "Tracking 1Z999AA10123456784 and 9400111899223197428490 for order 112-4567890-1234567.",
        "Kundennummer 123456789, Vorgang 7723419, Rechnung 2024-0815.",
        "Open 24/7, 2-4 pm, 3/14 at 4:02 pm, zip 94103, sort code 20-20-15.",
        "Agent: thanks. Customer: no problem at all.",
        "Scores were 10 20 30 40 50 60 70 and 20 30 40 50 60.",
        "",
        "20120102 08:00 and 2012-01-02 08:00 and 2012/01/02 8:00",
        "It cost $20 415 times, or $1 250 000 in all, or €5.",
        "zip 94103-1234, postcode 10115, PLZ 80331, postal code 94103.",
        "mistyped IBAN GB83 WEST 1234 5698 7654 32 and ES92 2100 0418 4502 0005 1332",
        "订单号2024031500123已发货，金额¥1,250.00，时间10:30。",
        "Bestellung 2024-03-15 um 14:45, Betrag 1.250,00 EUR, Version 4.12.3.",
    ],
)
@pytest.mark.parametrize("regions", [("US", "GB", "DE"), MANY])
def test_ordinary_numbers_survive(text: str, regions: tuple[str, ...]) -> None:
    assert detect(text, regions) == []
    assert redact_text(text, regions) == text


@pytest.mark.parametrize(
    ("text", "spans", "expected"),
    [
        ("a 1 b", [], "a 1 b"),
        ("call 020 now", [Span(5, 8, Label.PHONE)], "call [PHONE] now"),
        ("x@y.io and 1.2.3.4", [Span(0, 6, Label.EMAIL), Span(11, 18, Label.IP)], "[EMAIL] and [IP]"),
    ],
)
def test_redact(text: str, spans: list[Span], expected: str) -> None:
    assert redact(text, spans) == expected


@given(st.text(alphabet=st.sampled_from("0123456789 +-.()/:@abAB#$%,\n"), max_size=80))
def test_spans_are_sorted_disjoint_and_inside(text: str) -> None:
    spans = detect(text, ("US", "GB"))
    previous_end = 0
    for span in spans:
        assert previous_end <= span.start < span.end <= len(text)
        previous_end = span.end


def load_corpus() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]


def test_canary_corpus_recall_precision_and_survival() -> None:
    """Every planted canary is found with its label; no ordinary number is destroyed."""
    true_pos = false_pos = false_neg = 0
    destroyed = []
    for entry in load_corpus():
        text = entry["text"]
        spans = detect(text, tuple(entry["regions"]))
        got = {(s.start, s.end, s.label.name) for s in spans}
        expected = set()
        for label, value in entry["pii"]:
            start = text.index(value)
            expected.add((start, start + len(value), label))
        true_pos += len(got & expected)
        false_pos += len(got - expected)
        false_neg += len(expected - got)
        redacted = redact(text, spans)
        destroyed += [(entry["id"], keep) for keep in entry["keep"] if keep not in redacted]
        for _label, value in entry["pii"]:
            assert value not in redacted, entry["id"]
    recall = true_pos / (true_pos + false_neg)
    precision = true_pos / (true_pos + false_pos)
    print(f"canary corpus: recall {recall:.3f} precision {precision:.3f} ({true_pos} planted)")
    assert recall == 1.0
    assert precision == 1.0
    assert destroyed == []


def test_corpus_is_labelled_consistently() -> None:
    entries = load_corpus()
    assert len(entries) >= 40
    assert {label for e in entries for label, _ in e["pii"]} == {lab.name for lab in Label}
    assert len({e["id"] for e in entries}) == len(entries)


def test_generated_transcripts_against_their_ground_truth() -> None:
    """A second, independently written corpus: pipeline.carrier.generate plants PII and ordinary numbers in
    transcripts of every region it knows and says which is which."""
    from pipeline.carrier.generate import REGIONS, generate_transcript

    labels = {"phone": "PHONE", "email": "EMAIL", "ip": "IP", "card": "CARD", "iban": "IBAN"}
    rng = random.Random(3)
    missed, spurious, destroyed = [], [], []
    for i in range(60 * len(REGIONS)):
        region = REGIONS[i % len(REGIONS)]
        t = generate_transcript(rng, region)
        spans = detect(t.text, (region,))
        got = [(s.label.name, t.text[s.start : s.end]) for s in spans]
        expected = [(labels[category], value) for category, value in t.pii]
        missed += [(region, e) for e in expected if e not in got]
        spurious += [(region, g) for g in got if g not in expected]
        redacted = redact(t.text, spans)
        destroyed += [(region, k) for k in t.keep if k not in redacted]
    assert missed == []
    assert spurious == []
    assert destroyed == []


@pytest.mark.parametrize(
    "value",
    [
        "e9fcb779fa35da84@sbc6.carrier.net",  # SIP call id: one email address whole
        "3848276298220188511@192.0.2.4",  # SIP call id naming the phone's address
        "müller@example.de",  # internationalized: the shortcut's ASCII form does not apply
        "张伟@例子.中国",
        "zoë.o'brien@example.ie",
        "a84b4c76e66710@pc33.atlanta.com",
        "tg-17",
        "G.711a",
        "AMR-WB",
        "opus",
        "winter-2026",
        "callback requested on +44 20 7946 0958",
        "x" * 80 + " +44 20 7946 0958",  # longer than what is remembered
        "",
    ],
)
def test_redact_value_is_redact_text(value: str) -> None:
    """Attribute values take a shortcut (remembered, or one email whole) with the same result."""
    for _ in range(2):  # the second call is answered from memory
        assert redact_value(value, ("GB",)) == redact_text(value, ("GB",))
