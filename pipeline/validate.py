"""Validate and normalize a batch of decoded CallEvent records; strip secret-named attributes.

`strip_secrets` runs before anything else (here and on the dead-letter path), so a credential
that a carrier put in `attributes` reaches neither the lake nor calls.dlq. `validate_batch` then
checks each record against the CallEvent schema (required fields, types, enum symbols), sane
identifiers (non-blank, bounded, printable: `pipeline.identifiers`), times and durations, and
duplicate event ids within the batch, and normalizes the phone numbers to E.164 where they parse.
Each rejection carries one `Reason`, never a value.

Region of a nationally written number (no "+"): there is no setting for it. We take, in order,
the region of the call's other number when that one is written internationally, then the region
named in the carrier id (a two-letter ISO region as one of its parts, e.g. "gb-vodafone" or
"carrier_DE_2"). A number that does not parse as a valid number under those stays as given.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, NamedTuple

import orjson
import phonenumbers
from phonenumbers import PhoneMetadata
from phonenumbers.phonenumberutil import _number_type_helper

import schemas
from pipeline import numbers
from pipeline.codec import Lineage, event_json
from pipeline.identifiers import ID_CATEGORIES, MAX_ID_LEN, MAX_PHONE_LEN, is_nameable
from pipeline.memo import Memo
from pipeline.reasons import Drop, Reason, Rejection, Stage
from pipeline.rejected_field import field_of
from schemas.clock import DAY_MS, EPOCH_OF_SERVICE_MS

RECORD = "CallEvent"
MAX_FUTURE_MS = DAY_MS  # clock skew tolerated ahead of `now_ms`
MAX_DURATION_S = 48 * 3600

Record = dict[str, Any]


@dataclass(frozen=True)
class Validated:
    """The accepted records (normalized copies) with their batch positions and the regions of
    their numbers (for free-text detection), the rejections, and counted secret strips."""

    records: list[Record] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    regions: list[tuple[str, ...]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    drops: Counter[Drop] = field(default_factory=Counter)


# ---------------------------------------------------------------- secrets


_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


@lru_cache(maxsize=8192)
def _is_secret(key: str, names: frozenset[str]) -> bool:
    parts = [p.lower() for p in _PART.findall(key)]
    if not parts:
        return False
    candidates = set(parts)
    candidates.update(a + b for a, b in itertools.pairwise(parts))
    candidates.update(a + "_" + b for a, b in itertools.pairwise(parts))
    for part in candidates:
        if part in names or part.rstrip("s") in names:
            return True
    # A long name hidden inside a glued part: "userpassword", "clientsecret".
    return any(len(name) >= 6 and name in part for part in parts for name in names)


_LOWERED: dict[Any, frozenset[str]] = {}


def _lowered(names: Iterable[str]) -> frozenset[str]:
    """The secret names lowered, remembered by the policy's own tuple: a batch of one event
    paid ~1.5 us lowering the same thirteen names. Names, never values: safe to keep."""
    try:
        found = _LOWERED.get(names)
    except TypeError:  # an unhashable iterable (a list)
        return frozenset(n.lower() for n in names)
    if found is None:
        found = frozenset(n.lower() for n in names)
        if len(_LOWERED) >= 64:
            _LOWERED.clear()
        _LOWERED[names] = found
    return found


def is_secret_name(key: str, names: Iterable[str]) -> bool:
    """True if the attribute key names a secret: a name part ("user_password", "PIN",
    "authToken", "x-api-key"), compared case-insensitively."""
    return _is_secret(key, frozenset(n.lower() for n in names))


@lru_cache(maxsize=1)
def _map_fields() -> tuple[str, ...]:
    out = []
    for f in schemas.raw(RECORD)["fields"]:
        branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
        if any(isinstance(b, dict) and b.get("type") == "map" for b in branches):
            out.append(f["name"])
    return tuple(out)


def strip_secrets(record: Any, names: Iterable[str]) -> Any:
    """A copy of `record` without secret-named keys in its map fields (attributes). Anything that
    is not a record is returned as it is, so the dead-letter path can call this on any input."""
    if not isinstance(record, Mapping):
        return record
    return dict(_strip(record, frozenset(n.lower() for n in names))[0])


def _strip(record: Mapping[str, Any], names: frozenset[str]) -> tuple[Mapping[str, Any], int]:
    """`record` itself when no map field holds a secret-named key (nothing here changes it),
    else a copy with those keys removed; and how many were."""
    out: Record | None = None
    stripped = 0
    for name in _map_fields():
        value = record.get(name)
        if value is None:  # most calls carry no map, and None is none: no abc isinstance
            continue
        if (type(value) is dict or isinstance(value, Mapping)) and _holds_secret(value, names):
            kept = {k: v for k, v in value.items() if not (isinstance(k, str) and _is_secret(k, names))}
            if len(kept) != len(value):
                if out is None:
                    out = dict(record)
                out[name] = kept
                stripped += len(value) - len(kept)
    return (record if out is None else out), stripped


_VERDICTS: dict[frozenset[str], dict[Any, bool]] = {}
# per set of names, the keys judged no secret: a map whose keys are all in it holds none, which
# `dict.keys() <= set` tells in C (no Python step per key); cleared with the verdicts
_HARMLESS: dict[frozenset[str], set[Any]] = {}
_MAX_VERDICTS = 8192


def _holds_secret(value: Mapping[Any, Any], names: frozenset[str]) -> bool:
    """Whether any key of the map names a secret (what `_strip` removes), from a verdict per
    key remembered by the key (attribute names repeat: a dict look-up per key, no copy of a
    map that holds none, which is nearly every map)."""
    verdicts = _VERDICTS.get(names)
    if verdicts is None:
        verdicts = _VERDICTS.setdefault(names, {})
    harmless = _harmless(names)
    for k in value:
        verdict = verdicts.get(k)
        if verdict is None:
            verdict = isinstance(k, str) and _is_secret(k, names)
            if len(verdicts) >= _MAX_VERDICTS:
                verdicts.clear()
                harmless.clear()
            verdicts[k] = verdict
            if not verdict:
                harmless.add(k)
        if verdict:
            return True
    return False


def _harmless(names: frozenset[str]) -> set[Any]:
    found = _HARMLESS.get(names)
    return found if found is not None else _HARMLESS.setdefault(names, set())


@lru_cache(maxsize=1)
def _field_names() -> frozenset[str]:
    return frozenset(p.path.rsplit(".", 1)[-1] for p in schemas.pii_fields(RECORD))


def _deep_strip(node: Any, names: frozenset[str]) -> Any:
    """Drop secret-named keys at any depth (a raw message may nest attributes, e.g. Avro JSON's
    {"map": {...}}, or carry unknown fields); the schema's own field names are kept."""
    if isinstance(node, dict):
        return {
            k: _deep_strip(v, names)
            for k, v in node.items()
            if k in _field_names() or not _is_secret(k, names)
        }
    if isinstance(node, list):
        return [_deep_strip(v, names) for v in node]
    return node


