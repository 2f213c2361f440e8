"""Free-text PII detection: phone numbers, emails, IPv4/IPv6, payment cards, IBANs.

`detect(text, regions)` returns the PII spans of a text; `redact(text, spans)` replaces each span
with its label ([PHONE], [EMAIL], [IP], [CARD], [IBAN]). Runs on every transcript and attribute
value, so the work is ordered cheapest first:

1. gate: text without a digit or "@" holds none of these (one C-level scan, no regex);
2. one compiled scanner, left to right, whose alternatives at each position are tried in order:
   email, IBAN, IPv6, IPv4, then "ordinary number" shapes that must survive (dates, times,
   amounts, percentages, version numbers), then runs of digits with phone-like separators.
   Ordinary shapes are consumed by the scanner, so a digit run never starts inside a date;
3. checks only on the candidates: ipaddress for IPs, mod-97 for IBANs, Luhn (plus issuer prefix
   and length) for cards, and phonenumbers (parse + is_valid_number) for digit runs, with the
   call's own regions for national numbers. PhoneNumberMatcher is used only on a run that does
   not parse whole, to find a phone number glued to other digits.

A digit run right after an identifier word ("order", "ticket", "invoice", "case", "ref", ...,
optionally followed by "number"/"no."/"#"/":") or glued to letters ("A-7723419") is an
identifier, not a phone number; it is still checked as a card number.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers


class Label(StrEnum):
    PHONE = "[PHONE]"
    EMAIL = "[EMAIL]"
    IP = "[IP]"
    CARD = "[CARD]"
    IBAN = "[IBAN]"


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    label: Label


_SEP = r"[ \u00a0\-.()/]"
_SCANNER = re.compile(
    r"""
    (?P<email>(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})
  | (?P<iban>\b[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]{4}){2,7}(?:[ ]?[A-Za-z0-9]{1,3})?\b)
  | (?P<ipv6>(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:]))
  | (?P<ipv4>(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d))
  | (?P<ordinary>
        \b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b                    # 2024-03-15
      | \b\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})\b          # 15/03/2024, 03-15-24
      | \b\d{1,2}:\d{2}(?::\d{2})?(?:\s?[AaPp]\.?[Mm]\.?)?  # 10:30, 10:30:15 pm
      | [$€£¥₹]\s?\d[\d,.\u00a0 ]*\d                        # $1,250.00
      | \d[\d,.]*\s?(?:%|percent\b)                         # 12.5%
      | \d[\d,.\u00a0 ]*\s?(?:EUR|USD|GBP|INR|dollars?|euros?|pounds?|rupees?)\b
      | \d{1,3}(?:,\d{3})+(?:\.\d+)?                        # 1,250,000
    )
  | (?P<run>(?<![\w+])\+?\(?\d(?:"""
    + _SEP
    + r"""{0,2}\d)+)
    """,
    re.VERBOSE,
)
_IDENT_BEFORE = re.compile(
    r"\b(?:order|ticket|invoice|case|ref|reference|booking|tracking|confirmation|serial|policy|claim"
    r"|account|customer|member|transaction|receipt|item|sku|model|id|version|release|build)\s*"
    r"(?:number|num|no\.?|nr\.?|id)?\s*[#:]?\s*$|#\s*$|[A-Za-z]-?$",
    re.IGNORECASE,
)
_CONTEXT = 32
_AFTER_FIRST_GROUP = re.compile(r"^\S+\s+(\+?\(?\d.*)$")
_CARD_SEP = frozenset(" -")
_VALID = phonenumbers.Leniency.VALID


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_card(run: str, digits: str) -> bool:
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return False
    if any(not ch.isdigit() and ch not in _CARD_SEP for ch in run):
        return False
    return _luhn(digits)


def _is_iban(candidate: str) -> bool:
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or compact[:2] not in phonenumbers.SUPPORTED_REGIONS:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


def _is_ip(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def _phone_valid(run: str, regions: Sequence[str]) -> bool:
    if run.startswith("+"):
        tries: Sequence[str | None] = (None,)
    elif run.startswith("00"):
        run = "+" + run[2:]
        tries = (None,)
    else:
        tries = regions
    for region in tries:
        try:
            number = phonenumbers.parse(run, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


def _phones_in_run(run: str, offset: int, regions: Sequence[str], out: list[Span]) -> None:
    digits = sum(ch.isdigit() for ch in run)
    if digits < 6:
        return
    if digits <= 17 and _phone_valid(run, regions):
        out.append(Span(offset, offset + len(run), Label.PHONE))
        return
    if not any(not ch.isdigit() for ch in run.lstrip("+")):
        return  # one unbroken digit string that is not a phone number: no sub-number to find
    for region in regions or ("ZZ",):
        found = [
            Span(offset + m.start, offset + m.end, Label.PHONE)
            for m in phonenumbers.PhoneNumberMatcher(run, region, leniency=_VALID)
        ]
        if found:
            out.extend(found)
            return


def detect(text: str, regions: Sequence[str] = ()) -> list[Span]:
    """PII spans in `text`, sorted and non-overlapping. `regions` are ISO region codes for
    numbers written nationally (the call's own numbers' regions), most likely first."""
    if not text or ("@" not in text and not any(ch.isdigit() for ch in text)):
        return []
    spans: list[Span] = []
    for m in _SCANNER.finditer(text):
        kind = m.lastgroup
        value = m.group()
        if kind == "run":
            digits = "".join(ch for ch in value if ch.isdigit())
            if _is_card(value, digits) and not value.startswith("+"):
                spans.append(Span(m.start(), m.end(), Label.CARD))
            elif not _IDENT_BEFORE.search(text, max(0, m.start() - _CONTEXT), m.start()):
                _phones_in_run(value, m.start(), regions, spans)
            else:  # an identifier: only what follows its first group may still be a phone number
                rest = _AFTER_FIRST_GROUP.search(value)
                if rest is not None:
                    _phones_in_run(rest.group(1), m.start() + rest.start(1), regions, spans)
        elif kind == "email":
            spans.append(Span(m.start(), m.end(), Label.EMAIL))
        elif kind == "iban":
            if _is_iban(value):
                spans.append(Span(m.start(), m.end(), Label.IBAN))
        elif kind in ("ipv4", "ipv6") and _is_ip(value):
            spans.append(Span(m.start(), m.end(), Label.IP))
    return spans


def redact(text: str, spans: Sequence[Span]) -> str:
    """`text` with every span replaced by its label. Spans must be sorted and non-overlapping
    (as `detect` returns them)."""
    if not spans:
        return text
    parts: list[str] = []
    pos = 0
    for span in spans:
        parts.append(text[pos : span.start])
        parts.append(span.label.value)
        pos = span.end
    parts.append(text[pos:])
    return "".join(parts)


def redact_text(text: str, regions: Sequence[str] = ()) -> str:
    """Detect and redact in one call."""
    return redact(text, detect(text, regions))
