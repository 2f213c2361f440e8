"""The checks `pipeline.detect` runs on a candidate once its shape has been found: is this run of
digits a payment card, a phone number; is this string an IBAN. Pure functions of the candidate.

- cards: a known issuer prefix with a length that issuer uses, then Luhn. Visa 13/16/19;
  Mastercard 51-55 and 2221-2720 (16); Amex 34/37 (15); Diners 300-305/36/38/39 (14-19);
  Discover 6011/644-649/65, UnionPay 62, JCB 3528-3589, Mir 2200-2204 (16-19); JCB 1800/2131
  (15); Maestro 50/56-69 (12-19). A 13-digit order number starting "2026" is none of these.
- IBANs: the country's registered length (a table below), then mod 97.
- phone numbers: the digits read as an international number ("+", or any international call
  prefix: 00, 011, 0011, 010, 001, ...), or nationally in one of the call's regions. A region's
  number is checked against phonenumbers' metadata from the digits: the whole-number pattern of
  the region (one regex), then `is_valid_number` on a `PhoneNumber` built from the digits,
  skipping `phonenumbers.parse`. Regions whose trunk-prefix rules rewrite digits (Argentina,
  Brazil, the NANP islands' 7-digit local form, ...) and numbers with a leading zero after the
  country code go through `parse` as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache

import phonenumbers
from phonenumbers import PhoneNumber

# Registered IBAN lengths (SWIFT's IBAN registry, plus the countries Presidio also accepts).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AO": 25, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BF": 28,
    "BG": 22, "BH": 22, "BI": 27, "BJ": 28, "BR": 29, "BY": 28, "CF": 27, "CG": 27, "CH": 21,
    "CI": 28, "CM": 27, "CR": 22, "CV": 25, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18,
    "DO": 28, "DZ": 26, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GA": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GQ": 27, "GR": 27, "GT": 28, "GW": 25,
    "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IR": 26, "IS": 26, "IT": 27,
    "JO": 30, "KM": 27, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MA": 28, "MC": 27, "MD": 24, "ME": 22, "MG": 27, "MK": 19, "ML": 28,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "MZ": 25, "NE": 28, "NI": 28, "NL": 18, "NO": 15,
    "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SN": 28, "SO": 23,
    "ST": 25, "SV": 28, "TD": 27, "TG": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22,
    "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
# International call prefixes as written before a country code, longest first so that "0011 61"
# is read as Australia's prefix before "00" is tried: the preferred or only plain prefix of every
# region in phonenumbers' metadata, and the carrier-select variants people dial (001x, 00x).
_IDD = re.compile(r"0011|001[4-9]|00[0-9]|01[0-2]|810|119|00")
_CARD_SEP = frozenset(" -")
_LONG = range(16, 20)
# (first four digits from, to, lengths) of the card issuers
_ISSUERS = (
    (4000, 5000, (13, 16, 19)),  # Visa
    (5100, 5600, (16,)),  # Mastercard
    (2221, 2721, (16,)),  # Mastercard
    (3400, 3500, (15,)),  # Amex
    (3700, 3800, (15,)),  # Amex
    (3000, 3060, range(14, 20)),  # Diners
    (3600, 3700, range(14, 20)),  # Diners
    (3800, 4000, range(14, 20)),  # Diners
    (3528, 3590, _LONG),  # JCB
    (1800, 1801, (15,)),  # JCB
    (2131, 2132, (15,)),  # JCB
    (2200, 2205, _LONG),  # Mir
    (6011, 6012, _LONG),  # Discover
    (6440, 6600, _LONG),  # Discover
    (6200, 6300, _LONG),  # UnionPay
    (5000, 5100, range(12, 20)),  # Maestro
    (5600, 7000, range(12, 20)),  # Maestro
)
_NON_DIGIT = re.compile(r"\D")
_DIGITS = re.compile(r"\d+")


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_length_ok(digits: str) -> bool:
    """Whether an issuer hands out card numbers that start so and are this long."""
    head, n = int(digits[:4]), len(digits)
    return any(low <= head < high and n in lengths for low, high, lengths in _ISSUERS)


def is_card(run: str, digits: str) -> bool:
    """A card number: issuer prefix and length, digits separated by spaces or dashes only, Luhn."""
    if not 12 <= len(digits) <= 19 or not _card_length_ok(digits):
        return False
    if any(not ch.isdigit() and ch not in _CARD_SEP for ch in run):
        return False
    return luhn(digits)


def iban_length(country: str) -> int | None:
    return IBAN_LENGTHS.get(country.upper())


def is_iban(compact: str) -> bool:
    """`compact`: letters and digits only, any case. Its country's length and mod 97."""
    if len(compact) != IBAN_LENGTHS.get(compact[:2].upper(), 0) or not compact.isalnum():
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


