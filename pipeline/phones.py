"""A call's phone numbers: valid or not, E.164 form, region, country code and type, and the
normalization of a call's two numbers (`normalize_numbers`, on the hot path, remembering what
each spelling resolved to in the runner's `Memo`).

Region of a nationally written number (no "+"): there is no setting for it. We take, in order,
the region of the call's other number when that one is written internationally, then the region
named in the carrier id (a two-letter ISO region as one of its parts, e.g. "gb-vodafone" or
"carrier_DE_2"). A number that does not parse as a valid number under those stays as given.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal, NamedTuple

import phonenumbers
from phonenumbers import PhoneMetadata
from phonenumbers.phonenumberutil import _number_type_helper

import schemas
from pipeline import numbers
from pipeline.memo import Memo

RECORD = "CallEvent"


def international_region(number: str) -> str | None:
    """The region of a number written internationally ("+..." or "00..."), if it is valid."""
    text = number.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+"):
        return None
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.region_code_for_number(parsed)


def to_e164(number: str, region: str | None) -> str | None:
    """E.164 form of `number` (national numbers read in `region`), or None if it is not valid."""
    text = number.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+") and region is None:
        return None
    try:
        parsed = phonenumbers.parse(text, None if text.startswith("+") else region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


_REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)


@lru_cache(maxsize=4096)
def carrier_region(carrier_id: str) -> str | None:
    """A two-letter ISO region named as one part of the carrier id, if any."""
    for part in re.split(r"[^A-Za-z]+", carrier_id):
        if len(part) == 2 and part.upper() in _REGIONS:
            return part.upper()
    return None


def _resolve(number: str, other: str | None, fallback: str | None) -> tuple[str, str | None]:
    """(E.164 or the number as given, its region) with the region hints tried in order: its own
    international prefix, the other number's region, the carrier's region. The reference
    definition; the hot path is `normalize_numbers`, which gives the same answers with one parse."""
    own = international_region(number)
    for region in (own, other, fallback):
        if region is not None:
            e164 = to_e164(number, region)
            if e164 is not None:
                return e164, international_region(e164) or region
    return number, None


class NumberInfo(NamedTuple):
    """A valid number: E.164 form, region, country calling code, number type (mobile, ...)."""

    e164: str
    region: str
    country_code: int
    kind: str


_TYPE_NAMES = {
    getattr(phonenumbers.PhoneNumberType, n): n.lower()
    for n in vars(phonenumbers.PhoneNumberType)
    if n.isupper()
}


def _info(parsed: phonenumbers.PhoneNumber) -> NumberInfo | None:
    """Validity, region and type of a parsed number at once. `is_valid_number` and `number_type`
    each find the region and run the same type matcher; done once, it costs half."""
    region = phonenumbers.region_code_for_number(parsed)
    if region is None or parsed.country_code is None:
        return None
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(parsed.country_code, region)
    if metadata is None:
        return None
    if region != numbers.NON_GEO and parsed.country_code != phonenumbers.country_code_for_valid_region(
        region
    ):
        return None
    kind = _number_type_helper(phonenumbers.national_significant_number(parsed), metadata)
    if kind == phonenumbers.PhoneNumberType.UNKNOWN:
        return None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return NumberInfo(e164, region, parsed.country_code, _TYPE_NAMES.get(kind, "unknown"))


def number_info(number: str, region: str | None) -> NumberInfo | None:
    """The number read internationally ("+", "00") or, written nationally, in `region`."""
    text = _plain(number)
    international = text.startswith("+")
    if not international and region is None:
        return None
    region = None if international else region
    return _known(numbers.read(text, region), text, region)


def _known(fast: numbers.Found | numbers.Fallback | None, text: str, region: str | None) -> NumberInfo | None:
    """What `numbers.read` answered, parsed where it could not say."""
    if fast is numbers.FALLBACK:
        return parsed_info(text, region)
    return None if fast is None else NumberInfo(*fast)


def _plain(number: str) -> str:
    """A spelling as it is read: stripped, a leading "00" written "+"."""
    text = number.strip()
    return "+" + text[2:] if text.startswith("00") else text


def parsed_info(text: str, region: str | None) -> NumberInfo | None:
    """`number_info` through phonenumbers.parse: the definition `pipeline.numbers` is held to."""
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    return _info(parsed)


@lru_cache(maxsize=1)
def _phone_and_carrier_fields() -> tuple[tuple[str, ...], str]:
    phones = schemas.fields_in(RECORD, category="phone")
    (carrier,) = schemas.fields_in(RECORD, category="carrier")
    if len(phones) != 2 or any("." in p for p in phones):
        raise ValueError("a call has two top-level numbers (each reads the other's region)")
    return phones, carrier


def normalize_numbers(record: dict[str, Any], memo: Memo | None = None) -> tuple[str, ...]:
    """Rewrite the call's numbers (caller, callee: the phone-annotated fields) to E.164 where
    they parse; return the call's regions (the numbers', then the carrier's), most specific
    first, for free-text detection. `memo` remembers what numbers resolved to (pipeline/memo.py),
    and the facts of each E.164 form for pseudonymization."""
    memo = memo if memo is not None else Memo()
    (a, b), carrier = _phone_and_carrier_fields()
    first, second = record[a], record[b]
    fallback = carrier_region(record[carrier])
    # _international's and _national's look-ups first, inline: once the spellings are known
    # (nearly always) each number costs a dict look-up, no call
    peek = memo.peek
    intl_first = peek(("intl", first), _MISSING)
    if intl_first is _MISSING:
        intl_first = _international(memo, first)
    intl_second = peek(("intl", second), _MISSING)
    if intl_second is _MISSING:
        intl_second = _international(memo, second)
    info_first = intl_first
    if intl_first is False:
        other = intl_second.region if intl_second else None
        info_first = peek(("num", first, other, fallback), _MISSING)
        if info_first is _MISSING:
            info_first = _national(memo, first, other, fallback)
    info_second = intl_second
    if intl_second is False:
        other = intl_first.region if intl_first else None
        info_second = peek(("num", second, other, fallback), _MISSING)
        if info_second is _MISSING:
            info_second = _national(memo, second, other, fallback)
    record[a] = info_first.e164 if info_first is not None else first
    record[b] = info_second.e164 if info_second is not None else second
    return _regions(
        info_first.region if info_first is not None else None,
        info_second.region if info_second is not None else None,
        fallback,
    )


_MISSING = object()


def _international(memo: Memo, number: str) -> NumberInfo | Literal[False] | None:
    """`international_info`, remembered by its spelling."""
    key = ("intl", number)
    found = memo.peek(key, _MISSING)
    if found is not _MISSING:
        return found
    info = international_info(number)
    if info:
        memo.put(("facts", info.e164), (info.country_code, info.kind))
    return memo.put(key, info)


def international_info(number: str) -> NumberInfo | Literal[False] | None:
    """What a number written internationally ("+", "00") is (None: not valid); False if it is
    written nationally."""
    text = number.strip()
    if not text.startswith(("+", "00")):
        return False
    return number_info(text, None)


def _national(memo: Memo, number: str, other: str | None, fallback: str | None) -> NumberInfo | None:
    """`national_info`, remembered by its spelling and regions."""
    key = ("num", number, other, fallback)
    found = memo.peek(key, _MISSING)
    if found is not _MISSING:
        return found
    info = national_info(number, other, fallback)
    if info is not None:
        memo.put(("facts", info.e164), (info.country_code, info.kind))
    return memo.put(key, info)


def national_info(number: str, other: str | None, fallback: str | None) -> NumberInfo | None:
    """A nationally written number read in the other number's region, else the carrier's."""
    for region in (other, fallback):
        if region is not None:
            info = number_info(number, region)
            if info is not None:
                return info
    return None


def international_infos(spellings: list[str]) -> list[NumberInfo | Literal[False] | None]:
    """`international_info` of each spelling, those written internationally read in one call."""
    texts = list(map(_plain, spellings))
    out: list[NumberInfo | Literal[False] | None] = [False] * len(texts)
    at = [i for i, text in enumerate(texts) if text.startswith("+")]
    for i, fast in zip(at, numbers.read_many([texts[i] for i in at], None), strict=True):
        out[i] = _known(fast, texts[i], None)
    return out


def national_infos(spellings: list[str], other: str | None, fallback: str | None) -> list[NumberInfo | None]:
    """`national_info` of each spelling, read a region at a time."""
    texts = list(map(_plain, spellings))
    out: list[NumberInfo | None] = [None] * len(texts)
    pending = list(range(len(texts)))
    for region in (other, fallback):
        if region is None or not pending:
            continue
        if any(texts[i].startswith("+") for i in pending):  # not from the columns: one at a time
            read = [number_info(texts[i], region) for i in pending]
        else:
            fast = numbers.read_many([texts[i] for i in pending], region)
            read = [_known(f, texts[i], region) for f, i in zip(fast, pending, strict=True)]
        for i, info in zip(pending, read, strict=True):
            out[i] = info
        pending = [i for i, info in zip(pending, read, strict=True) if info is None]
    return out


@lru_cache(maxsize=4096)
def _regions(*regions: str | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r for r in regions if r is not None))
