"""Phone numbers read from their digits against phonenumbers' metadata, compiled once per region:
what `phonenumbers.parse` + `is_valid_number` + `region_code_for_number` + `number_type` answer,
without `parse` on the hot path.

`lookup(text, region)` takes the spellings carriers actually send: ASCII digits with an optional
leading "+" and the separators space, "-", ".", "(", ")". It follows parse's own steps for them
(country code after "+", the trunk prefix and carrier code stripped by the region's
national_prefix_for_parsing and its transform rule, the length rule that decides whether the
stripping stands), then finds the number's region among those sharing the country code (leading
digits, else the first region in which the number has a type) and its type (one regex per
number length, the types' patterns as named alternatives in phonenumbers' order). Anything it
does not follow step by step it hands back as `FALLBACK`, and the caller parses: letters,
extensions, other scripts' digits or separators, a national number that starts with the region's
international call prefix or its own country code, metadata patterns with capturing groups.
tests/unit/test_numbers.py holds it to parse's answers over every region's example numbers,
random digits and hostile spellings.

`read` and `read_many` are what callers use: the same steps in native code where the module is
built (pipeline/native/src/numbers.rs, compiled from `native_spec`'s patterns), held to `lookup`
answer for answer by the same tests; `lookup` where it is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from functools import cache
from typing import Final

import phonenumbers
from phonenumbers import PhoneMetadata

try:
    from pipeline import _native
except ImportError:  # installed without the native module: `read` is `lookup`
    _native = None  # type: ignore[assignment]

NON_GEO: Final = "001"


class Fallback(Enum):
    FALLBACK = "fallback"  # lookup could not answer for sure: ask phonenumbers.parse


FALLBACK: Final = Fallback.FALLBACK
Found = tuple[str, str, int, str]  # E.164, region, country calling code, type

_MIN_NSN = 2
_MAX_NSN = 17
# What the fast path reads: "+" only first, ASCII digits and the common separators.
_SPELLING = re.compile(r"\+?[0-9 ().\-]+")
_NOT_DIGIT = re.compile(r"[^0-9]")
# phonenumbers' type checks, in number_type's order; fixed line and mobile are special below.
_TYPES = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan", "voicemail")


class Unsupported(Exception):
    """The region's metadata uses something the compiled form does not follow."""


@dataclass(frozen=True, slots=True)
class Plan:
    """One region's (or non-geographic calling code's) metadata, compiled."""

    country_code: int
    idd: re.Pattern[str] | None  # international call prefix: a national number starting so -> parse
    prefix: re.Pattern[str] | None  # national_prefix_for_parsing
    transform: str | None  # national_prefix_transform_rule
    general: re.Pattern[str] | None  # general_desc pattern
    lengths: tuple[int, ...]  # general_desc possible lengths, sorted
    local_lengths: frozenset[int]
    leading: re.Pattern[str] | None  # which numbers of a shared country code are this region's
    kinds: dict[int, re.Pattern[str]]  # per length: the type, as the name of the group that matched

    def kind(self, nsn: str) -> str | None:
        """number_type of a national significant number, None for UNKNOWN."""
        pattern = self.kinds.get(len(nsn))
        if pattern is None:
            return None
        m = pattern.match(nsn)
        return None if m is None else m.lastgroup

    def strip_prefix(self, number: str) -> str:
        """_maybe_strip_national_prefix_carrier_code: the number without trunk prefix and
        carrier code, when what is left still fits the general pattern (or the whole did not)."""
        if self.prefix is None or not number:
            return number
        m = self.prefix.match(number)
        if m is None:
            return number
        viable = self.general is not None and self.general.fullmatch(number) is not None
        groups = m.groups()
        if not self.transform or not groups or groups[-1] is None:
            rest = number[m.end() :]
        else:
            rest = self.prefix.sub(self.transform, number, count=1)
        if viable and (self.general is None or self.general.fullmatch(rest) is None):
            return number
        return rest

    def length_ok_to_strip(self, number: str) -> bool:
        """_test_number_length(number) is not TOO_SHORT, IS_POSSIBLE_LOCAL_ONLY or INVALID_LENGTH."""
        n = len(number)
        if n in self.local_lengths or not self.lengths or self.lengths[0] == -1:
            return False
        if self.lengths[0] == n:
            return True
        if self.lengths[0] > n:
            return False
        if self.lengths[-1] < n:
            return True  # TOO_LONG
        return n in self.lengths[1:]


