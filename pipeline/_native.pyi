"""Types of the extension module built from pipeline/native/ (src/lib.rs says what it does)."""

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
