"""Identifiers every command can name: non-blank, bounded, printable.

An identifier field (schema annotation category in `ID_CATEGORIES`: event, account, org, carrier,
device ids and phone numbers) names a data subject or a record in the lake and on the command line
(`callpipe jobs erase --account ID`). One holding a control character (NUL, a newline, an escape)
or another unprintable one (a zero-width or direction mark) cannot be typed or passed as an
argument, so a subject stored under it could never be erased or exported. Such records are
rejected at the door with `Reason.BAD_ID`, like empty and oversized identifiers.

Pure: a record (a decoded dict) and its record name in, a reason or None out.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import schemas
from pipeline.reasons import Reason

MAX_ID_LEN = 128
MAX_PHONE_LEN = 64
# Annotation categories whose string fields are identifiers.
ID_CATEGORIES = frozenset({"id", "account_id", "org_id", "carrier", "device_id", "phone"})


def is_nameable(value: str, limit: int = MAX_ID_LEN) -> bool:
    """True if `value` can be an identifier: not blank, at most `limit` characters, and printable
    (no control, format or separator characters other than the ASCII space)."""
    return 0 < len(value) <= limit and value.isprintable() and not value.isspace()


@cache
def identifier_paths(record_name: str) -> tuple[tuple[tuple[str, ...], int], ...]:
    """(path as field names, length limit) of every identifier field of the record."""
    return tuple(
        (tuple(p.path.split(".")), MAX_PHONE_LEN if p.category == "phone" else MAX_ID_LEN)
        for p in schemas.pii_fields(record_name)
        if p.category in ID_CATEGORIES
    )


@cache
def _plan(record_name: str) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str, int], ...]]:
    """identifier_paths split into top-level (name, limit) and nested (record, name, limit)."""
    top = tuple((path[0], limit) for path, limit in identifier_paths(record_name) if len(path) == 1)
    nested = tuple(
        (path[0], path[1], limit) for path, limit in identifier_paths(record_name) if len(path) == 2
    )
    if len(top) + len(nested) != len(identifier_paths(record_name)):
        raise ValueError(f"schema {record_name}: identifiers nest at most one record deep")
    return top, nested


def _bad(value: Any, limit: int) -> bool:
    return type(value) is str and not (
        0 < len(value) <= limit and value.isprintable() and not value.isspace()
    )


def bad_identifier_field(record: Mapping[str, Any], record_name: str) -> str | None:
    """The (dotted) name of the identifier field `bad_identifier` rejects, for the dead letter's
    `callpipe.field` header; asked on the rejection path only, never per good event."""
    for path, limit in identifier_paths(record_name):
        node: Any = record
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        if _bad(node, limit):
            return ".".join(path)
    return None


def bad_identifier(record: Mapping[str, Any], record_name: str) -> Reason | None:
    """BAD_ID if a present identifier field of `record` is blank, too long or unprintable.

    Absent (None) fields and non-string values are left to the schema checks. Runs once per event
    on the hot path, hence the flat loops.
    """
    top, nested = _plan(record_name)
    get = record.get
    for name, limit in top:  # _bad, inlined
        v = get(name)
        if type(v) is str and not (0 < len(v) <= limit and v.isprintable() and not v.isspace()):
            return Reason.BAD_ID
    for parent, name, limit in nested:
        inner = get(parent)
        if type(inner) is dict and _bad(inner.get(name), limit):
            return Reason.BAD_ID
    return None
