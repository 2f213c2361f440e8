"""The checks `pipeline.detect` runs on a candidate once its shape has been found: is this run of
digits a payment card, a phone number, an identifier by its context; is this string an IBAN. Pure
functions of the candidate.

- cards: a known issuer prefix with a length that issuer uses, then Luhn. Visa 13/16/19;
  Mastercard 51-55 and 2221-2720 (16); Amex 34/37 (15); Diners 300-305/36/38/39 (14-19);
  Discover 6011/644-649/65, UnionPay 62, JCB 3528-3589, Mir 2200-2204 (16-19); JCB 1800/2131
  (15); Maestro 50/56-69 (12-19). A 13-digit order number starting "2026" is none of these.
- IBANs: the country's registered length (a table below), then mod 97.
- identifiers: a number glued to Latin letters or right after an identifier word ("order",
  "ticket", "zip", "case no.", "订单号", ...) is no phone number.
- phone numbers: the digits read as an international number ("+", or any international call
  prefix: 00, 011, 0011, 010, 001, ...), or nationally in one of the call's regions, valid as
  phonenumbers.parse + is_valid_number say: `pipeline.numbers` answers from the digits against
  the metadata compiled once per region and asks parse itself for the forms it does not follow
  (carrier codes, digit-rewriting trunk prefixes such as the NANP islands' 7-digit local form,
  a national number written with its country code or an international prefix).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import phonenumbers

from pipeline import numbers

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
# Letters and digits that glue a number into a word: word characters other than CJK ideographs,
# kana and Hangul, which are written without spaces around numbers ("电话415-666-7777").
_CJK = "\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff00-\uffef"
GLUE = rf"[^\W{_CJK}]"
_GLUED = re.compile(GLUE)
# Words after which a number is an identifier, not a phone number ("order 4155550123"); the weak
# ones only with a qualifier ("account number ...", so that a speaker label "Customer:" is not).
_IDENT_WORDS = frozenset(
    [
        "order",
        "ticket",
        "invoice",
        "case",
        "ref",
        "reference",
        "booking",
        "tracking",
        "confirmation",
        "serial",
        "policy",
        "claim",
        "transaction",
        "receipt",
        "sku",
        "id",
        "version",
        "release",
        "build",
        "zip",
        "zipcode",
        "postcode",
        "plz",
        # German compounds, which take no separate "number"
        "kundennummer",
        "bestellnummer",
        "rechnungsnummer",
        "vertragsnummer",
        "auftragsnummer",
        "vorgangsnummer",
        "vorgang",
        "rechnung",
        "bestellung",
    ]
)
_IDENT_WEAK = frozenset(["account", "customer", "member", "item", "model", "reservation", "postal"])
_QUALIFIERS = frozenset(["number", "num", "no", "nr", "id", "code"])
# The same in Chinese, Japanese and Korean, which glue them to the number: order / ticket numbers.
_CJK_IDENT = ("订单号", "单号", "编号", "订单", "注文番号", "受付番号", "주문번호")
# The text before a number, reversed: separators, an optional "#", then up to two words.
_REV_WORDS = re.compile(r"[\s:]*(#)?[\s:]*\.?([A-Za-z]+)?(?:\s+([A-Za-z]+))?")
_CONTEXT = 32
_REV_IDENT = frozenset(w[::-1] for w in _IDENT_WORDS)
_REV_IDENT_OR_WEAK = frozenset(w[::-1] for w in _IDENT_WORDS | _IDENT_WEAK)
_REV_QUALIFIERS = frozenset(w[::-1] for w in _QUALIFIERS)
_CARD_RUN = re.compile(r"[0-9]+(?:[ -][0-9]+)*")  # digits, spaces and dashes only
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
_NON_DIGIT = re.compile(r"[^0-9]")
_DIGITS = re.compile(r"[0-9]+")


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


_CARD_LENGTHS = {
    head: frozenset(n for low, high, lengths in _ISSUERS if low <= head < high for n in lengths)
    for head in range(1000, 10000)
}


def _card_length_ok(digits: str) -> bool:
    """Whether an issuer hands out card numbers that start so and are this long."""
    return len(digits) in _CARD_LENGTHS.get(int(digits[:4]), ())


def is_card(run: str, digits: str) -> bool:
    """A card number: issuer prefix and length, digits separated by spaces or dashes only, Luhn."""
    if not 12 <= len(digits) <= 19 or not _card_length_ok(digits):
        return False
    return _CARD_RUN.fullmatch(run) is not None and luhn(digits)


def iban_length(country: str) -> int | None:
    return IBAN_LENGTHS.get(country.upper())


_LETTER_VALUES = str.maketrans({chr(c): str(c - 55) for c in range(ord("A"), ord("Z") + 1)})  # A=10


def is_iban(compact: str) -> bool:
    """`compact`: letters and digits only, any case. Its country's length and mod 97."""
    if len(compact) != IBAN_LENGTHS.get(compact[:2].upper(), 0) or not compact.isalnum():
        return False
    moved = (compact[4:] + compact[:4]).upper().translate(_LETTER_VALUES)
    return int(moved) % 97 == 1


