"""pipeline.numbers against phonenumbers itself: parse + is_valid_number + region_code_for_number +
number_type (through `pipeline.phones.parsed_info`, the definition), on every region's example
numbers in every format and with every kind of region hint, their one-digit mutations, random
digits and hostile spellings. Any difference fails; a FALLBACK answer is allowed (the caller
parses), but the carriers' spellings must not need it. The native reader (`numbers.read`,
pipeline/native/src/numbers.rs) is held to `lookup` over the same corpus, answer for answer."""

from __future__ import annotations

import random
from functools import cache

import phonenumbers
from phonenumbers import PhoneNumberFormat as Fmt
from phonenumbers import PhoneNumberType

from pipeline import _native, numbers  # imported directly: a missing build fails, never skips
from pipeline.phones import (
    NumberInfo,
    international_info,
    international_infos,
    national_info,
    national_infos,
    number_info,
    parsed_info,
)

REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)
TYPES = [getattr(PhoneNumberType, n) for n in vars(PhoneNumberType) if n.isupper()]


def _examples() -> list[phonenumbers.PhoneNumber]:
    out = []
    for region in REGIONS:
        for kind in TYPES:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                out.append(example)
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        example = phonenumbers.example_number_for_non_geo_entity(code)
        if example is not None:
            out.append(example)
    return out


@cache
def _corpus(seed: int) -> list[tuple[str, str | None]]:
    rng = random.Random(seed)
    cases: list[tuple[str, str | None]] = []
    for example in _examples():
        home = phonenumbers.region_code_for_number(example)
        nsn = phonenumbers.national_significant_number(example)
        code = str(example.country_code)
        for fmt in (Fmt.E164, Fmt.INTERNATIONAL, Fmt.NATIONAL):
            written = phonenumbers.format_number(example, fmt)
            cases += [(written, None), (written, home), (written, rng.choice(REGIONS))]
        cases += [(nsn, home), (code + nsn, home), ("0" + nsn, home), ("1" + nsn, home)]
        for _ in range(1):  # one digit changed, one dropped, one added
            digits = list(nsn)
            digits[rng.randrange(len(digits))] = str(rng.randrange(10))
            mutated = "".join(digits)
            for variant in (mutated, mutated[:-1], mutated + str(rng.randrange(10))):
                cases += [("+" + code + variant, None), (variant, home), (variant, rng.choice(REGIONS))]
    separators = [" ", "-", ".", "(", ")", "", "", ""]
    odd_heads = ["(", " (", "+", "++", "+(", "tel:", "0", "00", "011", "1", "-", "."]
    odd_tails = [")", " ", "x12", " ext. 5", "#", ";ext=2", "a", "\t", "٣", "１", "/", "--", ",,1"]
    hints: list[str | None] = [*REGIONS, "001", "ZZ", "us", None]
    for _ in range(4_000):
        digits = "".join(str(rng.randrange(10)) for _ in range(rng.randrange(1, 20)))
        international = rng.random() < 0.4
        text = "+" + digits if international else digits
        if rng.random() < 0.5:
            text = "".join(c + rng.choice(separators) for c in text)
        if rng.random() < 0.15:
            text = rng.choice(odd_heads) + text
        if rng.random() < 0.15:
            text = text + rng.choice(odd_tails)
        cases.append((text, None if international else rng.choice(hints)))
    return cases


def test_lookup_answers_as_parse_does_or_falls_back() -> None:
    fast = 0
    for written, region in random.Random(2).sample(_corpus(1), 15_000):
        text = written.strip()
        got = numbers.lookup(text, region)
        if got is numbers.FALLBACK:
            continue
        fast += 1
        expected = parsed_info(text, region)
        assert (None if got is None else NumberInfo(*got)) == expected, (written, region)
    assert fast > 9_000  # the corpus is mostly plain spellings: the fast path must answer them


def test_number_info_is_parse_for_every_spelling() -> None:
    """Through the fallback too: what validate uses equals the parse definition."""
    rng = random.Random(3)
    for written, region in rng.sample(_corpus(1), 3_000):
        text = written.strip()
        if text.startswith("00"):
            text = "+" + text[2:]
        if not text.startswith("+") and region is None:
            assert number_info(written, region) is None
            continue
        expected = parsed_info(text, None if text.startswith("+") else region)
        assert number_info(written, region) == expected, (written, region)


def test_carrier_spellings_take_the_fast_path() -> None:
    """Every format phonenumbers writes for a valid example (E.164, international, national with
    its region) is answered without parse, bar the few regions whose national form starts with
    their own country code or international prefix."""
    answered = total = 0
    for example in _examples():
        home = phonenumbers.region_code_for_number(example)
        for fmt, hint in ((Fmt.E164, None), (Fmt.INTERNATIONAL, None), (Fmt.NATIONAL, home)):
            total += 1
            got = numbers.lookup(phonenumbers.format_number(example, fmt), hint)
            if got is not numbers.FALLBACK:
                answered += 1
                assert got is not None
    assert answered / total > 0.95, (answered, total)