_JSON_PAIR = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:\s*("(?:[^"\\]|\\.)*"?|[^,{}\[\]\s"]+)')


def strip_secrets_json(raw: bytes, names: Iterable[str]) -> bytes:
    """Raw JSON bytes (one event, a list of them, anything) without secret-named keys at any
    depth. Bytes that do not decode as JSON get every `"secret-name": value` pair's value masked
    as "***" instead; bytes that are not text (Avro) are returned unchanged for the codec."""
    frozen = frozenset(n.lower() for n in names)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _mask_pairs(raw, frozen)
    if not isinstance(doc, dict | list):
        return raw
    return orjson.dumps(_deep_strip(doc, frozen))


def _mask_pairs(raw: bytes, names: frozenset[str]) -> bytes:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw

    def mask(m: re.Match[bytes]) -> bytes:
        key = m.group(1).decode("utf-8", "replace")
        if _is_secret(key, names):
            return m.group(0)[: m.start(2) - m.start(0)] + b'"***"'
        return m.group(0)

    return _JSON_PAIR.sub(mask, raw)


# ---------------------------------------------------------------- schema checks


@dataclass(frozen=True)
class _FieldRule:
    name: str
    types: tuple[type, ...]
    nullable: bool
    required: bool
    symbols: frozenset[str] | None
    category: str
    nested: tuple[_FieldRule, ...] = ()


