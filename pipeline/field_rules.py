"""The CallEvent schema's field rules, and the checkers written from them once per process.

Each field's rule (`FieldRule`: exact Python types, nullability, enum symbols, the nested
record's rules, its PII category) comes from the Avro schema and its annotations. `check_fields`
applies them (the first failing check of the first failing field gives the `Reason`), and
`project` gives the copy holding exactly the schema's fields. The chain runs them unrolled into
one generated function (`checker`), with a faster form for a record in the decoders' own shape
(`fast_checker`), and asks nothing of what a decoder already admitted (`admitted_copier`).
`pipeline.validate` checks batches with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import schemas
from pipeline.identifiers import ID_CATEGORIES, MAX_ID_LEN, MAX_PHONE_LEN, is_nameable
from pipeline.reasons import Reason

RECORD = "CallEvent"
Record = dict[str, Any]


@dataclass(frozen=True)
class FieldRule:
    name: str
    types: tuple[type, ...]
    nullable: bool
    required: bool
    symbols: frozenset[str] | None
    category: str
    nested: tuple[FieldRule, ...] = ()


# Exact Python types per Avro type (exact, so True is no int); decoders give plain dicts and strs.
_PY = {"string": (str,), "int": (int,), "long": (int,), "boolean": (bool,), "double": (float, int)}


def _rule(f: Mapping[str, Any], annotations: Mapping[str, str], prefix: str) -> FieldRule:
    t = f["type"]
    branches = t if isinstance(t, list) else [t]
    nullable = "null" in branches
    (branch,) = [b for b in branches if b != "null"]
    symbols = None
    nested: tuple[FieldRule, ...] = ()
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
    return FieldRule(
        f["name"], types, nullable, "default" not in f, symbols, annotations[prefix + f["name"]], nested
    )


@lru_cache(maxsize=1)
def schema_rules() -> tuple[FieldRule, ...]:
    annotations = {p.path: p.category for p in schemas.pii_fields(RECORD)}
    return tuple(_rule(f, annotations, "") for f in schemas.raw(RECORD)["fields"])


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    return type(value) in types


def check_fields(record: Mapping[str, Any], rules: Sequence[FieldRule]) -> Reason | None:
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
            reason = check_fields(value, rule.nested)
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
def checker() -> Checked:
    """`check_fields` then `project`, unrolled into one function written from the schema's rules
    once per process: the first failing check of the first failing field gives the reason, as
    in `check_fields`; a record that passes comes back projected, as `project` makes it."""
    namespace: dict[str, Any] = {"Reason": Reason, "nameable": is_nameable}
    lines: list[str] = []
    _write_checker("check", schema_rules(), namespace, lines)
    exec(compile("\n".join(lines), "<validate rules>", "exec"), namespace)  # our own source, from the schema
    fn: Checked = namespace["check"]
    return fn


def _write_checker(
    name: str, rules: Sequence[FieldRule], namespace: dict[str, Any], lines: list[str]
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
def fast_checker() -> Checked:
    """`checker` for a record in the decoders' own shape (both give one): a plain dict holding
    exactly the schema's fields in the schema's order, a nested record likewise. Its values are
    unpacked at once into locals, checked as `checker` checks them, and the record is copied
    whole (`dict.copy` copies the table, no insert per key): what `project` makes of it, as the
    keys and their order are the schema's. Any other shape and any failed check goes to
    `checker`, which names the reason: this one only ever says yes faster (~half the cost)."""
    rules = schema_rules()
    namespace: dict[str, Any] = {"check": checker()}
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
def admitted_copier() -> Checked:
    """`fast_checker` for a record a decoder admitted (`pipeline.codec`'s `decode_value` and
    `plain_record`): Avro gives the schema's fields in its order with its types and enum symbols,
    JSON the same by `pipeline.codec_json`'s conversion, and admission found its identifiers
    nameable (`pipeline.identifiers.bad_identifier`, the checks `_fast_checks` repeats). The field
    rules can only say yes to it, so it is copied as `fast_checker` copies it, without asking
    them again (~4 us per event of a worker's ~40). A record of another shape still goes to
    `checker`. tests/unit/test_validate.py holds the decoders to this on every kind of damage."""
    rules = schema_rules()
    fields = [rule.name for rule in rules]
    nested = tuple(rule.name for rule in rules if rule.nested)
    check = checker()

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


def _fast_checks(rule: FieldRule, var: str, name: str, namespace: dict[str, Any], indent: str) -> list[str]:
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


def project(record: Mapping[str, Any], rules: Sequence[FieldRule]) -> Record:
    """A copy holding exactly the schema's fields (absent optional ones as None)."""
    out = {}
    for rule in rules:
        value = record.get(rule.name)
        out[rule.name] = project(value, rule.nested) if rule.nested and value is not None else value
    return out