def _pattern(desc: phonenumbers.PhoneNumberDesc | None) -> str | None:
    if desc is None or not desc.national_number_pattern:
        return None
    if re.compile(desc.national_number_pattern).groups:
        raise Unsupported("capturing group in a number pattern")
    return desc.national_number_pattern


def _fits(desc: phonenumbers.PhoneNumberDesc | None, n: int) -> str | None:
    """The desc's pattern if a number of length n may match it (_is_number_matching_desc)."""
    pattern = _pattern(desc)
    if pattern is None:
        return None
    lengths = desc.possible_length if desc is not None else ()
    if lengths and n not in lengths:
        return None
    return pattern


# A type to try: its name, its pattern, and a second pattern that must match too (or None).
Kind = tuple[str, str, str | None]


def _kind_specs(m: PhoneMetadata) -> dict[int, tuple[str, list[Kind]]]:
    """For each length: the general pattern, then _number_type_helper's checks in its order."""
    out = {}
    for n in range(1, _MAX_NSN + 1):
        general = _fits(m.general_desc, n)
        if general is None:
            continue
        kinds: list[Kind] = []
        for name in _TYPES:
            pattern = _fits(getattr(m, name), n)
            if pattern is not None:
                kinds.append((name, pattern, None))
        fixed, mobile = _fits(m.fixed_line, n), _fits(m.mobile, n)
        if fixed is not None:
            if m.same_mobile_and_fixed_line_pattern:
                kinds.append(("fixed_line_or_mobile", fixed, None))
            else:
                if mobile is not None:
                    kinds.append(("fixed_line_or_mobile", fixed, mobile))
                kinds.append(("fixed_line", fixed, None))
        if mobile is not None and not m.same_mobile_and_fixed_line_pattern:
            kinds.append(("mobile", mobile, None))
        if kinds:
            out[n] = (general, kinds)
    return out


def _kinds(m: PhoneMetadata) -> dict[int, re.Pattern[str]]:
    """For each length: the general pattern as a lookahead, then the types' checks as
    alternatives in order, each anchored, each a group named by the type."""
    out = {}
    for n, (general, kinds) in _kind_specs(m).items():
        alternatives = []
        for name, pattern, also in kinds:
            both = "" if also is None else f"(?=(?:{also})\\Z)"
            alternatives.append(f"(?P<{name}>{both}(?:{pattern})\\Z)")
        out[n] = re.compile(f"(?=(?:{general})\\Z)(?:{'|'.join(alternatives)})")
    return out


def _compile(m: PhoneMetadata) -> Plan:
    general = m.general_desc
    return Plan(
        country_code=m.country_code or 0,
        idd=re.compile(m.international_prefix) if m.international_prefix else None,
        prefix=re.compile(m.national_prefix_for_parsing) if m.national_prefix_for_parsing else None,
        transform=m.national_prefix_transform_rule or None,
        general=re.compile(_pattern(general)) if _pattern(general) else None,  # type: ignore[arg-type]
        lengths=tuple(sorted(general.possible_length or ())) if general is not None else (),
        local_lengths=frozenset(general.possible_length_local_only or ())
        if general is not None
        else frozenset(),
        leading=re.compile(m.leading_digits) if m.leading_digits else None,
        kinds=_kinds(m),
    )


def _metadata(region: str, country_code: int) -> PhoneMetadata | None:
    if region == NON_GEO:
        return PhoneMetadata.metadata_for_nongeo_region(country_code)
    return PhoneMetadata.metadata_for_region(region)


@cache
def plan_for(region: str, country_code: int = 0) -> Plan | None:
    """The compiled metadata of a region ("001" with the calling code: non-geographic), or None
    when phonenumbers has none or it uses what the compiled form does not follow."""
    m = _metadata(region, country_code)
    if m is None:
        return None
    try:
        return _compile(m)
    except (Unsupported, re.error):
        return None


# A transform rule's group references ("\\1"), the only escapes the native form rewrites.
_TEMPLATE = re.compile(r"(?:[^\\$]|\\[1-9])*")


def native_spec(region: str, country_code: int) -> tuple[object, ...] | None:
    """A region's plan as the native reader takes it (pipeline/native/src/numbers.rs): the
    patterns `plan_for` compiles, as strings. None where plan_for has none (no metadata, a
    capturing group, a pattern Python does not compile), or the transform rule escapes more than
    group numbers."""
    m = _metadata(region, country_code)
    if m is None:
        return None
    try:
        return _spec(m)
    except (Unsupported, re.error):
        return None


