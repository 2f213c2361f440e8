"""CallEvent messages decoded straight into Arrow columns: the worker's hot path without a dict
per event.

`RowColumns` appends each message's records into the column buffers of the native `Rows`
(pipeline/native/src/rows.rs) and hands them out as tables of the CallEvent's own columns
(`schemas.zones.call_event_schema`: the vault schema less lineage). It takes a message exactly
when `codec.plain_record` would give its record (one record) or `codec.decode_value` would
admit every event of it without a rejection (a batch): the same framing (`codec.plain_framing`),
the same decoder, identifiers judged alike. Anything else, `append` and `append_batch` answer
None and leave the columns as they were, and the caller goes the dict path for that message,
which reads it or names its rejection.

`records_of` turns such a table back into the decoder's dicts, for the rare rows that must go
the row path after all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from pipeline import codec
from schemas.zones import call_event_schema

try:
    from pipeline import _native
except ImportError:  # built from pipeline/native/ where cargo is found; else the dict path alone
    _native = None  # type: ignore[assignment]

__all__ = ["KEY_FIELD", "RowColumns", "records_of", "row_columns"]

# The field each append answers with: a CallEvent's start time places its row in the lake.
KEY_FIELD = "started_at"

# The Arrow schema of each record's columns; a record without one has no columns here.
_SCHEMAS = {"CallEvent": call_event_schema}

# A column of `Rows.take`: (length, null count, validity bitmap or None, buffers, children).
_Taken = tuple[int, int, bytes | None, list[bytes], list[Any]]


class RowColumns:
    """Records of one schema appended into Arrow columns; see the module's comment."""

    def __init__(self, record_name: str, rows: _native.Rows, schema: pa.Schema) -> None:
        self.record_name = record_name
        self.schema = schema
        self._rows = rows

    def append_message(self, value: bytes | None, headers: Any) -> int | list[int] | None:
        """`append` or `append_batch`, whichever the message's framing names, in one native call
        (the framing judged there, `codec.plain_framing`'s rule, its headers here): the started_at
        of what was appended, or None, nothing appended."""
        if headers and not codec.plain_headers(headers):
            return None
        return self._rows.append_message(value)

    def append(self, value: bytes | None, headers: Any) -> int | None:
        """Append the record of a one-record message and give its started_at; None, nothing
        appended, unless `codec.plain_record` would give that record."""
        if not codec.plain_framing(value, headers, self.record_name):
            return None
        return self._rows.append(value, 5)

    def append_batch(self, value: bytes | None, headers: Any) -> list[int] | None:
        """Append the records of a batch message (an Avro array of the record) and give their
        started_at; None, nothing appended, unless every record is one `decode_value` admits.
        An empty batch is None too: `decode_value` rejects it."""
        if not codec.plain_framing(value, headers, self.record_name, batch=True):
            return None
        return self._rows.append_array(value, 5) or None

    def take(self, k: int) -> pa.Table:
        """The first k rows as a table of `schema`, removed; the rest stay, in order."""
        columns = self._rows.take(k)
        arrays = [_array(field.type, column) for field, column in zip(self.schema, columns, strict=True)]
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        self._rows.clear()


def row_columns(record_name: str = "CallEvent") -> RowColumns | None:
    """Columns for `record_name`'s messages; None where there are none: the package was built
    without the native module, the record has no Arrow schema here, or its schema has a type the
    columns do not hold (then the caller keeps the dict path)."""
    schema_of = _SCHEMAS.get(record_name)
    decoder = codec.native_decoder(record_name)
    if _native is None or schema_of is None or decoder is None:
        return None
    try:
        rows = _native.Rows(decoder, KEY_FIELD)
    except ValueError:
        return None
    rows.frame(*codec.plain_ids(record_name), codec.DEFAULT_LIMITS.max_event_bytes)
    schema = schema_of()
    if not _mirrors(rows.layout(), list(schema)):
        return None
    return RowColumns(record_name, rows, schema)


def _mirrors(layout: Sequence[Any], fields: Sequence[pa.Field]) -> bool:
    """Whether the native columns (`Rows.layout`) are the fields' names, kinds and nullability."""
    if len(layout) != len(fields):
        return False
    for (name, kind, nullable, children), field in zip(layout, fields, strict=True):
        t = field.type
        if name != field.name or nullable != field.nullable:
            return False
        if kind == "struct":
            fits = pa.types.is_struct(t) and _mirrors(children, list(t))
        elif kind == "map":
            fits = pa.types.is_map(t) and _mirrors(children, [t.key_field, t.item_field.with_nullable(False)])
        else:
            fits = t in _FLAT_TYPES[kind]
        if not fits:
            return False
    return True


_FLAT_TYPES: dict[str, tuple[pa.DataType, ...]] = {
    "string": (pa.string(),),
    "int": (pa.int32(),),
    "long": (pa.int64(), pa.timestamp("ms", tz="UTC")),
}


def _array(t: pa.DataType, column: _Taken) -> pa.Array:
    """One column of `Rows.take` as an Arrow array of type `t`, over the bytes it gave."""
    length, nulls, validity, buffers, children = column
    bitmap = None if validity is None else pa.py_buffer(validity)
    data = [pa.py_buffer(b) for b in buffers]
    if pa.types.is_struct(t):
        parts = [_array(f.type, c) for f, c in zip(t, children, strict=True)]
        return pa.Array.from_buffers(t, length, [bitmap], nulls, children=parts)
    if pa.types.is_map(t):
        keys, values = children
        entries = pa.Array.from_buffers(
            pa.struct([t.key_field, t.item_field]),
            keys[0],
            [None],
            0,
            children=[_array(t.key_type, keys), _array(t.item_type, values)],
        )
        return pa.Array.from_buffers(t, length, [bitmap, *data], nulls, children=[entries])
    return pa.Array.from_buffers(t, length, [bitmap, *data], nulls)


def records_of(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of a `RowColumns.take` table as the decoder's dicts: timestamps as int epoch
    milliseconds, a struct as a dict, a map as a dict, keys in the schema's order."""
    names = table.schema.names
    columns = [_values(table.column(i), field.type) for i, field in enumerate(table.schema)]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _values(column: pa.ChunkedArray, t: pa.DataType) -> list[Any]:
    plain = _plain_type(t)
    values = (column.cast(plain) if plain != t else column).to_pylist()
    if _has_map(t):
        return [_dicts(v, t) for v in values]
    return values


def _plain_type(t: pa.DataType) -> pa.DataType:
    """`t` with timestamps as int64: the decoder gives epoch milliseconds."""
    if pa.types.is_timestamp(t):
        return pa.int64()
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_plain_type(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(t.key_field, t.item_field.with_type(_plain_type(t.item_type)))
    return t


def _has_map(t: pa.DataType) -> bool:
    if pa.types.is_map(t):
        return True
    return pa.types.is_struct(t) and any(_has_map(f.type) for f in t)


def _dicts(value: Any, t: pa.DataType) -> Any:
    """A value of `to_pylist` with its maps (lists of pairs there) as dicts."""
    if value is None:
        return None
    if pa.types.is_map(t):
        return {k: _dicts(v, t.item_type) for k, v in value}
    if pa.types.is_struct(t):
        return {f.name: _dicts(value[f.name], f.type) for f in t}
    return value
