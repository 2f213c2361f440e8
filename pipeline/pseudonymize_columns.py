"""The analytics zone of a batch built per column from its vault-zone table, each transform
computed once per distinct value of the batch.

The invariant, tested on the bench's traffic and on hand-made edge cases:

    analytics_columns(vault_table(rows), regions, key, memo)
        == analytics_table([row_pseudonymizer()(row, key, regions[i], memo) for i, row in ...])

The columns follow pipeline.pseudonymize's plan (one transform per (PII class, category) of the
schema's annotations): each step of `_compiled()` is matched to its column form here by the
transform it names, and a transform without one fails `column_plan()` at start-up, so a new
annotated field can never pass through raw. The values come from the same definitions
(`PseudonymKey.token`, `_phone`, `cell_area`, `ip_prefix`, `redact_text`, `redacted`); what the
columns remember is under the row code's memo entries or the memo's tables, and
`Memo.forget()` on erasure drops both.

Per distinct value: `dictionary_encode`, the transform over the dictionary, `take` back to the
rows (a null index gives a null: a transform is never called on None). What needs no memory is
computed for the whole dictionary at once, without a Python call per value: tokens natively
(`tokens`, pipeline/native/src/tokens.rs), cell areas of ASCII cell ids and the attribute texts
that redaction leaves as they are or makes "[EMAIL]" whole by Arrow's regular expressions. The
rest goes through the row form's function once per distinct value. Transcripts, rare and nearly
always unique, are redacted row by row with each row's regions, the non-null ones only; attribute
keys and values once per distinct (text, regions of the call). Errors name columns, never values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.attributes import ENTRY, distinct_keys, redacted
from pipeline.detect import _WHOLE_EMAIL, MAX_REMEMBERED_VALUE, Label, redact_text
from pipeline.generalize import phone_facts
from pipeline.keys import TOKEN_HEX, Domain, PseudonymKey, domain_prefix
from pipeline.memo import Memo
from pipeline.pseudonymize import (
    _TOKEN_DOMAINS,
    KEY_VERSION,
    LINEAGE_NAMES,
    Transform,
    _cell,
    _compiled,
    _has,
    _ip,
    _phone,
    _same,
    _short_text,
    _text,
    _text_map,
)
from schemas.zones import analytics_schema, vault_schema

try:
    from pipeline import _native
except ImportError:  # built from pipeline/native/ where cargo is found; else tokens one by one
    _native = None  # type: ignore[assignment]

Regions = Sequence[tuple[str, ...]]
# (the field's values, its step, key, each row's regions, memo) -> one array per analytics
# column of the step, of the step's types
Build = Callable[[pa.Array, "ColumnStep", PseudonymKey, Regions, Memo], tuple[pa.Array, ...]]


@dataclass(frozen=True)
class ColumnStep:
    field: str
    inner: str | None  # the struct's field, for a nested one (device.device_id)
    columns: tuple[str, ...]
    types: tuple[pa.DataType, ...]
    build: Build


def analytics_columns(vault: pa.Table, regions: Regions, key: PseudonymKey, memo: Memo) -> pa.Table:
    """The analytics table of vault-zone rows (`sinks.arrow.vault_table`'s schema, lineage
    included): equal to `analytics_table([row_pseudonymizer()(row, key, regions[i], memo) for i,
    row in enumerate(rows)])`. `regions[i]` is row i's call regions, as
    `pipeline.phones.normalize_numbers` returns them; `memo` is the row path's own."""
    schema = analytics_schema()
    if len(regions) != vault.num_rows:
        raise ValueError("one regions tuple per row is required")
    if vault.num_rows == 0:
        return schema.empty_table()
    out: dict[str, pa.Array | pa.ChunkedArray] = {}
    fields: dict[str, pa.Array] = {}
    for step in column_plan():
        if step.field not in fields:
            fields[step.field] = vault.column(step.field).combine_chunks()
        values = fields[step.field]
        if step.inner is not None:
            values = pc.struct_field(values, step.inner)  # null where the struct is null
        out.update(zip(step.columns, step.build(values, step, key, regions, memo), strict=True))
    out[KEY_VERSION] = pa.repeat(pa.scalar(key.version, pa.string()), vault.num_rows)
    for name in LINEAGE_NAMES:
        out[name] = vault.column(name)
    return pa.Table.from_arrays([out[name] for name in schema.names], schema=schema)