# Exact Python types per Avro type (exact, so True is no int); decoders give plain dicts and strs.
_PY = {"string": (str,), "int": (int,), "long": (int,), "boolean": (bool,), "double": (float, int)}


def _rule(f: Mapping[str, Any], annotations: Mapping[str, str], prefix: str) -> _FieldRule:
    t = f["type"]
    branches = t if isinstance(t, list) else [t]
    nullable = "null" in branches
    (branch,) = [b for b in branches if b != "null"]
    symbols = None
    nested: tuple[_FieldRule, ...] = ()
    if isinstance(branch, dict):
        kind = branch["type"]
        if kind == "enum":
            types: tuple[type, ...] = (str,)
            symbols = frozenset(branch["symbols"])
        elif kind == "map":
            types = (dict,)
        elif kind == "record":
            types = (dict,)
            nested = tuple(_rule(g, annotations, prefix + f["name"] + ".") for g in branch["fields"])
        else:
            types = _PY[kind]
    else:
        types = _PY[branch]
    return _FieldRule(
        f["name"], types, nullable, "default" not in f, symbols, annotations[prefix + f["name"]], nested
    )


@lru_cache(maxsize=1)
def _rules() -> tuple[_FieldRule, ...]:
    annotations = {p.path: p.category for p in schemas.pii_fields(RECORD)}
    return tuple(_rule(f, annotations, "") for f in schemas.raw(RECORD)["fields"])


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    return type(value) in types


def _check_fields(record: Mapping[str, Any], rules: Sequence[_FieldRule]) -> Reason | None:
    for rule in rules:
        value = record.get(rule.name)
        if value is None:
            if rule.required or not rule.nullable:
                return Reason.MISSING_FIELD
            continue
        if not _has_type(value, rule.types):
            return Reason.WRONG_TYPE
        if rule.symbols is not None and value not in rule.symbols:
            return Reason.UNKNOWN_ENUM
        if rule.nested:
            reason = _check_fields(value, rule.nested)
            if reason is not None:
                return reason
        elif rule.types == (dict,) and not all(type(k) is str and type(v) is str for k, v in value.items()):
            return Reason.WRONG_TYPE
        if rule.category in ID_CATEGORIES and isinstance(value, str):
            limit = MAX_PHONE_LEN if rule.category == "phone" else MAX_ID_LEN
            if not is_nameable(value, limit):
                return Reason.BAD_ID
    return None


Checked = Callable[[Mapping[str, Any]], tuple[Reason | None, Record | None]]


@lru_cache(maxsize=1)
def _checker() -> Checked:
    """`_check_fields` then `_project`, unrolled into one function written from the schema's rules
    once per process: the first failing check of the first failing field gives the reason, as
    in `_check_fields`; a record that passes comes back projected, as `_project` makes it."""
    namespace: dict[str, Any] = {"Reason": Reason, "nameable": is_nameable}
    lines: list[str] = []
    _write_checker("check", _rules(), namespace, lines)
    exec(compile("\n".join(lines), "<validate rules>", "exec"), namespace)  # our own source, from the schema
    fn: Checked = namespace["check"]
    return fn


def _write_checker(
    name: str, rules: Sequence[_FieldRule], namespace: dict[str, Any], lines: list[str]
) -> None:
    for rule in rules:
        if rule.nested:
            _write_checker(f"{name}_{rule.name}", rule.nested, namespace, lines)
    body = [f"def {name}(record):", "    get = record.get", "    out = {}"]
    for i, rule in enumerate(rules):
        body.append(f"    v = get({rule.name!r})")
        if rule.required or not rule.nullable:
            body += ["    if v is None:", "        return Reason.MISSING_FIELD, None"]
            indent = "    "
        else:
            body.append("    if v is not None:")
            indent = "        "
        types = f"{name}_types{i}"
        namespace[types] = rule.types
        if len(rule.types) == 1:
            namespace[types] = rule.types[0]
            body += [f"{indent}if type(v) is not {types}:", f"{indent}    return Reason.WRONG_TYPE, None"]
        else:
            body += [f"{indent}if type(v) not in {types}:", f"{indent}    return Reason.WRONG_TYPE, None"]
        if rule.symbols is not None:
            symbols = f"{name}_symbols{i}"
            namespace[symbols] = rule.symbols
            body += [f"{indent}if v not in {symbols}:", f"{indent}    return Reason.UNKNOWN_ENUM, None"]
        if rule.nested:
            body += [
                f"{indent}reason, v = {name}_{rule.name}(v)",
                f"{indent}if reason is not None:",
                f"{indent}    return reason, None",
            ]
        elif rule.types == (dict,):
            body += [
                f"{indent}if not all(type(k) is str and type(x) is str for k, x in v.items()):",
                f"{indent}    return Reason.WRONG_TYPE, None",
            ]
        if rule.category in ID_CATEGORIES and str in rule.types:
            limit = MAX_PHONE_LEN if rule.category == "phone" else MAX_ID_LEN
            body += [
                # is_nameable, inlined
                f"{indent}if type(v) is str and not (0 < len(v) <= {limit} and v.isprintable()"
                " and not v.isspace()):",
                f"{indent}    return Reason.BAD_ID, None",
            ]
        body.append(f"    out[{rule.name!r}] = v")
    body.append("    return None, out")
    lines += [*body, ""]