def _spec(m: PhoneMetadata) -> tuple[object, ...] | None:
    """`native_spec` of a region's metadata, checked as `_compile` checks it (each pattern on its
    own: the per-length regexes `_kinds` joins them into are the Python form's alone)."""
    for pattern in (m.international_prefix, m.national_prefix_for_parsing, m.leading_digits):
        if pattern:
            re.compile(pattern)
    transform = m.national_prefix_transform_rule or None
    if transform is not None:
        if _TEMPLATE.fullmatch(transform) is None:
            return None
        transform = re.sub(r"\\([1-9])", r"${\1}", transform)
    general = m.general_desc
    return (
        m.country_code or 0,
        m.international_prefix or None,
        m.national_prefix_for_parsing or None,
        transform,
        _pattern(general),
        sorted(general.possible_length or ()) if general is not None else [],
        list(general.possible_length_local_only or ()) if general is not None else [],
        m.leading_digits or None,
        _kind_specs(m),
    )


def _country(country_code: int) -> tuple[str, ...]:
    """The regions of a calling code, main region first (their plans are compiled when needed:
    a US number never compiles the 24 other regions of +1)."""
    return phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code, ())


_SUPPORTED = frozenset(phonenumbers.SUPPORTED_REGIONS)
_CODES = frozenset(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def lookup(text: str, region: str | None) -> Found | Fallback | None:
    """(E.164, region, country code, type) of `text` as parse(text, region) reads it when it is a
    valid number, None when it is not, FALLBACK when only parse can say. `text` is already
    stripped; "00" is not rewritten here."""
    if len(text) > 250 or _SPELLING.fullmatch(text) is None:
        return FALLBACK
    digits = _NOT_DIGIT.sub("", text)
    if not 3 <= len(digits) <= _MAX_NSN + 3:
        return FALLBACK
    if text[0] == "+":
        if digits[0] == "0":
            return FALLBACK
        for size in (1, 2, 3):
            cc = int(digits[:size])
            if cc in _CODES:
                break
        else:
            return FALLBACK
        country = _country(cc)
        if not country:
            return FALLBACK
        main = plan_for(country[0], cc)
        if main is None:
            return FALLBACK
        return _finish(main, cc, digits[size:], country)
    if region not in _SUPPORTED:
        return FALLBACK
    plan = plan_for(region)
    if plan is None or (plan.idd is not None and plan.idd.match(digits)):
        return FALLBACK
    if digits.startswith(str(plan.country_code)):
        return FALLBACK
    return _finish(plan, plan.country_code, digits, _country(plan.country_code))


def _finish(plan: Plan, cc: int, number: str, country: tuple[str, ...]) -> Found | Fallback | None:
    if len(number) < _MIN_NSN:
        return FALLBACK
    stripped = plan.strip_prefix(number)
    if stripped is not number and plan.length_ok_to_strip(stripped):
        number = stripped
    if not _MIN_NSN <= len(number) <= _MAX_NSN:
        return FALLBACK
    # region_code_for_number: the only region of the code, or the first whose leading digits
    # match, or else the first in which the number has a type
    if len(country) == 1:
        region, found = country[0], plan_for(country[0], cc)
    else:
        region, found = "", None
        for name in country:
            candidate = plan_for(name, cc)
            if candidate is None:
                return FALLBACK
            if candidate.leading is not None:
                if candidate.leading.match(number):
                    region, found = name, candidate
                    break
            elif candidate.kind(number) is not None:
                region, found = name, candidate
                break
        if found is None:
            return None
    if found is None:
        return FALLBACK
    kind = found.kind(number)
    if kind is None:
        return None
    return "+" + str(cc) + number, region, cc, kind


def _native_reader() -> _native.NumberReader | None:
    if _native is None:
        return None
    regions_of = {code: list(regions) for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()}
    return _native.NumberReader(native_spec, regions_of, set(_SUPPORTED), FALLBACK)


_READER = _native_reader()


def read(text: str, region: str | None) -> Found | Fallback | None:
    """`lookup`, in native code where the native module is built (pipeline/native/src/numbers.rs,
    held to `lookup` by tests/unit/test_numbers.py)."""
    if _READER is None:
        return lookup(text, region)
    return _READER.lookup(text, region)


def read_many(texts: list[str], region: str | None) -> list[Found | Fallback | None]:
    """`read` of each text, in one call."""
    if _READER is None:
        return [lookup(text, region) for text in texts]
    return _READER.lookup_many(texts, region)