@cache
def column_plan() -> tuple[ColumnStep, ...]:
    """pipeline.pseudonymize's plan in column form; raises for a transform it has none for."""
    return plan_of(_compiled())


def plan_of(steps: Sequence[tuple[str, str | None, tuple[str, ...], Transform]]) -> tuple[ColumnStep, ...]:
    """`column_plan` of any compiled plan (tests hand it one with a transform unknown here)."""
    analytics = analytics_schema()
    vault = vault_schema()
    out = []
    for name, inner, columns, transform in steps:
        path = name if inner is None else f"{name}.{inner}"
        build = _BUILDS.get(transform)
        if build is None and transform in _TOKEN_DOMAINS:
            build = _token_column(_TOKEN_DOMAINS[transform])
        if build is None:
            raise ValueError(f"no column transform for field {path}")
        types = tuple(analytics.field(c).type for c in columns)
        if transform is _same:
            source = vault.field(name).type
            if inner is not None:
                source = source.field(inner).type
            if types != (source,):
                raise ValueError(f"field {path} is copied but its analytics type differs")
        out.append(ColumnStep(name, inner, columns, types, build))
    written = [c for step in out for c in step.columns]
    if [*written, KEY_VERSION, *LINEAGE_NAMES] != analytics.names:
        raise ValueError("the column plan does not write the analytics schema's columns in order")
    return tuple(out)


def _per_distinct(
    values: pa.Array, types: tuple[pa.DataType, ...], compute: Callable[[Any], tuple[Any, ...]]
) -> tuple[pa.Array, ...]:
    """`compute` once per distinct non-null value, its answers spread back to the rows."""
    encoded = values.dictionary_encode()  # nulls stay null indices: take gives null for them
    answers = [compute(v) for v in encoded.dictionary.to_pylist()]
    by_column = list(zip(*answers, strict=True)) if answers else [() for _ in types]
    return tuple(
        pa.array(column, type=t).take(encoded.indices) for column, t in zip(by_column, types, strict=True)
    )


def tokens(key: PseudonymKey, domain: Domain, values: pa.Array) -> pa.Array:
    """`key.token(domain, v)` of each value of a string array without nulls: natively in one call
    (pipeline/native/src/tokens.rs, ~0.15 us a value against ~1 in Python), else one by one."""
    if not pa.types.is_string(values.type) or values.null_count:
        raise ValueError("tokens are made of a string array without nulls")
    n = len(values)
    if _native is None or n == 0:
        return pa.array([key.token(domain, v) for v in values.to_pylist()], pa.string())
    _, offsets, data = values.buffers()
    offsets = offsets.slice(values.offset * 4, (n + 1) * 4)  # a sliced array's own offsets
    made = _native.tokens(key.secret, domain_prefix(domain), offsets, data or b"", n, TOKEN_HEX)
    starts = np.arange(0, (n + 1) * TOKEN_HEX, TOKEN_HEX, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(starts), pa.py_buffer(made)])


def _token_column(domain: Domain) -> Build:
    """A token column: each distinct value's token, spread back to the rows. Tokens are not
    remembered here: making one natively costs less than a look-up in the memo."""

    def build(
        values: pa.Array, step: ColumnStep, key: PseudonymKey, regions: Regions, memo: Memo
    ) -> tuple[pa.Array, ...]:
        encoded = values.dictionary_encode()
        return (tokens(key, domain, encoded.dictionary).take(encoded.indices),)

    return build


def _per_value(transform: Transform) -> Build:
    """A row transform that reads no regions (a cell area, an IP prefix), run once per distinct
    value: it keeps its own memo entries, the ones the row form reads."""

    def build(
        values: pa.Array, step: ColumnStep, key: PseudonymKey, regions: Regions, memo: Memo
    ) -> tuple[pa.Array, ...]:
        return _per_distinct(values, step.types, lambda v: transform(v, key, (), memo))

    return build