@lru_cache(maxsize=1)
def _fast_checker() -> Checked:
    """`_checker` for a record in the decoders' own shape (both give one): a plain dict holding
    exactly the schema's fields in the schema's order, a nested record likewise. Its values are
    unpacked at once into locals, checked as `_checker` checks them, and the record is copied
    whole (`dict.copy` copies the table, no insert per key): what `_project` makes of it, as the
    keys and their order are the schema's. Any other shape and any failed check goes to
    `_checker`, which names the reason: this one only ever says yes faster (~half the cost)."""
    rules = _rules()
    namespace: dict[str, Any] = {"check": _checker()}
    top = [f"f{i}" for i in range(len(rules))]
    namespace["fields"] = [rule.name for rule in rules]
    body = [
        "def fast(record):",
        "    if type(record) is not dict or list(record) != fields:",
        "        return check(record)",
        f"    {', '.join(top)}, = record.values()",
    ]
    copies = []
    for i, rule in enumerate(rules):
        body += _fast_checks(rule, top[i], f"t{i}", namespace, "    ")
        if rule.nested:
            if any(inner.nested for inner in rule.nested):
                raise ValueError(f"schema {RECORD}: records nest at most one record deep")
            inner_vars = [f"{top[i]}_{j}" for j in range(len(rule.nested))]
            namespace[f"fields{i}"] = [inner.name for inner in rule.nested]
            indent = "    " if rule.required or not rule.nullable else "        "
            if indent != "    ":
                body.append(f"    if {top[i]} is not None:")
            body += [
                f"{indent}if list({top[i]}) != fields{i}:",
                f"{indent}    return check(record)",
                f"{indent}{', '.join(inner_vars)}, = {top[i]}.values()",
            ]
            for j, inner in enumerate(rule.nested):
                body += _fast_checks(inner, inner_vars[j], f"t{i}_{j}", namespace, indent)
            copies.append((rule.name, top[i], indent))
    body.append("    out = record.copy()")
    for name, var, indent in copies:
        if indent != "    ":
            body.append(f"    if {var} is not None:")
        body.append(f"{indent}out[{name!r}] = {var}.copy()")
    body.append("    return None, out")
    exec(compile("\n".join(body), "<validate fast rules>", "exec"), namespace)  # our own source
    fn: Checked = namespace["fast"]
    return fn


def _fast_checks(rule: _FieldRule, var: str, name: str, namespace: dict[str, Any], indent: str) -> list[str]:
    """The lines that send a record whose field (in local `var`) breaks `rule` to `check`."""
    fail = f"{indent}    return check(record)"
    lines = []
    if rule.nullable and not rule.required:
        lines.append(f"{indent}if {var} is not None:")
        indent += "    "
        fail = f"{indent}    return check(record)"
    # else None fails the type test below: no rule's types hold NoneType
    namespace[name] = rule.types[0] if len(rule.types) == 1 else rule.types
    test = f"type({var}) is not {name}" if len(rule.types) == 1 else f"type({var}) not in {name}"
    lines += [f"{indent}if {test}:", fail]
    if rule.symbols is not None:
        namespace[f"{name}_symbols"] = rule.symbols
        lines += [f"{indent}if {var} not in {name}_symbols:", fail]
    if not rule.nested and rule.types == (dict,):
        lines += [
            f"{indent}for k, x in {var}.items():",
            f"{indent}    if type(k) is not str or type(x) is not str:",
            f"    {fail}",
        ]
    if rule.category in ID_CATEGORIES and str in rule.types:
        limit = MAX_PHONE_LEN if rule.category == "phone" else MAX_ID_LEN
        test = "" if rule.types == (str,) else f"type({var}) is str and "  # a str already
        lines += [
            f"{indent}if {test}not (0 < len({var}) <= {limit} and {var}.isprintable()"
            f" and not {var}.isspace()):",
            fail,
        ]
    return lines


