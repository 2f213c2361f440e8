"""Free-text PII detection: phone numbers, emails, IPv4/IPv6, payment cards, IBANs.

`detect(text, regions)` returns the PII spans of a text; `redact(text, spans)` replaces each span
with its label ([PHONE], [EMAIL], [IP], [CARD], [IBAN]); `redact_value` does both for attribute
values, remembering the machine identifiers that repeat. Runs on every transcript and attribute
value, so the work is ordered cheapest first:

1. gate: a text without a digit or "@" holds none of these. Full-width forms (CJK keyboards:
   "＋１－６５０") and other scripts' digits are read as ASCII, one character for one;
2. anchored scans whose compiled pattern starts with a rare character, so the regex engine skips
   plain text in C: emails from each "@", IBANs from their two check digits (then exactly as many
   characters as the country's IBAN has, spaces or dashes between: a following word is never
   taken in), IPv6 from a ":hex:" pair, and numeric clusters from a digit, "+", "(" or currency
   sign. Inside a cluster one scanner is tried position by position (match, not search): IPv4
   (also in parentheses), then "ordinary number" shapes that must survive (dates, a date with a
   time, times, amounts, percentages, thousands), then runs of digits with phone-like separators
   (after "+", "++" or a word glued to "+"). Ordinary shapes are consumed, so a run never starts
   inside a date; an amount's space-separated thousands stop before a group that goes on as a
   number ("$20 415-666-7777");
3. checks only on the candidates (pipeline/detect_checks.py): ipaddress for IPs (dotted groups
   that are no address, "532.123.45.67", go on to the phone check), mod-97 for IBANs, Luhn plus
   issuer prefix and length for cards, and phonenumbers' metadata for runs of 6+ digits: after
   "+" or any international call prefix (00, 011, 0011, 010, 001, ...) as international, else
   nationally in the call's own regions. A nationally written number must start with the
   region's trunk prefix ("0" in most countries) or be 9+ digits long (8 where there is no trunk
   prefix). A run that is neither whole is searched for its longest stretch of space-separated
   groups that is one, to find a card or phone number glued to other numbers.

A digit run right after an identifier word ("order", "ticket", "invoice", "case", "ref", "zip",
..., optionally followed by "number"/"no."/"#"/":", or "account"/"customer"/"postal"/...
followed by one of those, so that a speaker label "Customer:" does not count; "订单号" and a few
other CJK ones) or glued to Latin letters ("A-7723419") is an identifier, not a phone number
(what follows its first group still may be); it is still checked as a card number. CJK letters
glue nothing: "电话415-666-7777" holds a phone number. Digits inside an IBAN-shaped string whose
checksum fails are no phone number either.

Where callpipe deliberately differs from the test suites of Presidio and libphonenumber:
- an IBAN in lower case is redacted anyway (Presidio's recognizer wants capitals); a mistyped
  IBAN is not reported, but its digits are not offered as a phone number either;
- a phone extension ("x123", "ext. 12") stays visible: only the number is personal;
- an international call prefix is read whatever the call's region ("011 44 ..." in a British
  call): text is written by people who dial from elsewhere;
- a date followed by a time ("20120102 08:00") is never a phone number, as in libphonenumber,
  and neither is a run after an identifier word, which libphonenumber would report.
- an email address may be internationalized (RFC 6531 local part, IDNA domain: "müller@",
  "张伟@例子.中国"), where Presidio's ASCII pattern leaves "mü" visible. Text written without
  spaces before an address (Chinese, Japanese) is redacted with it: no word boundary is known.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from pipeline.detect_checks import GLUE as _GLUE
from pipeline.detect_checks import iban_length, is_card, is_iban, is_identifier, is_phone


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
_DAY = r"(?:0?[1-9]|[12][0-9]|3[01])"
_MONTH = r"(?:0?[1-9]|1[0-2])"
# Where anything numeric starts: a digit, "+", "(" or a currency sign, then what may follow, up to
# its last digit, "%" or ")". A pattern that begins with a character class lets the regex engine
# skip plain text in C.
_CLUSTER = re.compile(r"[0-9+($€£¥₹](?:[0-9 \u00a0\-.()/:,%+]*[0-9%)])?")
_DIGIT = re.compile(r"[0-9]")
_IPV4 = rf"(?:[0-9]{{1,3}}\.){{3}}[0-9]{{1,3}}(?!{_GLUE}|\.[0-9])"
# Tried at each position of a cluster (match, not search), in this order. ASCII digits only
# ([0-9], not the slower Unicode \d): other scripts' digits were made ASCII before.
_SCANNER = re.compile(
    rf"""
    \((?={_IPV4})  # "(192.168.1.1)": step over the parenthesis, the address is next
  | (?P<ipv4>(?<!{_GLUE}|\.){_IPV4})
  | (?P<ordinary>
        (?<!{_GLUE})[12][0-9]{{3}}[-/]?[01][0-9][-/]?[0-3][0-9][ T]+[0-2][0-9]:[0-5][0-9]  # 20120102 08:00
      | (?<!{_GLUE})[0-9]{{4}}[-/.]{_MONTH}[-/.]{_DAY}(?![0-9]|[-/.][0-9])         # 2024-03-15
      | (?<!{_GLUE}){_DAY}[-/.]{_DAY}[-/.](?:[0-9]{{4}}|[0-9]{{2}})(?![0-9]|[-/.][0-9])  # 15/03/2024
      | (?<!{_GLUE})[0-9]{{1,2}}:[0-9]{{2}}(?::[0-9]{{2}})?(?:\s?[AaPp]\.?[Mm]\.?)?  # 10:30, 10:30:15 pm
      | [$€£¥₹]\s?[0-9]+(?:[,.][0-9]+)*(?:[\u00a0 ][0-9]{{3}}(?:[,.][0-9]+)*(?![-./]?[0-9]))*  # $1 250.00
      | [0-9][0-9,.]*\s?(?:%|percent\b)                         # 12.5%
      | [0-9][0-9,.\u00a0 ]*\s?(?:(?:EUR|USD|GBP|INR|dollars?|euros?|pounds?|rupees?)\b|[$€£¥₹])
      | [0-9]{{1,3}}(?:,[0-9]{{3}})+(?:\.[0-9]+)?                        # 1,250,000
    )
  | (?P<run>(?:\+\+?|(?<!{_GLUE}|\+))\(?[0-9](?:(?!\s*\({_IPV4}){_SEP}{{0,2}}[0-9])+)
    """,
    re.VERBOSE,
)
# Full-width forms (CJK keyboards: "＋１ ６５０", "０９０－１２３４"), the ideographic space and other
# scripts' digits (Arabic-Indic, Persian, Devanagari, Bengali, Thai) read as ASCII; one character
# for one, so offsets stay those of the text. Digits of scripts not listed here are not read.
_NOT_ASCII = re.compile(
    "[\uff01-\uff5e\u3000\u0660-\u0669\u06f0-\u06f9\u0966-\u096f\u09e6-\u09ef\u0e50-\u0e59]"
)
_TO_ASCII = (
    {chr(c): chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)}
    | {"\u3000": " "}
    | {chr(base + d): str(d) for base in (0x660, 0x6F0, 0x966, 0x9E6, 0xE50) for d in range(10)}
)
# Found on their own, each anchored on a character that ordinary text rarely holds.
# Emails from each "@", internationalized ones too (RFC 6531 local parts, IDNA domains). Past
# ASCII every character belongs to an address (letters and digits of any script, the marks of a
# decomposed "u\u0308" or a Devanagari vowel sign) but for spaces and the punctuation that
# closes one (quotes, brackets, Arabic, Devanagari and CJK commas and stops; full-width forms
# were read as ASCII before): a stop not listed costs one character of over-redaction, whereas a
# letter taken for a stop would leave part of an address visible. The local part starts at a
# letter or digit and runs over RFC 5322's atext and dots ("o'brien", "a+tag", and "’" as an
# apostrophe) up to the "@"; the domain is labels of letters, digits and "-", the last one (the
# TLD) letters only or an A-label ("xn--p1ai"), with no letter, digit or "_" right after it.
_STOP_LOCAL = (
    r"\s\u00a1\u00a7\u00ab\u00b6\u00bb\u00bf\u060c\u061b\u061f\u06d4\u0964\u0965\u2000-\u200b"
    r"\u2010-\u2018\u201a-\u205f\u3001-\u3003\u3008-\u3011\u3014-\u301f\uff61-\uff65"
)
_STOP = _STOP_LOCAL + r"\u2019"  # "’" is an apostrophe in a local part only
_LETTER = rf"[^\x00-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f{_STOP}]"  # any script's, ASCII digits too
_ATEXT = rf"[^\x00-\x20\x22\x28\x29\x2c\x3a-\x3c\x3e\x40\x5b-\x5d\x7f{_STOP_LOCAL}]"
_LABEL = rf"[^\x00-\x2c\x2e\x2f\x3a-\x40\x5b-\x60\x7b-\x7f{_STOP}]"  # _LETTER and "-"
_TLD = rf"[^\x00-\x40\x5b-\x60\x7b-\x7f{_STOP}]"  # _LETTER but ASCII digits
# the run of atext right before an "@", matched on the 64 characters before it reversed (one
# match, where searching forward for a run that ends at the "@" retries at every character)
_LOCAL_RUN = re.compile(rf"{_ATEXT}*")
_LOCAL_START = re.compile(_LETTER)
_EMAIL_DOMAIN = re.compile(rf"{_LABEL}+(?:\.{_LABEL}+)*\.(?:xn--[A-Za-z0-9-]+|{_TLD}{{2,}})(?!{_LETTER}|_)")
# An IBAN's two check digits after its two country letters; the rest is read by _ibans.
_IBAN = re.compile(r"[0-9][0-9](?<=[A-Za-z]{2}[0-9]{2})(?<![A-Za-z0-9][A-Za-z]{2}[0-9]{2})")
_IPV6_SEED = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")  # dots: an embedded IPv4 (::ffff:192.0.2.1)
_NON_DIGIT = re.compile(r"[^0-9]")
_DIGITS = re.compile(r"[0-9]+")
# Where the scanner is tried next after it failed: at a sign, or at a digit that does not follow
# a digit (no run, address or date starts inside a number: "INC1234567" is one failed try).
_START = re.compile(r"[+($€£¥₹]|(?<!\d)\d")
_MIN_PHONE_DIGITS = 6
_MAX_PHONE_DIGITS = 17  # 15 of E.164 plus an international prefix "00" or a trunk prefix
_MIN_CARD_DIGITS = 12
_MAX_CARD_DIGITS = 19
_GROUP = re.compile(r"\S+")


def _is_ip(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def _is_ipv4(dotted: str) -> bool:
    """Four dotted groups of 1-3 digits (as the scanner found them) that are an IPv4 address:
    each 0-255, no leading zero (what ipaddress accepts)."""
    return all(len(g) == 1 or (g[0] != "0" and int(g) <= 255) for g in dotted.split("."))


def _label_of(run: str, regions: Sequence[str], phones: bool, digits: str) -> Label | None:
    """CARD or PHONE for a run whose digits are `digits`, or None."""
    n = len(digits)
    if n >= _MIN_CARD_DIGITS and not run.startswith("+") and is_card(run, digits):
        return Label.CARD
    if phones and _MIN_PHONE_DIGITS <= n <= _MAX_PHONE_DIGITS and is_phone(run, regions, digits):
        return Label.PHONE
    return None


def _scan_run(
    run: str, offset: int, regions: Sequence[str], out: list[Span], phones: bool, digits: str | None = None
) -> None:
    """The card and phone numbers in a run: the whole run, or else the longest stretch of its
    space-separated groups that is one ("call (415) 555-2671 10 times", "card 4111 1111 1111
    1111 12/27"), then what is left on either side. With `phones` false (the run follows an
    identifier word) its first group starts no phone number. `digits`: the run's, if known."""
    label = _label_of(run, regions, phones, _NON_DIGIT.sub("", run) if digits is None else digits)
    if label is not None:
        out.append(Span(offset, offset + len(run), label))
        return
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(run)]
    if len(groups) < 2:
        return
    counts = [0]  # digits in the groups before each group
    for start, end in groups:
        counts.append(counts[-1] + end - start - len(_NON_DIGIT.findall(run, start, end)))
    for size in range(len(groups) - 1, 0, -1):
        for first in range(len(groups) - size + 1):
            count = counts[first + size] - counts[first]
            if count < _MIN_PHONE_DIGITS or count > _MAX_CARD_DIGITS:
                continue  # too short or too long for anything
            start, end = groups[first][0], groups[first + size - 1][1]
            stretch = run[start:end]
            label = _label_of(stretch, regions, phones or first > 0, _NON_DIGIT.sub("", stretch))
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
        before = _LOCAL_RUN.match(text[max(0, at - 64) : at][::-1])  # always matches
        run = 0 if before is None else before.end()
        local = _LOCAL_START.search(text, at - run, at) if run else None  # starts at a letter
        domain = _EMAIL_DOMAIN.match(text, at + 1) if local is not None else None
        if local is not None and domain is not None:
            out.append(Span(local.start(), domain.end(), Label.EMAIL))
            at = text.find("@", domain.end())
        else:
            at = text.find("@", at + 1)


@cache
def _iban_body(length: int) -> re.Pattern[str]:
    """The rest of an IBAN `length` characters long, after its check digits."""
    return re.compile(rf"(?:[ \-]?[A-Za-z0-9]){{{length - 4}}}(?![A-Za-z0-9])")


def _ibans(text: str, out: list[Span], shaped: list[Span]) -> None:
    """From each pair of check digits, as many letters and digits as the country's IBAN has,
    single spaces or dashes allowed between them; the IBAN must end there, at a word's end
    ("ES91 2100 0418 4502 0005 1332 by monday"). One that fails its checksum goes to `shaped`:
    a mistyped IBAN is no phone number either."""
    for m in _IBAN.finditer(text):
        start = m.start() - 2
        length = iban_length(text[start : start + 2])
        body = None if length is None else _iban_body(length).match(text, m.end())
        if body is None:
            continue
        span = Span(start, body.end(), Label.IBAN)
        (out if is_iban(text[start : body.end()].replace(" ", "").replace("-", "")) else shaped).append(span)


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
        start, end = cluster.span()
        if end - start < _MIN_PHONE_DIGITS:
            continue  # "12%", "10:30", "$20": too short for a phone number, card or IPv4 address
        if pos < start:
            pos = start
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
            elif kind == "ipv4":
                if _is_ipv4(m.group()):
                    out.append(Span(m.start(), m.end(), Label.IP))
                else:  # "532.123.45.67": dotted groups, but no address; maybe a phone number
                    _classify_run(text, m.group(), m.start(), regions, out)


def _classify_run(text: str, value: str, start: int, regions: Sequence[str], out: list[Span]) -> None:
    digits = _NON_DIGIT.sub("", value)
    if len(digits) >= _MIN_PHONE_DIGITS:
        phones = value.startswith("+") or not is_identifier(text, start)
        _scan_run(value, start, regions, out, phones, digits)


def _as_ascii(m: re.Match[str]) -> str:
    return _TO_ASCII[m.group()]


def detect(text: str, regions: Sequence[str] = ()) -> list[Span]:
    """PII spans in `text`, sorted and non-overlapping. `regions` are ISO region codes for
    numbers written nationally (the call's own numbers' regions), most likely first."""
    if not text.isascii():
        text = _NOT_ASCII.sub(_as_ascii, text)
    has_digit = _DIGIT.search(text) is not None
    has_at = "@" in text
    if not has_digit and not has_at:
        return []
    spans: list[Span] = []
    if has_at:
        _emails(text, spans)
    if has_digit:
        shaped: list[Span] = []
        _ibans(text, spans, shaped)
        if ":" in text:
            _ipv6s(text, spans)
        taken = sorted(spans + shaped, key=lambda s: s.start)
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


# An attribute value that is one email address whole, as SIP call ids are
# ("e9fcb779fa35da84@sbc6.carrier.net"): nothing else can hide in it.
_WHOLE_EMAIL = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
MAX_REMEMBERED_VALUE = 64


def redact_value(value: str, regions: Sequence[str] = ()) -> str:
    """`redact_text` for an attribute value, which is a machine identifier far more often than
    free text (a SIP call id, a trunk group "tg-17", a codec "G.711a"): a value that is one email
    address whole is "[EMAIL]" without the number scans. The result is `redact_text`'s. Values
    that repeat are worth remembering (`rememberable`); the caller owns that memory (it holds
    plaintext: pipeline/memo.py), this module keeps none."""
    if len(value) <= MAX_REMEMBERED_VALUE and _WHOLE_EMAIL.fullmatch(value):
        return Label.EMAIL.value
    return redact_text(value, regions)


def rememberable(value: str) -> bool:
    """Short attribute values repeat (trunk groups, codecs, queues): remembering them pays."""
    return len(value) <= MAX_REMEMBERED_VALUE