def _same_column(
    values: pa.Array, step: ColumnStep, key: PseudonymKey, regions: Regions, memo: Memo
) -> tuple[pa.Array, ...]:
    return (values,)


def _phone_columns(
    values: pa.Array, step: ColumnStep, key: PseudonymKey, regions: Regions, memo: Memo
) -> tuple[pa.Array, ...]:
    """`_phone` of each number: its token (`tokens`, per distinct number), and its facts
    (country code, type) as the column chain read them (`RegionCodes.facts`), or else per
    distinct number from the memo's FACTS table."""
    encoded = values.dictionary_encode()
    numbers = encoded.dictionary
    read = regions.facts.get(step.field) if isinstance(regions, RegionCodes) and not step.inner else None
    if read is not None:
        missing = np.asarray(values.is_null())
        return (
            tokens(key, Domain.PHONE, numbers).take(encoded.indices),
            pa.array(read.country_codes, step.types[1], mask=missing | (read.country_codes < 0)),
            pa.array(KIND_NAMES, step.types[2]).take(pa.array(read.kinds, mask=missing)),
        )
    spelled = numbers.to_pylist()
    table = memo.table(FACTS)
    facts = list(map(table.get, spelled))
    if None in facts:
        for at, found in enumerate(facts):
            if found is None:
                facts[at] = table[spelled[at]] = phone_facts(spelled[at])
        memo.settle()
    codes, kinds = zip(*facts, strict=True) if facts else ((), ())
    made = (
        tokens(key, Domain.PHONE, numbers),
        pa.array(codes, step.types[1]),
        pa.array(kinds, step.types[2]),
    )
    return tuple(column.take(encoded.indices) for column in made)


# The memo's table of an E.164 number's facts (country code, type), as `_phone` gives them, for
# callers that pass no facts read with the regions.
FACTS = "columns:facts"

# Number types as small codes (`PhoneFacts.kinds`), the same in every batch.
KIND_NAMES: list[str] = []
_KIND_CODES: dict[str, int] = {}


def kind_code(kind: str) -> int:
    found = _KIND_CODES.get(kind)
    if found is None:
        found = _KIND_CODES[kind] = len(KIND_NAMES)
        KIND_NAMES.append(kind)
    return found


@dataclass(frozen=True)
class PhoneFacts:
    """Each row's number facts as `phone_facts` gives them: its country code (-1: none) and its
    type (a code into KIND_NAMES)."""

    country_codes: np.ndarray
    kinds: np.ndarray

    def take(self, rows: np.ndarray) -> PhoneFacts:
        return PhoneFacts(self.country_codes[rows], self.kinds[rows])


def facts_codes(number: str) -> tuple[int, int]:
    """`phone_facts` of a number that did not read as valid, as codes."""
    country_code, kind = phone_facts(number)
    return -1 if country_code is None else country_code, kind_code(kind)


# A cell id of four ASCII alphanumeric parts (`cell_area`'s form, whose parts may be any
# alphanumerics: other ids go `_cell`'s way), and its last part, which the area drops.
_ASCII_CELL = "^[A-Za-z0-9]+-[A-Za-z0-9]+-[A-Za-z0-9]+-[A-Za-z0-9]+$"
_CELL_PART = "-[A-Za-z0-9]+$"


def _cell_column(
    values: pa.Array, step: ColumnStep, key: PseudonymKey, regions: Regions, memo: Memo
) -> tuple[pa.Array, ...]:
    """`_cell` of each value: the area of an ASCII cell id by a regular expression over the
    column, any other id (a token, or alphanumerics of other scripts) once per distinct value."""
    areas = pc.replace_substring_regex(values, _CELL_PART, "")
    other = pc.invert(pc.fill_null(pc.match_substring_regex(values, _ASCII_CELL), True))
    if not pc.any(other).as_py():
        return (areas,)
    rest = _per_distinct(values.filter(other), step.types, lambda v: _cell(v, key, (), memo))
    return (pc.replace_with_mask(areas, other, rest[0]),)