def test_the_detectors_phone_check_is_parse_and_is_valid_number() -> None:
    """pipeline.detect_checks reads candidates through pipeline.numbers: nationally in a region
    and after "+", it must say what parse + is_valid_number say (it once differed on national
    numbers written with their country code, a region's international prefix and the NANP
    islands' 7-digit local form: "78091234567" in RU, "00247890753" in UA, "17128301" in TT)."""
    from pipeline import detect_checks

    for digits, region in [
        ("78091234567", "RU"),
        ("00247890753", "UA"),
        ("17128301", "TT"),
        ("13217115", "BS"),
    ]:
        assert detect_checks._valid_digits(detect_checks._Region("0"), digits, digits, region)
    rng = random.Random(4)
    for written, region in rng.sample(_corpus(1), 3_000):
        digits = "".join(c for c in written if c in "0123456789")
        if not digits:
            continue
        if region is None or region not in phonenumbers.SUPPORTED_REGIONS:
            expected = detect_checks._parsed_valid("+" + digits, None)
            assert detect_checks._international(digits) == expected, digits
        else:
            expected = detect_checks._parsed_valid(digits, region)
            assert detect_checks._valid_digits(detect_checks._Region("0"), digits, digits, region) == expected


def test_the_native_reader_answers_as_lookup() -> None:
    """One at a time and a list at a time, every spelling of the corpus (hostile ones, other
    regions' hints, "001", unknown regions) gets the Python form's answer, FALLBACK included."""
    assert isinstance(numbers._READER, _native.NumberReader)
    corpus = _corpus(1)
    by_region: dict[str | None, list[str]] = {}
    for written, region in corpus:
        text = written.strip()
        expected = numbers.lookup(text, region)
        assert numbers.read(text, region) == expected, (written, region)
        by_region.setdefault(region, []).append(text)
    for region, texts in by_region.items():
        assert numbers.read_many(texts, region) == [numbers.lookup(t, region) for t in texts], region
    # lone surrogates (no UTF-8 form) and NUL: the Python form's to judge, never an error
    odd = ["+44 20 7946 095\ud800", "\udcff", "020 7946 0958\x00"]
    for text in odd:
        assert numbers.read(text, "GB") is numbers.lookup(text, "GB") is numbers.FALLBACK
    assert numbers.read_many(odd, "GB") == [numbers.FALLBACK] * 3


def test_the_native_reader_follows_the_trunk_prefix_rules() -> None:
    """The transform rules (Argentina's mobile "15", Mexico's "044"/"045", Brazil's carrier
    codes), the length rule that undoes a strip, regions sharing a calling code by leading
    digits (+1, +7, +44's islands) and non-geographic codes: the native answers are lookup's."""
    cases = [
        ("011 15 2345 6789", "AR"),
        ("0343 15 555 1212", "AR"),
        ("9 11 2345 6789", "AR"),
        ("044 55 1234 5678", "MX"),
        ("0 21 11 2345 6789", "BR"),
        ("0 15 11 98765 4321", "BR"),
        ("+1 809 555 1234", None),
        ("+1 416 555 0199", None),
        ("+7 701 123 4567", None),
        ("+7 912 345 6789", None),
        ("+44 1481 256789", None),
        ("+44 7781 123456", None),
        ("+800 1234 5678", None),
        ("+882 13 1234 5678", None),
        ("07911 123456", "GG"),
        ("0049 30 123456", "DE"),
        ("49 30 123456", "DE"),
    ]
    for text, region in cases:
        assert numbers.read(text, region) == numbers.lookup(text, region), (text, region)
    answered = [numbers.read(t, r) for t, r in cases]
    assert sum(a is not None and a is not numbers.FALLBACK for a in answered) >= 10


def test_the_column_forms_read_as_the_row_forms() -> None:
    """What the column chain reads a batch's new spellings with equals, spelling for spelling,
    what the row chain reads one with: internationally, and nationally in each pair of hints
    (the other number's region, the carrier's), the first that makes it valid winning."""
    rng = random.Random(4)
    spellings = [written for written, _ in rng.sample(_corpus(1), 4_000)]
    assert international_infos(spellings) == [international_info(s) for s in spellings]
    national = [s for s in spellings if not s.strip().startswith(("+", "00"))]
    hints: list[str | None] = [None, "GB", "US", "DE", "IN", "AR", "ZZ"]
    for other in hints:
        for fallback in hints:
            expected = [national_info(s, other, fallback) for s in national]
            assert national_infos(national, other, fallback) == expected, (other, fallback)
    mixed = ["+44 20 7946 0000", "020 7946 0000", "0044 20 7946 0000", "7946 0000"]
    assert national_infos(mixed, "GB", "US") == [national_info(s, "GB", "US") for s in mixed]
    assert sum(info is not None for info in national_infos(national, "GB", "IN")) > 100