_Metadata = tuple[int, str | None, re.Pattern[str] | None, re.Pattern[str] | None, frozenset[int]]


@cache
def _metadata(region: str) -> _Metadata:
    """(country code, trunk prefix, the trunk-prefix pattern when it only strips (None when it
    rewrites digits, as in Argentina or Brazil: then only phonenumbers.parse reads them), the
    region's whole-number pattern, its possible lengths)."""
    m = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if m is None:
        return 0, None, None, None, frozenset()
    prefix = m.national_prefix
    plain = None
    if m.national_prefix_transform_rule is None:
        plain = re.compile(m.national_prefix_for_parsing or re.escape(prefix or "") or "(?!)")
    general = m.general_desc
    if general is None or general.national_number_pattern is None:
        return m.country_code or 0, prefix, plain, None, frozenset()
    pattern = re.compile(general.national_number_pattern)
    return m.country_code or 0, prefix, plain, pattern, frozenset(general.possible_length or ())


def _fits(nsn: str, region: str) -> bool:
    """Whether a national significant number matches the region's whole-number pattern (what
    every valid number of the region does; the cheap filter before is_valid_number)."""
    _cc, _prefix, _plain, pattern, lengths = _metadata(region)
    return pattern is not None and len(nsn) in lengths and pattern.fullmatch(nsn) is not None


def _valid_nsn(country_code: int, nsn: str, regions: Sequence[str]) -> bool:
    if not any(_fits(nsn, r) for r in regions):
        return False
    return phonenumbers.is_valid_number(PhoneNumber(country_code=country_code, national_number=int(nsn)))


def _parsed_valid(text: str, region: str | None) -> bool:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def _international(digits: str) -> bool:
    """`digits` after a "+" or an international call prefix: country code, then the number."""
    for size in (1, 2, 3):
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(digits[:size] or 0))
        if regions is None:
            continue
        nsn = digits[size:]
        if not nsn:
            return False
        if nsn[0] == "0":  # a leading zero kept (Italy) or a trunk prefix written after the code
            return _parsed_valid("+" + digits, None)
        if not all(_metadata(r)[2] is not None for r in regions):
            return _parsed_valid("+" + digits, None)
        return _valid_nsn(int(digits[:size]), nsn, regions)
    return False


def plausibly_national(run: str, region: str) -> bool:
    """A nationally written number either starts with the region's trunk prefix ("0" in most of
    the world, so "030 901820") or is long enough to be a whole national number (US "415 555
    2671", Indian mobiles) and not a list of small numbers: a short bare number (ticket 7723419,
    2024-0815) is not a phone."""
    groups = _DIGITS.findall(run)
    digits = "".join(groups)
    prefix = _metadata(region)[1]
    if prefix and digits.startswith(prefix):
        return True
    short_groups = sum(len(g) <= 2 for g in groups)  # "91 234 56 78" yes, "20 30 40 50 60" no
    return len(digits) >= (9 if prefix else 8) and short_groups <= 3


def _national(run: str, digits: str, region: str) -> bool:
    country_code, prefix, strip, _pattern, _lengths = _metadata(region)
    trunk = None if strip is None else strip.match(digits)
    if strip is None or (trunk is not None and trunk.group() != prefix):
        return _parsed_valid(run, region)  # digits rewritten, or a carrier code
    nsn = digits if trunk is None else digits[trunk.end() :]
    if nsn[:1] == "0" or not nsn:
        return _parsed_valid(run, region)
    if _valid_nsn(country_code, nsn, (region,)):
        return True
    # parse keeps the trunk prefix when stripping it leaves no possible number
    return nsn is not digits and _valid_nsn(country_code, digits, (region,))


def is_phone(run: str, regions: Sequence[str]) -> bool:
    """Whether a run of digits and separators is a valid phone number: international after "+"
    or a call prefix, else national in one of `regions` (those where it is plausibly national)."""
    digits = _NON_DIGIT.sub("", run)
    if run.lstrip("(")[:1] == "+":
        return _international(digits)
    if any(_national(run, digits, r) for r in regions if plausibly_national(run, r)):
        return True
    idd = _IDD.match(digits)
    while idd is not None:
        if _international(digits[idd.end() :]):
            return True
        shorter = _IDD.match(digits[: idd.end() - 1])  # "0011" failed: try "001", "00"
        idd = shorter if shorter is not None and shorter.end() < idd.end() else None
    return False
