"""Free-text PII detection: phone numbers, emails, IPv4/IPv6, payment cards, IBANs.

`detect(text, regions)` returns the PII spans of a text; `redact(text, spans)` replaces each span
with its label ([PHONE], [EMAIL], [IP], [CARD], [IBAN]). Runs on every transcript and attribute
value, so the work is ordered cheapest first:

1. gate: a text without a digit or "@" holds none of these;
2. anchored scans whose compiled pattern starts with a rare character, so the regex engine skips
   plain text in C: emails from each "@", IBANs from their two check digits, IPv6 from a
   ":hex:" pair, and numeric clusters from a digit, "+", "(" or currency sign. Inside a cluster
   one scanner is tried position by position (match, not search): IPv4, then "ordinary number"
   shapes that must survive (dates, times, amounts, percentages, thousands), then runs of digits
   with phone-like separators. Ordinary shapes are consumed, so a run never starts inside a date;
3. checks only on the candidates: ipaddress for IPs, mod-97 for IBANs, Luhn (plus issuer prefix
   and length) for cards, and phonenumbers (parse + is_valid_number) for runs of 6+ digits, with
   the call's own regions for national numbers. A nationally written number must start with the
   region's trunk prefix ("0" in most countries) or be 9+ digits long (8 where there is no trunk
   prefix). A run that is neither whole is searched for its longest stretch of space-separated
   groups that is one, to find a card or phone number glued to other numbers.

A digit run right after an identifier word ("order", "ticket", "invoice", "case", "ref", ...,
optionally followed by "number"/"no."/"#"/":", or "account"/"customer"/... followed by one of
those, so that a speaker label "Customer:" does not count) or glued to letters ("A-7723419") is an
identifier, not a phone number (what follows its first group still may be); it is still
checked as a card number.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

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
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MONTH = r"(?:0?[1-9]|1[0-2])"
# Where anything numeric starts: a digit, "+", "(" or a currency sign, then what may follow. A
# pattern that begins with a character class lets the regex engine skip plain text in C.
_CLUSTER = re.compile(r"[\d+($€£¥₹][\d \u00a0\-.()/:,%+]*")
_DIGIT = re.compile(r"\d")
# Tried at each position of a cluster (match, not search), in this order.
_SCANNER = re.compile(
    r"""
    (?P<ipv4>(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d))
  | (?P<ordinary>
        (?<!\w)\d{4}[-/.]"""
    + _MONTH
    + "[-/.]"
    + _DAY
    + r"""(?!\d|[-/.]\d)  # 2024-03-15
      | (?<!\w)"""
    + _DAY
    + "[-/.]"
    + _DAY
    + r"""[-/.](?:\d{4}|\d{2})(?!\d|[-/.]\d)  # 15/03/2024, 03-15-24
      | (?<!\w)\d{1,2}:\d{2}(?::\d{2})?(?:\s?[AaPp]\.?[Mm]\.?)?  # 10:30, 10:30:15 pm
      | [$€£¥₹]\s?\d[\d,.\u00a0 ]*\d                        # $1,250.00
      | \d[\d,.]*\s?(?:%|percent\b)                         # 12.5%
      | \d[\d,.\u00a0 ]*\s?(?:(?:EUR|USD|GBP|INR|dollars?|euros?|pounds?|rupees?)\b|[$€£¥₹])
      | \d{1,3}(?:,\d{3})+(?:\.\d+)?                        # 1,250,000
    )
  | (?P<run>(?<![\w+])\+?\(?\d(?:"""
    + _SEP
    + r"""{0,2}\d)+)
    """,
    re.VERBOSE,
)
# Found on their own, each anchored on a character that ordinary text rarely holds.
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._%+-]*$")
_EMAIL_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(
    r"\d\d(?<=[A-Za-z]{2}\d\d)(?<![A-Za-z0-9][A-Za-z]{2}\d\d)"
    r"(?:[ ]?[A-Za-z0-9]{4}){2,7}(?:[ ]?[A-Za-z0-9]{1,3})?\b"
)
_IPV6_SEED = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")  # dots: an embedded IPv4 (::ffff:192.0.2.1)
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
    ]
)
_IDENT_WEAK = frozenset(["account", "customer", "member", "item", "model", "reservation"])
_QUALIFIERS = frozenset(["number", "num", "no", "nr", "id"])
# The text before a number, reversed: separators, an optional "#", then up to two words.
_REV_WORDS = re.compile(r"[\s:]*(#)?[\s:]*\.?([A-Za-z]+)?(?:\s+([A-Za-z]+))?")
_NON_DIGIT = re.compile(r"\D")
_DIGITS = re.compile(r"\d+")
_START = re.compile(r"[\d+($€£¥₹]")
_CONTEXT = 32
_MIN_PHONE_DIGITS = 6
_MAX_PHONE_DIGITS = 17  # 15 of E.164 plus an international prefix "00" or a trunk prefix
_GROUP = re.compile(r"\S+")


def _is_identifier(text: str, start: int) -> bool:
    """Whether the number at `start` is an identifier by its context: glued to letters
    ("A-7723419"), after "#", or after an identifier word ("order", "case no.", ...)."""
    if start and (
        text[start - 1].isalpha() or (text[start - 1] == "-" and text[start - 2 : start - 1].isalpha())
    ):
        return True
    m = _REV_WORDS.match(text[max(0, start - _CONTEXT) : start][::-1])
    if m is None:
        return False
    if m.group(1):
        return True
    last = (m.group(2) or "")[::-1].lower()
    before = (m.group(3) or "")[::-1].lower()
    return last in _IDENT_WORDS or (last in _QUALIFIERS and (before in _IDENT_WORDS or before in _IDENT_WEAK))


_CARD_SEP = frozenset(" -")


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


@cache
def _trunk_prefix(region: str) -> str | None:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    return None if metadata is None else metadata.national_prefix


def _plausibly_national(run: str, region: str) -> bool:
    """A nationally written number either starts with the region's trunk prefix ("0" in most of
    the world, so "030 901820") or is long enough to be a whole national number (US "415 555
    2671", Indian mobiles) and not a list of small numbers: a short bare number (ticket 7723419,
    2024-0815) is not a phone."""
    groups = _DIGITS.findall(run)
    digits = "".join(groups)
    prefix = _trunk_prefix(region)
    if prefix and digits.startswith(prefix):
        return True
    short_groups = sum(len(g) <= 2 for g in groups)  # "91 234 56 78" yes, "20 30 40 50 60" no
    return len(digits) >= (9 if prefix else 8) and short_groups <= 3


def _phone_valid(run: str, regions: Sequence[str]) -> bool:
    if run.startswith("+"):
        tries: Sequence[str | None] = (None,)
    elif run.startswith("00"):
        run = "+" + run[2:]
        tries = (None,)
    else:
        tries = [r for r in regions if _plausibly_national(run, r)]
    for region in tries:
        try:
            number = phonenumbers.parse(run, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


def _label_of(run: str, regions: Sequence[str], phones: bool) -> Label | None:
    digits = _NON_DIGIT.sub("", run)
    if _is_card(run, digits) and not run.startswith("+"):
        return Label.CARD
    if phones and _MIN_PHONE_DIGITS <= len(digits) <= _MAX_PHONE_DIGITS and _phone_valid(run, regions):
        return Label.PHONE
    return None


def _scan_run(run: str, offset: int, regions: Sequence[str], out: list[Span], phones: bool) -> None:
    """The card and phone numbers in a run: the whole run, or else the longest stretch of its
    space-separated groups that is one ("call (415) 555-2671 10 times", "card 4111 1111 1111
    1111 12/27"), then what is left on either side. With `phones` false (the run follows an
    identifier word) its first group starts no phone number."""
    label = _label_of(run, regions, phones)
    if label is not None:
        out.append(Span(offset, offset + len(run), label))
        return
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(run)]
    for size in range(len(groups) - 1, 0, -1):
        for first in range(len(groups) - size + 1):
            start, end = groups[first][0], groups[first + size - 1][1]
            label = _label_of(run[start:end], regions, phones or first > 0)
            if label is None:
                continue
            if first:
                _scan_run(run[:start].rstrip(), offset, regions, out, phones)
            out.append(Span(offset + start, offset + end, label))
            if first + size < len(groups):
                rest = groups[first + size][0]
                _scan_run(run[rest:], offset + rest, regions, out, True)
            return


def _emails(text: str, out: list[Span]) -> None:
    at = text.find("@")
    while at != -1:
        local = _EMAIL_LOCAL.search(text, max(0, at - 64), at)
        domain = _EMAIL_DOMAIN.match(text, at + 1)
        if local is not None and domain is not None:
            start = local.start()
            while start < at and text[start] == ".":
                start += 1
            out.append(Span(start, domain.end(), Label.EMAIL))
            at = text.find("@", domain.end())
        else:
            at = text.find("@", at + 1)


def _ibans(text: str, out: list[Span]) -> None:
    for m in _IBAN.finditer(text):
        start = m.start() - 2
        if _is_iban(text[start : m.end()]):
            out.append(Span(start, m.end(), Label.IBAN))


def _ipv6s(text: str, out: list[Span]) -> None:
    pos = 0
    while (m := _IPV6_SEED.search(text, pos)) is not None:
        start, end = m.start(), m.end()
        while start > 0 and text[start - 1] in _IPV6_CHARS:
            start -= 1
        while end < len(text) and text[end] in _IPV6_CHARS:
            end += 1
        while text[end - 1] == ".":  # a full stop after the address
            end -= 1
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        clear = not (before.isalnum() or before in "_.") and not (after.isalnum() or after == "_")
        if clear and _is_ip(text[start:end]):
            out.append(Span(start, end, Label.IP))
        pos = end


def _numbers(text: str, taken: list[Span], regions: Sequence[str], out: list[Span]) -> None:
    """Cards, IPv4 and phone numbers among the numeric clusters outside `taken` spans."""
    blocked = iter(taken)
    block = next(blocked, None)
    pos = 0
    for cluster in _CLUSTER.finditer(text):
        if cluster.end() - cluster.start() < 4:
            continue  # "7 ", "12%": too short for anything
        digits = len(_NON_DIGIT.sub("", cluster.group()))
        if digits < 4 or (digits < _MIN_PHONE_DIGITS and "." not in cluster.group()):
            continue  # too short for a phone number, card or IPv4 address
        pos = max(pos, cluster.start())
        end = cluster.end()
        while pos < end:
            while block is not None and block.end <= pos:
                block = next(blocked, None)
            if block is not None and block.start <= pos:
                pos = block.end
                continue
            m = _SCANNER.match(text, pos)
            if m is None:
                nxt = _START.search(text, pos + 1, end)
                pos = end if nxt is None else nxt.start()
                continue
            pos = m.end()
            if block is not None and m.end() > block.start:
                pos = m.start() + 1  # runs into an email/IBAN/IPv6: not a number of its own
                continue
            kind = m.lastgroup
            if kind == "run":
                _classify_run(text, m.group(), m.start(), regions, out)
            elif kind == "ipv4" and _is_ip(m.group()):
                out.append(Span(m.start(), m.end(), Label.IP))


def _classify_run(text: str, value: str, start: int, regions: Sequence[str], out: list[Span]) -> None:
    if len(_NON_DIGIT.sub("", value)) >= _MIN_PHONE_DIGITS:
        _scan_run(value, start, regions, out, phones=not _is_identifier(text, start))


def detect(text: str, regions: Sequence[str] = ()) -> list[Span]:
    """PII spans in `text`, sorted and non-overlapping. `regions` are ISO region codes for
    numbers written nationally (the call's own numbers' regions), most likely first."""
    has_digit = _DIGIT.search(text) is not None
    has_at = "@" in text
    if not has_digit and not has_at:
        return []
    spans: list[Span] = []
    if has_at:
        _emails(text, spans)
    if has_digit:
        _ibans(text, spans)
        if ":" in text:
            _ipv6s(text, spans)
        taken = sorted(spans, key=lambda s: s.start)
        _numbers(text, taken, regions, spans)
    spans.sort(key=lambda s: s.start)
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