def _has_column(
    values: pa.Array, step: ColumnStep, key: PseudonymKey, regions: Regions, memo: Memo
) -> tuple[pa.Array, ...]:
    return (pc.is_valid(values),)


def _text_column(
    values: pa.Array, step: ColumnStep, key: PseudonymKey, regions: Regions, memo: Memo
) -> tuple[pa.Array, ...]:
    """Each non-null text redacted with its own row's regions (texts seldom repeat)."""
    present = pc.is_valid(values)
    rows = pc.indices_nonzero(present).to_pylist()
    if not rows:
        return (values,)
    texts = values.filter(present).to_pylist()
    redacted = pa.array(
        [redact_text(text, regions[row]) for text, row in zip(texts, rows, strict=True)], type=step.types[0]
    )
    return (pc.replace_with_mask(values, present, redacted),)


def _short_text_column(
    values: pa.Array, step: ColumnStep, key: PseudonymKey, regions: Regions, memo: Memo
) -> tuple[pa.Array, ...]:
    """Each non-null short text redacted once per distinct (text, regions of its call), under
    the attribute texts' memo entries (`_short_text`); few distinct values: an OS, a version."""
    present = pc.is_valid(values)
    if not pc.any(present).as_py():
        return (values,)
    rows = pc.indices_nonzero(present).to_numpy()
    row_hint, hint_of = _hints(regions)
    texts = values.filter(present)  # few distinct (an OS, a version): the detector's way alone
    redacted_texts = _detected_per_distinct(texts, row_hint[rows], hint_of, memo)
    return (pc.replace_with_mask(values, present, redacted_texts.cast(step.types[0])),)


def _map_column(
    values: pa.Array, step: ColumnStep, key: PseudonymKey, regions: Regions, memo: Memo
) -> tuple[pa.Array, ...]:
    """Map boundaries (nulls, empty maps) as they are; each key and each value redacted once per
    distinct (text, regions of its call), under `redact_attributes`' memo entries; keys that
    redact to one text in a map named apart as it names them (`distinct_keys`)."""
    maps: pa.MapArray = values
    offsets = maps.offsets.to_numpy()
    first, last = int(offsets[0]), int(offsets[-1])
    keys = maps.keys.slice(first, last - first)  # a sliced map's children are not sliced
    items = maps.items.slice(first, last - first)
    if items.null_count:  # the row path fails on one too
        raise ValueError(f"column {step.columns[0]} holds a null map value")
    row_hint, hint_of = _hints(regions)
    entry_hint = np.repeat(row_hint, np.diff(offsets))
    names = _redacted_per_distinct(keys, entry_hint, hint_of, memo)
    spread = _redacted_per_distinct(items, entry_hint, hint_of, memo)
    names = _named_apart(keys, names, offsets - first)
    rebased = pa.array(offsets - first, pa.int32())  # a fresh buffer: from_arrays refuses a sliced one
    mask = maps.is_null() if maps.null_count else None
    return (pa.MapArray.from_arrays(rebased, names, spread, type=step.types[0], mask=mask),)


class RegionCodes(Sequence[tuple[str, ...]]):
    """Each row's regions as a code into the batch's distinct regions (what the column chain
    has at hand): the per-distinct steps read the codes, not a tuple per row. `facts`: per phone
    field, each row's number facts as the chain read them, which `_phone_columns` takes."""

    def __init__(
        self,
        codes: np.ndarray,
        distinct: Sequence[tuple[str, ...]],
        facts: Mapping[str, PhoneFacts] | None = None,
    ) -> None:
        self.codes, self.distinct = codes, list(distinct)
        self.facts = dict(facts or {})

    def take(self, rows: np.ndarray) -> RegionCodes:
        """These rows' regions and facts."""
        return RegionCodes(self.codes[rows], self.distinct, {f: v.take(rows) for f, v in self.facts.items()})

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, row: Any) -> Any:
        if isinstance(row, slice):
            return [self.distinct[c] for c in self.codes[row].tolist()]
        return self.distinct[self.codes[row]]


