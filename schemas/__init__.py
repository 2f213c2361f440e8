"""The Avro contracts: CallEvent, ConsentEvent, PrivacyRequest.

The .avsc files beside this module are the one source of truth for field names, types and
PII annotations. Everything else (codec, tagging, pseudonymization, Arrow schemas) reads them
from here; no module keeps a second list of fields.

Timestamps are carried inside callpipe as epoch milliseconds (int). `parsed(name)` therefore
returns the schema with timestamp logical types removed: the binary encoding is the same long,
and the hot path skips datetime conversion.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

HERE = Path(__file__).resolve().parent

# Record name -> .avsc file (the current version).
FILES = {
    "CallEvent": "call_event.avsc",
    "ConsentEvent": "consent_event.avsc",
    "PrivacyRequest": "privacy_request.avsc",
}
# Earlier versions still accepted on the wire: (record name, version) -> .avsc file. A message
# written with one of them is read with it and resolved to the current version (Avro schema
# resolution: new fields take their defaults), so old producers keep working.
OLD_FILES = {("PrivacyRequest", 1): "privacy_request.v1.avsc"}
CURRENT = {"CallEvent": 1, "ConsentEvent": 1, "PrivacyRequest": 2}

# Schema ids for the Confluent wire format (magic byte 0, 4-byte id, body). callpipe runs
# without a schema registry, so the ids it accepts are fixed here: (record name, version).
SCHEMA_IDS: dict[int, tuple[str, int]] = {
    1: ("CallEvent", 1),
    2: ("ConsentEvent", 1),
    3: ("PrivacyRequest", 1),
    4: ("PrivacyRequest", 2),  # adds rectify and its corrections
}
ID_OF: dict[str, int] = {name: sid for sid, (name, v) in SCHEMA_IDS.items() if v == CURRENT[name]}

# Schema ids of batch messages: one Kafka message whose body is an Avro array of records
# (high-volume carriers batch). Kept apart from SCHEMA_IDS so ID_OF stays one id per record.
BATCH_SCHEMA_IDS: dict[int, tuple[str, int]] = {
    11: ("CallEvent", 1),
    12: ("ConsentEvent", 1),
    13: ("PrivacyRequest", 1),
    14: ("PrivacyRequest", 2),
}
BATCH_ID_OF: dict[str, int] = {name: sid for sid, (name, v) in BATCH_SCHEMA_IDS.items() if v == CURRENT[name]}


@dataclass(frozen=True)
class Pii:
    """A field's PII annotation: class is direct | quasi | sensitive | none."""

    path: str  # dotted path, e.g. "device.device_id"
    klass: str
    category: str


@cache
def raw(name: str) -> dict[str, Any]:
    """The schema as written in its .avsc file (annotations included)."""
    result: dict[str, Any] = json.loads((HERE / FILES[name]).read_text())
    return result


def _strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strip_logical(v) for k, v in node.items() if k != "pii"}
        if out.get("logicalType") in ("timestamp-millis", "timestamp-micros"):
            del out["logicalType"]
        return out
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


@cache
def parsed(name: str) -> Any:
    """fastavro-parsed schema with timestamps as plain longs (epoch milliseconds)."""
    return fastavro.parse_schema(_strip_logical(copy.deepcopy(raw(name))))


@cache
def raw_version(name: str, version: int) -> dict[str, Any]:
    """The schema of one version as written (the current one, or an earlier one still accepted)."""
    if version == CURRENT[name]:
        return raw(name)
    result: dict[str, Any] = json.loads((HERE / OLD_FILES[(name, version)]).read_text())
    return result


@cache
def parsed_writer(name: str, version: int, *, batch: bool = False) -> Any:
    """fastavro-parsed writer schema of one version (timestamps as longs), for schema resolution."""
    node: Any = _strip_logical(copy.deepcopy(raw_version(name, version)))
    return fastavro.parse_schema({"type": "array", "items": node} if batch else node)


@cache
def parsed_batch(name: str) -> Any:
    """fastavro-parsed array<name> schema (the body of a batch message), timestamps as longs."""
    return fastavro.parse_schema({"type": "array", "items": _strip_logical(copy.deepcopy(raw(name)))})


def _record_of(field_type: Any) -> dict[str, Any] | None:
    if isinstance(field_type, dict) and field_type.get("type") == "record":
        return field_type
    if isinstance(field_type, list):
        for branch in field_type:
            found = _record_of(branch)
            if found is not None:
                return found
    return None


@cache
def pii_fields(name: str) -> tuple[Pii, ...]:
    """Every field's annotation, nested records included, in schema order."""
    out: list[Pii] = []

    def walk(record: dict[str, Any], prefix: str) -> None:
        for field in record["fields"]:
            path = prefix + field["name"]
            ann = field.get("pii")
            if ann is None:
                raise ValueError(f"schema {name}: field {path} has no pii annotation")
            out.append(Pii(path, ann["class"], ann["category"]))
            nested = _record_of(field["type"])
            if nested is not None:
                walk(nested, path + ".")

    walk(raw(name), "")
    return tuple(out)


def fields_in(name: str, *, category: str | None = None, klass: str | None = None) -> tuple[str, ...]:
    """Paths of the fields with the given annotation category and/or class."""
    return tuple(
        p.path
        for p in pii_fields(name)
        if (category is None or p.category == category) and (klass is None or p.klass == klass)
    )


def required_fields(name: str) -> tuple[str, ...]:
    """Top-level fields without a default (the ones a valid record must carry)."""
    return tuple(f["name"] for f in raw(name)["fields"] if "default" not in f)