def _check_times(record: Mapping[str, Any], now_ms: int) -> Reason | None:
    started = record["started_at"]
    answered = record.get("answered_at")
    ended = record.get("ended_at")
    latest = now_ms + MAX_FUTURE_MS
    for t in (started, answered, ended):
        if t is not None and not EPOCH_OF_SERVICE_MS <= t <= latest:
            return Reason.BAD_TIME
    if answered is not None and answered < started:
        return Reason.BAD_TIME
    if ended is not None and (ended < started or (answered is not None and ended < answered)):
        return Reason.BAD_TIME
    if not 0 <= record["duration_s"] <= MAX_DURATION_S:
        return Reason.BAD_DURATION
    return None


# ---------------------------------------------------------------- phone numbers


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


NON_GEO = "001"  # phonenumbers' region code of non-geographic entities (+800, +882, ...)


def _info(parsed: phonenumbers.PhoneNumber) -> NumberInfo | None:
    """Validity, region and type of a parsed number at once. `is_valid_number` and `number_type`
    each find the region and run the same type matcher; done once, it costs half."""
    region = phonenumbers.region_code_for_number(parsed)
    if region is None or parsed.country_code is None:
        return None
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(parsed.country_code, region)
    if metadata is None:
        return None
    if region != NON_GEO and parsed.country_code != phonenumbers.country_code_for_valid_region(region):
        return None
    kind = _number_type_helper(phonenumbers.national_significant_number(parsed), metadata)
    if kind == phonenumbers.PhoneNumberType.UNKNOWN:
        return None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return NumberInfo(e164, region, parsed.country_code, _TYPE_NAMES.get(kind, "unknown"))


def number_info(number: str, region: str | None) -> NumberInfo | None:
    """The number read internationally ("+", "00") or, written nationally, in `region`."""
    text = number.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    international = text.startswith("+")
    if not international and region is None:
        return None
    fast = numbers.lookup(text, None if international else region)
    if fast is not numbers.FALLBACK:
        return None if fast is None else NumberInfo(*fast)
    return parsed_info(text, None if international else region)


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


def normalize_numbers(record: Record, memo: Memo | None = None) -> tuple[str, ...]:
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
    """What a number written internationally ("+", "00") is (None: not valid), remembered by its
    spelling; False if it is written nationally."""
    key = ("intl", number)
    found = memo.peek(key, _MISSING)
    if found is not _MISSING:
        return found
    text = number.strip()
    if not text.startswith(("+", "00")):
        return memo.put(key, False)
    info = number_info(text, None)
    if info is not None:
        memo.put(("facts", info.e164), (info.country_code, info.kind))
    return memo.put(key, info)


def _national(memo: Memo, number: str, other: str | None, fallback: str | None) -> NumberInfo | None:
    """A nationally written number read in the other number's region, else the carrier's."""
    key = ("num", number, other, fallback)
    found = memo.peek(key, _MISSING)
    if found is not _MISSING:
        return found
    info = None
    for region in (other, fallback):
        if region is not None:
            info = number_info(number, region)
            if info is not None:
                memo.put(("facts", info.e164), (info.country_code, info.kind))
                break
    return memo.put(key, info)


@lru_cache(maxsize=4096)
def _regions(*regions: str | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r for r in regions if r is not None))


# ---------------------------------------------------------------- the batch


def _project(record: Mapping[str, Any], rules: Sequence[_FieldRule]) -> Record:
    """A copy holding exactly the schema's fields (absent optional ones as None)."""
    out = {}
    for rule in rules:
        value = record.get(rule.name)
        out[rule.name] = _project(value, rule.nested) if rule.nested and value is not None else value
    return out


