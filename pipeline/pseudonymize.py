"""Pseudonymize validated, consent-checked CallEvents into analytics-zone rows.

What a field becomes follows from its PII annotation, through `schemas.zones.ANALYTICS_COLUMNS`
(the column names) and `RULES` below (the values): one transform per (class, category), so no
list of fields is kept here. A field whose annotation has no transform fails at start-up
(`plan()`), never silently passes through raw.

  identifiers       keyed tokens `key.token(domain, value)` (account, org, device, phone)
  phone numbers     token of the E.164 form, country calling code, number type (mobile, ...)
  IP addresses      network prefix: /24 for IPv4, /48 for IPv6, the /24 of an IPv4 address an
                    IPv6 one carries (6to4, Teredo, ...: pipeline/generalize.py)
  cell ids          cell_area MCC-MNC-LAC (the cell dropped); an id not in that form: a token
  recording URI     has_recording only
  free text         every detected PII span replaced by its label (pipeline.detect); attribute
                    maps keys and values alike, short texts remembered (pipeline/attributes.py)
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import schemas
from pipeline.attributes import redact_attributes, redacted
from pipeline.detect import redact_text
from pipeline.generalize import ip_prefix, phone_facts
from pipeline.keys import TOKEN_HEX, Domain, PseudonymKey, domain_prefix
from pipeline.memo import Memo
from schemas.zones import ANALYTICS_COLUMNS, LINEAGE

RECORD = "CallEvent"
KEY_VERSION = "key_version"
LINEAGE_NAMES = tuple(f.name for f in LINEAGE)
_CELL = re.compile(r"[^\W_]+-[^\W_]+-[^\W_]+-[^\W_]+")
_MISSING = object()

# (value, key, regions of the call, memo) -> the values of the rule's columns, in ANALYTICS_COLUMNS
# order. `memo` (pipeline/memo.py) remembers what identifiers became.
Transform = Callable[[Any, PseudonymKey, Sequence[str], Memo], tuple[Any, ...]]


def cell_area(value: str, key: PseudonymKey) -> str:
    """MCC-MNC-LAC of an MCC-MNC-LAC-CI cell id; a cell token when the id has another form."""
    if _CELL.fullmatch(value):  # four alphanumeric parts ([^\W_]: str.isalnum's characters)
        return value.rsplit("-", 1)[0]
    return "cell:" + token_of(key, Domain.CELL, value)


def _same(value: Any, key: PseudonymKey, regions: Sequence[str], memo: Memo) -> tuple[Any, ...]:
    return (value,)


def token_of(key: PseudonymKey, domain: Domain, value: str, memo: Memo | None = None) -> str:
    """`key.token(domain, value)`, remembered in `memo` when given: accounts, orgs, numbers and
    devices repeat."""
    if memo is None:
        return key.token(domain, value)
    # the token depends on the secret, the domain and the value only; bytes and str cache their
    # hashes, the key dataclass and the enum member would hash in Python on every look-up
    entry = ("token", key.secret, domain._value_, value)  # _value_: no descriptor call
    token = memo.peek(entry)
    if token is None:
        token = memo.put(entry, _keyed(key, domain, memo)(value))
    return token


def _keyed(key: PseudonymKey, domain: Domain, memo: Memo) -> Callable[[str], str]:
    """`key.token(domain, ...)` from the HMAC state after the secret and the domain prefix,
    computed once and copied per value (the same bytes go through the same hash: the same
    token, tested), remembered in `memo` beside the tokens it makes: a new identifier's token
    costs a third less."""
    entry = ("hmac", key.secret, domain._value_)
    found: Callable[[str], str] | None = memo.peek(entry)
    if found is not None:
        return found
    if not isinstance(domain, Domain):
        raise TypeError("a token domain must be a pipeline.keys.Domain")
    start = hmac.new(key.secret, domain_prefix(domain), hashlib.sha256)

    def keyed(value: str) -> str:
        mac = start.copy()
        mac.update(value.encode())
        return mac.hexdigest()[:TOKEN_HEX]

    return memo.put(entry, keyed)


_TOKEN_DOMAINS: dict[Transform, Domain] = {}  # each token transform's domain, for `_generated`


def _token(domain: Domain) -> Transform:
    def transform(value: Any, key: PseudonymKey, regions: Sequence[str], memo: Memo) -> tuple[Any, ...]:
        return (None if value is None else token_of(key, domain, value, memo),)

    _TOKEN_DOMAINS[transform] = domain
    return transform


def _phone(value: Any, key: PseudonymKey, regions: Sequence[str], memo: Memo) -> tuple[Any, ...]:
    if value is None:
        return (None, None, None)
    facts = memo.peek(("facts", value))
    if facts is None:
        facts = memo.put(("facts", value), phone_facts(value))
    return (token_of(key, Domain.PHONE, value, memo), *facts)


def _cell(value: Any, key: PseudonymKey, regions: Sequence[str], memo: Memo) -> tuple[Any, ...]:
    if value is None:
        return (None,)
    area = memo.peek(("cell", key.secret, value))
    if area is None:
        area = memo.put(("cell", key.secret, value), cell_area(value, key))
    return (area,)


def _ip(value: Any, key: PseudonymKey, regions: Sequence[str], memo: Memo) -> tuple[Any, ...]:
    if value is None:
        return (None,)
    prefix = memo.peek(("ip", value), _MISSING)
    if prefix is _MISSING:
        prefix = memo.put(("ip", value), ip_prefix(value))
    return (prefix,)


def _has(value: Any, key: PseudonymKey, regions: Sequence[str], memo: Memo) -> tuple[Any, ...]:
    return (value is not None,)


def _text(value: Any, key: PseudonymKey, regions: Sequence[str], memo: Memo) -> tuple[Any, ...]:
    return (None if value is None else redact_text(value, regions),)


def _short_text(value: Any, key: PseudonymKey, regions: Sequence[str], memo: Memo) -> tuple[Any, ...]:
    """A short carrier-written value kept for analysis (a device's OS, an app version): as given,
    but with any personal data a carrier wrote into it redacted, as an attribute's value is."""
    return (None if value is None else redacted(value, tuple(regions), memo),)


def _text_map(value: Any, key: PseudonymKey, regions: Sequence[str], memo: Memo) -> tuple[Any, ...]:
    return (None if value is None else redact_attributes(value, tuple(regions), memo),)


# One transform per (class, category) of ANALYTICS_COLUMNS.
RULES: dict[tuple[str, str], Transform] = {
    ("none", "id"): _same,
    ("direct", "account_id"): _token(Domain.ACCOUNT),
    ("quasi", "org_id"): _token(Domain.ORG),
    ("none", "carrier"): _same,
    ("none", "kind"): _same,
    ("none", "direction"): _same,
    ("direct", "phone"): _phone,
    ("quasi", "time"): _same,
    ("quasi", "duration"): _same,
    ("none", "status"): _same,
    ("quasi", "location"): _cell,
    ("direct", "ip"): _ip,
    ("quasi", "device"): _short_text,
    ("direct", "device_id"): _token(Domain.DEVICE),
    ("none", "device"): _same,
    ("sensitive", "recording"): _has,
    ("sensitive", "free_text"): _text,
    ("quasi", "free_text"): _text_map,
}


@dataclass(frozen=True)
class _Step:
    path: tuple[str, ...]
    columns: tuple[str, ...]
    transform: Transform


@cache
def plan() -> tuple[_Step, ...]:
    """The steps that turn a CallEvent into an analytics row, from the schema's annotations."""
    annotated = schemas.pii_fields(RECORD)
    parents = {a.path.rsplit(".", 1)[0] for a in annotated if "." in a.path}
    steps = []
    for ann in annotated:
        if ann.path in parents:
            continue
        rule = (ann.klass, ann.category)
        if rule not in ANALYTICS_COLUMNS or rule not in RULES:
            raise ValueError(f"no analytics rule for field {ann.path} ({ann.klass}, {ann.category})")
        leaf = ann.path.rsplit(".", 1)[-1]
        columns = tuple(template.format(name=leaf) for template, _type in ANALYTICS_COLUMNS[rule])
        steps.append(_Step(tuple(ann.path.split(".")), columns, RULES[rule]))
    return tuple(steps)


@cache
def _compiled() -> tuple[tuple[str, str | None, tuple[str, ...], Transform], ...]:
    """plan() flattened for the hot path: (field, nested field or None, columns, transform)."""
    out = []
    for step in plan():
        if len(step.path) > 2:
            raise ValueError("records nest one level deep at most")
        out.append(
            (step.path[0], step.path[1] if len(step.path) == 2 else None, step.columns, step.transform)
        )
    return tuple(out)


def pseudonymize(
    record: Mapping[str, Any],
    key: PseudonymKey,
    regions: Sequence[str],
    lineage: Mapping[str, int],
    memo: Memo | None = None,
) -> dict[str, Any]:
    """The analytics row of one validated, consent-checked record; `regions` are the call's
    regions for national numbers in free text, `lineage` its source_* values; `memo` remembers
    what identifiers became (pipeline/memo.py)."""
    return _generated()[0](record, key, regions, lineage, memo if memo is not None else Memo())


def pseudonymizer() -> Pseudonymizer:
    """`pseudonymize` as one function for a batch's loop: (record, key, regions, lineage, memo),
    where `lineage` is any mapping holding the source_* values (the vault row itself will do)."""
    return _generated()[0]


def row_pseudonymizer() -> RowPseudonymizer:
    """`pseudonymize` of a vault row as the chain makes it, (row, key, regions, memo): a dict
    holding exactly the vault zone's columns in their order (the CallEvent's fields in the
    schema's order, then the lineage; both of validate's checkers copy records so, and the
    chain appends the lineage). Its values are unpacked in one step instead of a look-up per
    field (~1.5 us per event); any other dict must go through `pseudonymizer()`."""
    return _generated()[1]


def interpret(
    record: Mapping[str, Any],
    key: PseudonymKey,
    regions: Sequence[str],
    lineage: Mapping[str, int],
    memo: Memo,
) -> dict[str, Any]:
    """The plan, step by step: the definition `_generated` is checked against (tests)."""
    row: dict[str, Any] = {}
    for name, inner, columns, transform in _compiled():
        value = record.get(name)
        if inner is not None and value is not None:
            value = value.get(inner)
        out = transform(value, key, regions, memo)
        if len(columns) == 1:
            row[columns[0]] = out[0]
        else:
            row.update(zip(columns, out, strict=True))
    row[KEY_VERSION] = key.version
    for name in LINEAGE_NAMES:
        row[name] = lineage[name]
    return row


Pseudonymizer = Callable[
    [Mapping[str, Any], PseudonymKey, Sequence[str], Mapping[str, int], Memo], dict[str, Any]
]
RowPseudonymizer = Callable[[dict[str, Any], PseudonymKey, Sequence[str], Memo], dict[str, Any]]


@cache
def _generated() -> tuple[Pseudonymizer, RowPseudonymizer]:
    """`interpret` unrolled into one function, written from the plan once per process. The
    record's fields are read at once (`map` over its `get`, in C) into locals; each rule's
    transform is written inline where `interpret` calls it (a token, the phone facts, a cell
    area, an IP prefix: a look-up in the memo under the transform's own entry, the transform
    itself called on a miss, so what is remembered is shared with it); and the row is one dict
    display in the plan's column order. A transform not known here is called as it is. The
    loop over ~20 steps with a tuple per step was a third of the chain's time per event; the
    calls and stores per field that replaced it were still half of what is left."""
    steps = _compiled()
    tops = list(dict.fromkeys(name for name, _inner, _columns, _transform in steps))
    local = {name: f"v{i}" for i, name in enumerate(tops)}
    namespace: dict[str, Any] = {
        "fields": tuple(tops),
        "map": map,
        "token_of": token_of,
        "phone": _phone,
        "cell_area": cell_area,
        "ip_prefix": ip_prefix,
        "redact_text": redact_text,
        "text_map": _text_map,
        "MISSING": _MISSING,
    }
    lines = ["    peek = memo.peek", "    secret = key.secret"]
    row: list[tuple[str, str]] = []
    for i, (name, inner, columns, transform) in enumerate(steps):
        value = local[name]
        if inner is not None:
            lines.append(f"    x{i} = {value}.get({inner!r}) if {value} is not None else None")
            value = f"x{i}"
        outs = [f"c{i}_{j}" for j in range(len(columns))]
        if transform is _same:
            outs = [value]
        elif transform in _TOKEN_DOMAINS:
            domain = _TOKEN_DOMAINS[transform]
            namespace[f"domain{i}"] = domain
            lines += [
                f"    if {value} is None:",
                f"        {outs[0]} = None",
                "    else:",  # token_of's own entry, read here before calling it
                f"        {outs[0]} = peek(('token', secret, {domain._value_!r}, {value}))",
                f"        if {outs[0]} is None:",
                f"            {outs[0]} = token_of(key, domain{i}, {value}, memo)",
            ]
        elif transform is _phone:
            lines += [
                f"    if {value} is None:",
                f"        {' = '.join(outs)} = None",
                "    else:",  # _phone's answer, remembered whole: one look-up, not two
                f"        entry = ('phone', secret, {value})",
                "        found = peek(entry)",
                "        if found is None:",
                f"            found = memo.put(entry, phone({value}, key, regions, memo))",
                f"        {', '.join(outs)}, = found",
            ]
        elif transform is _cell:
            lines += [
                f"    if {value} is None:",
                f"        {outs[0]} = None",
                "    else:",
                f"        {outs[0]} = peek(('cell', secret, {value}))",
                f"        if {outs[0]} is None:",
                f"            {outs[0]} = memo.put(('cell', secret, {value}), cell_area({value}, key))",
            ]
        elif transform is _ip:
            lines += [
                f"    if {value} is None:",
                f"        {outs[0]} = None",
                "    else:",
                f"        {outs[0]} = peek(('ip', {value}), MISSING)",
                f"        if {outs[0]} is MISSING:",
                f"            {outs[0]} = memo.put(('ip', {value}), ip_prefix({value}))",
            ]
        elif transform is _has:
            outs = [f"{value} is not None"]
        elif transform is _text:
            outs = [f"(None if {value} is None else redact_text({value}, regions))"]
        elif transform is _text_map:
            outs = [f"(None if {value} is None else text_map({value}, key, regions, memo)[0])"]
        else:
            namespace[f"t{i}"] = transform
            lines.append(f"    {', '.join(outs)}, = t{i}({value}, key, regions, memo)")
        if len(outs) != len(columns):
            raise ValueError(f"field {name}: {len(columns)} columns, {len(outs)} values")
        row += zip(columns, outs, strict=True)
    row.append((KEY_VERSION, "key.version"))
    row += [(n, f"l{j}") for j, n in enumerate(LINEAGE_NAMES)]
    if len({column for column, _ in row}) != len(row):
        raise ValueError("two rules write one analytics column")
    lines.append("    return {" + ", ".join(f"{column!r}: {expr}" for column, expr in row) + "}")
    lineage = [f"l{j}" for j in range(len(LINEAGE_NAMES))]
    vault = [local.get(f["name"], "_") for f in schemas.raw(RECORD)["fields"]] + lineage
    source = [
        "def pseudonymize(record, key, regions, lineage, memo):",
        f"    {', '.join(local[n] for n in tops)}, = map(record.get, fields)",
        *(f"    l{j} = lineage[{n!r}]" for j, n in enumerate(LINEAGE_NAMES)),
        *lines,
        "",
        "def pseudonymize_row(row, key, regions, memo):",
        f"    {', '.join(vault)}, = row.values()",
        *lines,
    ]
    exec(
        compile("\n".join(source), "<pseudonymize plan>", "exec"), namespace
    )  # our own source, from the schema
    return namespace["pseudonymize"], namespace["pseudonymize_row"]
