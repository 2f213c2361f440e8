"""Rows -> Arrow, pure: a batch of row dicts becomes a table of a zone's explicit schema, then one
sorted table per lake partition (day of started_at in UTC x hash bucket of the account).

Everything here works per batch: the conversion hands the whole list of dicts to Arrow's C++
converter at once (a struct array of the zone schema), buckets are computed once per distinct
account, and partitioning is one sort plus slicing. No files, clock or environment.

Columns come from the schema, never from the rows: keys a row carries beyond the schema are not
written (the schema is the allow-list of what lands), missing keys are nulls, and a null in a
non-nullable column is an error. Errors name the column, never a value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import clock
from schemas.zones import SUBJECT_COLUMN, analytics_schema, vault_schema
from sinks.layout import ANALYTICS, VAULT, bucket_of

# The column each zone is sorted by and carries a bloom filter on: the erase job finds a subject
# through it (min/max statistics on sorted files, bloom filters for the rest).
# After the account, rows are ordered by time then event id, so a file's order is deterministic.
SORT_COLUMNS = ("started_at", "event_id")


class RowsError(ValueError):
    """A batch that does not fit its zone schema; the message names the column, never a value."""


def zone_schema(zone: str) -> pa.Schema:
    if zone == VAULT:
        return vault_schema()
    if zone == ANALYTICS:
        return analytics_schema()
    raise ValueError(f"unknown zone {zone!r}")


def to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """The rows as a table of exactly `schema` (timestamps given as int epoch milliseconds)."""
    if not rows:
        return schema.empty_table()
    try:
        structs = pa.array(rows, type=pa.struct(list(schema)))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        # Arrow's message quotes the offending value, which may be personal data.
        raise RowsError(f"rows do not fit the schema ({type(exc).__name__})") from None
    table = pa.Table.from_struct_array(structs)
    _check_required(table, schema)
    return table


def _check_required(table: pa.Table, schema: pa.Schema) -> None:
    for field in schema:
        column = table.column(field.name)
        if not field.nullable and column.null_count:
            raise RowsError(f"column {field.name} is required but has nulls")
        if pa.types.is_struct(field.type):
            for chunk in column.chunks:
                for child_field, child in zip(field.type, chunk.flatten(), strict=True):
                    if not child_field.nullable and child.null_count > chunk.null_count:
                        raise RowsError(f"column {field.name}.{child_field.name} is required but has nulls")


def vault_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    return to_table(rows, vault_schema())


def analytics_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    return to_table(rows, analytics_schema())


def buckets_of(tokens: Sequence[str] | pa.Array | pa.ChunkedArray, buckets: int) -> pa.Array:
    """`sinks.layout.bucket_of` for a column of account tokens, computed once per distinct token."""
    column = tokens if isinstance(tokens, pa.ChunkedArray | pa.Array) else pa.array(tokens, pa.string())
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise RowsError("account tokens must not be null")
    encoded = column.dictionary_encode()
    per_token = _hex_buckets(encoded.dictionary, buckets)
    if per_token is None:  # not all hex of 8+ ASCII characters: bucket_of says what they are
        per_token = pa.array([bucket_of(t, buckets) for t in encoded.dictionary.to_pylist()], pa.int32())
    result: pa.Array = per_token.take(encoded.indices)
    return result


_HEX_VALUE = np.full(256, -1, np.int64)
_HEX_VALUE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX_VALUE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX_VALUE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def _hex_buckets(tokens: pa.Array, buckets: int) -> pa.Array | None:
    """`bucket_of` of each token, per column, when every token ends in 8 ASCII hex digits (an
    account token always does); None otherwise."""
    tails = pc.utf8_slice_codeunits(tokens, -8)
    n = len(tails)
    if n == 0 or not pc.all(pc.equal(pc.binary_length(tails), 8)).as_py():
        return None
    _, offsets, data = tails.buffers()
    start = np.frombuffer(offsets, np.int32, 1, tails.offset * 4)[0]
    digits = _HEX_VALUE[np.frombuffer(data, np.uint8, 8 * n, int(start)).reshape(n, 8)]
    if (digits < 0).any():
        return None
    value = digits @ (16 ** np.arange(7, -1, -1, dtype=np.int64))
    return pa.array((value % buckets).astype(np.int32), pa.int32())


@dataclass(frozen=True)
class Part:
    """The rows of one lake partition, sorted by account, started_at, event_id."""

    dt: str  # YYYY-MM-DD (UTC day of started_at)
    bucket: int
    table: pa.Table


def partition(table: pa.Table, zone: str, buckets: pa.Array) -> list[Part]:
    """Split a zone table into its (dt, bucket) partitions, each sorted by account then time.

    `buckets` is parallel to the rows (see `buckets_of`); giving the vault and analytics rows of
    an event the same account token puts them in the same bucket.
    """
    if len(buckets) != table.num_rows:
        raise RowsError("one bucket per row is required")
    if table.num_rows == 0:
        return []
    started = table.column("started_at")
    if started.null_count:
        raise RowsError("column started_at is required to place a row in the lake")
    days = pc.cast(pc.cast(pc.cast(started, pa.date32()), pa.int32()), pa.int64())  # UTC day, floored
    nbuckets = int(pc.max(buckets).as_py()) + 1
    key = pc.add(pc.multiply(days, nbuckets), pc.cast(buckets, pa.int64()))
    keyed = table.append_column("__part", key)
    order = [("__part", "ascending"), (SUBJECT_COLUMN[zone], "ascending")]
    order += [(name, "ascending") for name in SORT_COLUMNS]
    ordered = keyed.sort_by(order)
    counts = pc.value_counts(ordered.column("__part"))  # in order of appearance: ascending
    parts: list[Part] = []
    start = 0
    for entry in counts.to_pylist():
        value, count = int(entry["values"]), int(entry["counts"])
        day, bucket = divmod(value, nbuckets)
        parts.append(
            Part(clock.day_of_epoch_day(day), bucket, ordered.slice(start, count).drop_columns(["__part"]))
        )
        start += count
    return parts