def validate_batch(
    records: Sequence[Any],
    secret_names: Iterable[str],
    now_ms: int,
    memo: Memo | None = None,
    sources: Sequence[Lineage] | None = None,
) -> Validated:
    """Strip secrets, check and normalize every record of a batch. A duplicate event_id within
    the batch is rejected (the first occurrence is kept). A rejection names the record's source
    (`sources[i]`; default partition -1, offset = position in the batch, index 0) and holds the
    record as JSON with secret-named attributes masked."""
    rejections: list[Rejection] = []
    drops: Counter[Drop] = Counter()
    memo = memo if memo is not None else Memo()
    out = Validated(rejections=rejections, drops=drops)
    for clean, index, regions in validated(records, secret_names, now_ms, memo, sources, rejections, drops):
        out.records.append(clean)
        out.indices.append(index)
        out.regions.append(regions)
    return out


def validated(
    records: Sequence[Any],
    secret_names: Iterable[str],
    now_ms: int,
    memo: Memo,
    sources: Sequence[Lineage] | None,
    rejections: list[Rejection],
    drops: Counter[Drop],
) -> Iterator[tuple[Record, int, tuple[str, ...]]]:
    """`validate_batch` as it goes: each accepted record (a normalized copy) with its batch
    position and regions, as soon as it is checked; rejections go to the caller's list and
    secret strips are counted in its counter. The chain takes each record on while it is still
    in the CPU's caches, and builds no lists and no `Validated` to unpack (a batch of one event
    paid ~4 us for that)."""
    names = _lowered(secret_names)
    check = _fast_checker()
    maps = _map_fields()
    harmless = _harmless(names)
    seen: set[str] = set()
    latest = now_ms + MAX_FUTURE_MS
    for index, raw in enumerate(records):
        if type(raw) is not dict and not isinstance(raw, Mapping):  # decoders give dicts: no abc check
            rejections.append(_rejection(Reason.MALFORMED, raw, index, sources, names))
            continue
        # _strip gives the record itself when its maps hold only keys known harmless: asked
        # only when one holds another (a secret, a new name, or it is no plain dict)
        record: Mapping[str, Any] = raw
        for name in maps:
            value = raw.get(name)
            if value is not None and not (type(value) is dict and value.keys() <= harmless):
                record, stripped = _strip(raw, names)
                if stripped:
                    drops[Drop.SECRET_ATTRIBUTE] += stripped
                break
        reason, clean = check(record)
        if reason is None and clean is not None:
            # _check_times, inlined on the checked copy (the same values): its common case is
            # three comparisons with the times present
            started, answered, ended = clean["started_at"], clean["answered_at"], clean["ended_at"]
            if not (
                EPOCH_OF_SERVICE_MS <= started <= latest
                and (answered is None or started <= answered <= latest)
                and (
                    ended is None or (started <= ended <= latest and (answered is None or answered <= ended))
                )
            ):
                reason = _check_times(record, now_ms)
            elif not 0 <= clean["duration_s"] <= MAX_DURATION_S:
                reason = Reason.BAD_DURATION
            if reason is None and clean["event_id"] in seen:
                reason = Reason.DUPLICATE
        if reason is not None or clean is None:
            blamed = field_of(raw, reason, EPOCH_OF_SERVICE_MS, latest) if reason is not None else None
            rejections.append(_rejection(reason or Reason.INTERNAL, raw, index, sources, names, blamed))
            continue
        seen.add(clean["event_id"])
        yield clean, index, normalize_numbers(clean, memo)


def _rejection(
    reason: Reason,
    record: Any,
    index: int,
    sources: Sequence[Lineage] | None,
    names: frozenset[str],
    field: str | None = None,
) -> Rejection:
    partition, offset, place = sources[index] if sources is not None else (-1, index, 0)
    return Rejection(reason, Stage.VALIDATE, partition, offset, place, rejected_bytes(record, names), field)


def rejected_bytes(record: Any, secret_names: Iterable[str]) -> bytes:
    """A decoded event rejected after decoding, as JSON with secret-named attributes masked
    (b"" when it does not serialize)."""
    return strip_secrets_json(event_json(record), secret_names)
