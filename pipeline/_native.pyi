"""Types of the extension module built from pipeline/native/ (src/lib.rs says what it does)."""

from collections.abc import Callable
from typing import Any

class Decoder:
    """An Avro record schema (JSON, as `schemas.parsed` gives it less fastavro's private keys)
    compiled for decoding; ValueError for a schema it cannot mirror fastavro on. `identifiers`:
    (path of field names, length limit) of string fields whose values must be 1 to limit
    printable ASCII characters, not all spaces, else the record is declined."""

    def __init__(self, schema_json: str, identifiers: list[tuple[list[str], int]] = ...) -> None: ...
    def decode(self, value: bytes, start: int) -> dict[str, Any] | None:
        """The record in value[start:], as fastavro.schemaless_reader gives it, or None unless
        those bytes are exactly one record (or are one only fastavro takes) with nameable
        identifiers."""
    def decode_array(self, value: bytes, start: int) -> list[dict[str, Any]] | None:
        """`decode` for an Avro array of the record (a batch message's body): fastavro's list of
        records, or None."""

# A column of `Rows.take`: (length, null count, validity bitmap or None, buffers after the
# validity as pyarrow.Array.from_buffers takes them, children columns).
_Taken = tuple[int, int, bytes | None, list[bytes], list[Any]]
# A column of `Rows.layout`: (name, "string" | "int" | "long" | "struct" | "map", nullable, children).
_Layout = tuple[str, str, bool, list[Any]]

class Rows:
    """Records of a `Decoder`'s schema appended into Arrow column buffers (src/rows.rs), no Python
    object per record. ValueError for a schema with a type that has no column there (boolean,
    floats, bytes, arrays, fixed, unions other than [null, T], recursion), or when `key_field` is
    not a top-level long."""

    def __init__(self, decoder: Decoder, key_field: str) -> None: ...
    def append(self, value: bytes, start: int) -> int | None:
        """Append the record in value[start:] and give its key field; None, the columns as they
        were, unless `Decoder.decode` would give a record for those bytes."""
    def append_array(self, value: bytes, start: int) -> list[int] | None:
        """Append every record of an Avro array of the record in value[start:] and give their key
        fields; None, nothing appended, unless `Decoder.decode` would give each of them."""
    def frame(self, single_ids: list[int], batch_ids: list[int], max_event_bytes: int) -> None:
        """What `append_message` takes: Confluent framing with one of these schema ids."""
    def append_message(self, value: bytes | None) -> int | list[int] | None:
        """`append(value, 5)` for a record framed with a single id, `append_array(value, 5)` for
        an array framed with a batch id (an empty one: None), within the size limit; else None."""
    def __len__(self) -> int: ...
    def take(self, k: int) -> list[_Taken]:
        """The first k rows (ValueError past len), removed, one column each in schema order."""
    def clear(self) -> None: ...
    def layout(self) -> list[_Layout]: ...

class NumberReader:
    def __init__(
        self,
        spec: Callable[[str, int], tuple[object, ...] | None],
        regions_of: dict[int, list[str]],
        supported: set[str],
        fallback: Any,
    ) -> None: ...
    def lookup(self, text: str, region: str | None) -> Any: ...
    def lookup_many(self, texts: list[str], region: str | None) -> list[Any]: ...

def tokens(secret: bytes, prefix: bytes, offsets: Any, data: Any, count: int, width: int) -> bytes:
    """`count` keyed tokens of `width` hex characters, back to back (src/tokens.rs): value i is
    data[offsets[i]:offsets[i + 1]] (offsets: little-endian int32, an Arrow string array's)."""
