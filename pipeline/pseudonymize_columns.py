"""The analytics zone of a batch built per column from its vault-zone table, each transform
computed once per distinct value of the batch.

The invariant, tested on the bench's traffic and on hand-made edge cases:

    analytics_columns(vault_table(rows), regions, key, memo)
        == analytics_table([row_pseudonymizer()(row, key, regions[i], memo) for i, row in ...])

The columns follow pipeline.pseudonymize's plan (one transform per (PII class, category) of the
schema's annotations): each step of `_compiled()` is matched to its column form here by the
transform it names, and a transform without one fails `column_plan()` at start-up, so a new
annotated field can never pass through raw. The values come from the same functions
(`token_of`, `_phone`, `cell_area`, `ip_prefix`, `redact_text`, `redacted`) under the same
memo entries as the generated row code, so what one path remembered the other finds, and
`Memo.forget()` on erasure drops both.

Per distinct value: `dictionary_encode`, a Python loop over the dictionary, `take` back to the
rows (a null index gives a null: a transform is never called on None). Transcripts, rare and
nearly always unique, are redacted row by row with each row's regions, the non-null ones only;
attribute keys and values once per distinct (text, regions of the call). Errors name columns, never
values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.attributes import ENTRY, distinct_keys, redacted
from pipeline.detect import redact_text
from pipeline.keys import PseudonymKey
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
            build = _per_value(transform)
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


def _per_value(transform: Transform) -> Build:
    """A row transform that reads no regions (a token, a cell area, an IP prefix), run once per
    distinct value: it keeps its own memo entries, the ones the row form reads."""

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
    secret = key.secret

    def compute(number: str) -> tuple[Any, ...]:
        entry = ("phone", secret, number)  # the generated row code's entry: _phone's answer whole
        found: tuple[Any, ...] | None = memo.peek(entry)
        if found is None:
            found = memo.put(entry, _phone(number, key, (), memo))  # _phone reads no regions
        return found

    return _per_distinct(values, step.types, compute)


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
    texts = values.filter(present)
    redacted_texts = _redacted_per_distinct(texts, row_hint[rows], hint_of, memo)
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
    has at hand): the per-distinct steps read the codes, not a tuple per row."""

    def __init__(self, codes: np.ndarray, distinct: Sequence[tuple[str, ...]]) -> None:
        self.codes, self.distinct = codes, list(distinct)

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


def _redacted_per_distinct(
    texts: pa.Array, entry_hint: np.ndarray, hint_of: list[tuple[str, ...]], memo: Memo
) -> pa.Array:
    """`redacted(text, hint)` of each map entry's text, computed once per distinct pair."""
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
    _cell: _per_value(_cell),
    _ip: _per_value(_ip),
    _has: _has_column,
    _text: _text_column,
    _text_map: _map_column,
    _short_text: _short_text_column,
}