def _hints(regions: Regions) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Each row's regions as a code, and the regions of each code (the hints `redacted` takes)."""
    if isinstance(regions, RegionCodes):
        return regions.codes, regions.distinct
    hints: dict[tuple[str, ...], int] = {}
    row_hint = np.fromiter((hints.setdefault(tuple(r), len(hints)) for r in regions), np.int64, len(regions))
    return row_hint, list(hints)


# What `redact_value` answers without reading a text's regions: "[EMAIL]" for one short email
# address whole (its `_WHOLE_EMAIL`, all ASCII: RE2 reads it as Python does), the text itself
# for ASCII without a digit or "@" (the detector's gate).
_EMAIL_WHOLE = f"^(?:{_WHOLE_EMAIL.pattern})$"
_GATE = "[0-9@]"


def _redacted_per_distinct(
    texts: pa.Array, entry_hint: np.ndarray, hint_of: list[tuple[str, ...]], memo: Memo
) -> pa.Array:
    """`redacted(text, hint)` of each map entry's text: over the column where the answer is
    known without the detector (an email address whole, a text it would not look at), the
    others once per distinct pair."""
    email = pc.and_(
        pc.less_equal(pc.utf8_length(texts), MAX_REMEMBERED_VALUE),
        pc.match_substring_regex(texts, _EMAIL_WHOLE),
    )
    plain = pc.and_not(pc.string_is_ascii(texts), pc.match_substring_regex(texts, _GATE))
    known = pc.or_(email, plain)
    if not pc.any(pc.invert(known)).as_py():
        return pc.if_else(email, pa.scalar(Label.EMAIL.value), texts)
    if not pc.any(known).as_py():
        return _detected_per_distinct(texts, entry_hint, hint_of, memo)
    rest = pc.invert(known)
    detected = _detected_per_distinct(texts.filter(rest), entry_hint[np.asarray(rest)], hint_of, memo)
    return pc.replace_with_mask(pc.if_else(email, pa.scalar(Label.EMAIL.value), texts), rest, detected)


def _detected_per_distinct(
    texts: pa.Array, entry_hint: np.ndarray, hint_of: list[tuple[str, ...]], memo: Memo
) -> pa.Array:
    """`redacted(text, hint)` of each text, computed once per distinct pair."""
    encoded = texts.dictionary_encode()
    pairs = encoded.indices.to_numpy().astype(np.int64) * len(hint_of) + entry_hint
    distinct = pa.array(pairs).dictionary_encode()
    dictionary = encoded.dictionary.to_pylist()
    peek = memo.peek
    out = []
    for pair in distinct.dictionary.to_pylist():
        text_index, hint_index = divmod(pair, len(hint_of))
        text, hint = dictionary[text_index], hint_of[hint_index]
        value = peek((ENTRY, text, hint))  # only rememberable texts are ever remembered
        out.append(redacted(text, hint, memo) if value is None else value)
    return pa.array(out, pa.string()).take(distinct.indices)


def _named_apart(keys: pa.Array, names: pa.Array, offsets: np.ndarray) -> pa.Array:
    """`names`, except in maps where two keys redacted to one text: `distinct_keys` there. Only
    maps with a key redaction changed are looked at (nearly always none)."""
    changed = pc.not_equal(keys, names)
    if not pc.any(changed).as_py():
        return names
    entries = pc.indices_nonzero(changed).to_numpy()
    rows = np.unique(np.searchsorted(offsets, entries, side="right") - 1)
    fixed: list[Any] | None = None
    for row in rows.tolist():
        start, end = int(offsets[row]), int(offsets[row + 1])
        redacted_keys = names.slice(start, end - start).to_pylist()
        if len(set(redacted_keys)) == len(redacted_keys):
            continue
        if fixed is None:
            fixed = names.to_pylist()
        fixed[start:end] = distinct_keys(keys.slice(start, end - start).to_pylist(), redacted_keys)
    return names if fixed is None else pa.array(fixed, pa.string())


_BUILDS: dict[Transform, Build] = {
    _same: _same_column,
    _phone: _phone_columns,
    _cell: _cell_column,
    _ip: _per_value(_ip),
    _has: _has_column,
    _text: _text_column,
    _text_map: _map_column,
    _short_text: _short_text_column,
}