@dataclass(frozen=True, slots=True)
class _Region:
    """What the plausibility check reads of a region: its trunk prefix. Validity is
    pipeline.numbers' (phonenumbers' metadata compiled once per region)."""

    prefix: str | None  # the trunk prefix as written ("0", "1", "8")


@cache
def _region(region: str) -> _Region | None:
    m = phonenumbers.PhoneMetadata.metadata_for_region(region)
    return None if m is None else _Region(m.national_prefix)


def _parsed_valid(text: str, region: str | None) -> bool:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def _international(digits: str) -> bool:
    """`digits` after a "+" or an international call prefix: country code, then the number (in
    which a trunk prefix may still be written: "+44 (0)20 7946 0958")."""
    return _valid(numbers.read("+" + digits, None), "+" + digits, None)


def _valid(found: numbers.Found | numbers.Fallback | None, text: str, region: str | None) -> bool:
    if found is numbers.FALLBACK:
        return _parsed_valid(text, region)
    return found is not None


def plausibly_national(run: str, region: str) -> bool:
    """A nationally written number either starts with the region's trunk prefix ("0" in most of
    the world, so "030 901820") or is long enough to be a whole national number (US "415 555
    2671", Indian mobiles) and not a list of small numbers: a short bare number (ticket 7723419,
    2024-0815) is not a phone."""
    groups = _DIGITS.findall(run)
    digits = "".join(groups)
    meta = _region(region)
    prefix = None if meta is None else meta.prefix
    if prefix and digits.startswith(prefix):
        return True
    short_groups = sum(len(g) <= 2 for g in groups)  # "91 234 56 78" yes, "20 30 40 50 60" no
    return len(digits) >= (9 if prefix else 8) and short_groups <= 3


def _valid_digits(meta: _Region, digits: str, text: str, region: str) -> bool:
    """`digits` of a number of `region`, with or without its trunk prefix: what parse(digits,
    region) + is_valid_number say (`pipeline.numbers.read`, which asks parse itself for the forms it
    does not follow: carrier codes, digit-rewriting trunk prefixes, a leading country code or
    international prefix)."""
    return _valid(numbers.read(digits, region), digits, region)


def is_phone(run: str, regions: Sequence[str], digits: str | None = None) -> bool:
    """Whether a run of digits and separators is a valid phone number: international after "+"
    or a call prefix, else national in one of `regions` (those where it is plausibly national).
    `digits`: the run's digits, when the caller has them."""
    if digits is None:
        digits = _NON_DIGIT.sub("", run)
    if run.lstrip("(")[:1] == "+":
        return _international(digits)
    for region in regions:
        meta = _region(region)
        if meta is not None and plausibly_national(run, region) and _valid_digits(meta, digits, run, region):
            return True
    idd = _IDD.match(digits)
    while idd is not None:
        if _international(digits[idd.end() :]):
            return True
        shorter = _IDD.match(digits[: idd.end() - 1])  # "0011" failed: try "001", "00"
        idd = shorter if shorter is not None and shorter.end() < idd.end() else None
    return False


def is_identifier(text: str, start: int) -> bool:
    """Whether the number at `start` is an identifier by its context: glued to letters
    ("A-7723419"), after "#", or after an identifier word ("order", "case no.", ...)."""
    if start and (
        _GLUED.match(text, start - 1) or (text[start - 1] == "-" and _GLUED.match(text, max(0, start - 2)))
    ):
        return True
    if text.endswith(_CJK_IDENT, max(0, start - 4), start):
        return True
    m = _REV_WORDS.match(text[max(0, start - _CONTEXT) : start][::-1])
    if m is None:
        return False
    if m.group(1):
        return True
    last = (m.group(2) or "").lower()  # reversed, as the sets below
    if last in _REV_IDENT:
        return True
    return last in _REV_QUALIFIERS and (m.group(3) or "").lower() in _REV_IDENT_OR_WEAK
