"""pipeline.numbers against phonenumbers itself: parse + is_valid_number + region_code_for_number +
number_type (through `pipeline.phones.parsed_info`, the definition), on every region's example
numbers in every format and with every kind of region hint, their one-digit mutations, random
digits and hostile spellings. Any difference fails; a FALLBACK answer is allowed (the caller
parses), but the carriers' spellings must not need it."""

from __future__ import annotations

import random
from functools import cache

import phonenumbers
from phonenumbers import PhoneNumberFormat as Fmt
from phonenumbers import PhoneNumberType

from pipeline import numbers
from pipeline.phones import NumberInfo, number_info, parsed_info

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
