"""Matching a subject in rejected raw records: JSON and Avro string forms, no partial ids."""

from __future__ import annotations

import pytest

from sinks.rejects import matches

CASES = [
    (b'{"account_id": "A1", "x": 1}', "A1", True),
    (b'{"account_id": "A10"}', "A1", False),
    (b'{"note": "call A1 later"}', "A1", False),
    (b"\x04A1\x02", "A1", True),  # Avro: zigzag length 2 -> 0x04, then the bytes
    (b"\x06A10", "A1", False),
    (b"\x80\x01" + b"x" * 64, "x" * 64, True),  # a length needing two varint bytes
    (b"not a record at all", "A1", False),
]


@pytest.mark.parametrize(("raw", "account", "expected"), CASES)
def test_matches(raw: bytes, account: str, expected: bool) -> None:
    assert matches(raw, account) is expected
