"""Validate and normalize a batch of decoded CallEvent records.

Secret-named attributes go first (`pipeline.secret_names`; here and on the dead-letter path), so
a credential that a carrier put in `attributes` reaches neither the lake nor calls.dlq.
`validate_batch` then checks each record against the CallEvent schema (required fields, types,
enum symbols), sane identifiers (non-blank, bounded, printable: `pipeline.identifiers`), times and
durations, and duplicate event ids within the batch, and normalizes the phone numbers to E.164
where they parse (`pipeline.phones`). Each rejection carries one `Reason`, never a value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import schemas
from pipeline.codec import Lineage, event_json
from pipeline.identifiers import ID_CATEGORIES, MAX_ID_LEN, MAX_PHONE_LEN, is_nameable
from pipeline.memo import Memo
from pipeline.phones import normalize_numbers
from pipeline.reasons import Drop, Reason, Rejection, Stage
from pipeline.rejected_field import field_of
from pipeline.secret_names import _harmless, _lowered, _map_fields, _strip, strip_secrets_json
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


@lru_cache(maxsize=1)
def _admitted_copier() -> Checked:
    """`_fast_checker` for a record a decoder admitted (`pipeline.codec`'s `decode_value` and
    `plain_record`): Avro gives the schema's fields in its order with its types and enum symbols,
    JSON the same by `pipeline.codec_json`'s conversion, and admission found its identifiers
    nameable (`pipeline.identifiers.bad_identifier`, the checks `_fast_checks` repeats). The field
    rules can only say yes to it, so it is copied as `_fast_checker` copies it, without asking
    them again (~4 us per event of a worker's ~40). A record of another shape still goes to
    `_checker`. tests/unit/test_validate.py holds the decoders to this on every kind of damage."""
    rules = _rules()
    fields = [rule.name for rule in rules]
    nested = tuple(rule.name for rule in rules if rule.nested)
    check = _checker()

    def copy(record: Mapping[str, Any]) -> tuple[Reason | None, Record | None]:
        if type(record) is not dict or list(record) != fields:
            return check(record)
        out = record.copy()
        for name in nested:
            inner = out[name]
            if inner is not None:
                out[name] = inner.copy()
        return None, out

    return copy


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
    *,
    admitted: bool = False,
) -> Iterator[tuple[Record, int, tuple[str, ...]]]:
    """`validate_batch` as it goes: each accepted record (a normalized copy) with its batch
    position and regions, as soon as it is checked; rejections go to the caller's list and
    secret strips are counted in its counter. The chain takes each record on while it is still
    in the CPU's caches, and builds no lists and no `Validated` to unpack (a batch of one event
    paid ~4 us for that). `admitted`: the records are as a decoder admitted them (`_admitted_copier`)."""
    names = _lowered(secret_names)
    check = _admitted_copier() if admitted else _fast_checker()
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
