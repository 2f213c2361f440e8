"""Explicit Arrow schemas of the lake's zones, derived from the Avro schemas in schemas/.

vault      the CallEvent as validated and consent-checked, one column per field (device a struct,
           attributes a map), timestamps as timestamp[ms, UTC].
analytics  the pseudonymized CallEvent: the columns each field turns into follow from its PII
           annotation (ANALYTICS_COLUMNS below), so a new annotated field cannot slip through raw.

Both carry lineage columns (where the row came from) so that exactly-once recovery survives
compaction and erasure, which rewrite files.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pyarrow as pa

import schemas

VAULT = "vault"
ANALYTICS = "analytics"
# The column naming the data subject in each zone: erase, export, compaction's sort order, the
# Bloom filters and the partition bucket all go by it.
SUBJECT_COLUMN = {VAULT: "account_id", ANALYTICS: "account_token"}

TS = pa.timestamp("ms", tz="UTC")

# Where each row came from: Kafka partition and offset (or, for `callpipe ingest`, -1 and the
# event's position in its file), and the batch position inside a multi-event message.
LINEAGE = [
    pa.field("source_partition", pa.int32(), nullable=False),
    pa.field("source_offset", pa.int64(), nullable=False),
    pa.field("source_index", pa.int32(), nullable=False),
]


def _arrow_type(avro_type: Any) -> tuple[pa.DataType, bool]:
    """(Arrow type, nullable) for an Avro field type."""
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        if len(branches) != 1:
            raise ValueError("only [null, T] unions are supported in the lake")
        return _arrow_type(branches[0])[0], True
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        kind = avro_type["type"]
        if logical == "timestamp-millis":
            return TS, False
        if kind == "enum":
            return pa.string(), False
        if kind == "map":
            return pa.map_(pa.string(), _arrow_type(avro_type["values"])[0]), False
        if kind == "record":
            return pa.struct([_field(f) for f in avro_type["fields"]]), False
        return _arrow_type(kind)
    return {
        "string": pa.string(),
        "int": pa.int32(),
        "long": pa.int64(),
        "boolean": pa.bool_(),
        "double": pa.float64(),
        "float": pa.float32(),
        "bytes": pa.binary(),
    }[avro_type], False


def _field(avro_field: dict[str, Any]) -> pa.Field:
    arrow_type, nullable = _arrow_type(avro_field["type"])
    return pa.field(avro_field["name"], arrow_type, nullable=nullable)


@cache
def call_event_schema() -> pa.Schema:
    """The CallEvent's own columns: the vault schema less lineage (what a decoded batch is before
    its rows are placed, `pipeline.native_rows`)."""
    return pa.schema([_field(f) for f in schemas.raw("CallEvent")["fields"]])


@cache
def vault_schema() -> pa.Schema:
    return pa.schema([*call_event_schema(), *LINEAGE])


# What each annotated CallEvent field becomes in the analytics zone, by its PII category and
# class. A field whose (class, category) has no rule here fails `analytics_schema()` loudly.
# value: list of (column name template, Arrow type); "{name}" is the field's leaf name.
ANALYTICS_COLUMNS: dict[tuple[str, str], list[tuple[str, pa.DataType]]] = {
    ("none", "id"): [("{name}", pa.string())],
    ("direct", "account_id"): [("account_token", pa.string())],
    ("quasi", "org_id"): [("org_token", pa.string())],
    ("none", "carrier"): [("{name}", pa.string())],
    ("none", "kind"): [("{name}", pa.string())],
    ("none", "direction"): [("{name}", pa.string())],
    ("direct", "phone"): [
        ("{name}_token", pa.string()),
        ("{name}_country", pa.int16()),  # country calling code, e.g. 44
        ("{name}_type", pa.string()),  # mobile, fixed_line, toll_free, voip, ... or unknown
    ],
    ("quasi", "time"): [("{name}", TS)],
    ("quasi", "duration"): [("{name}", pa.int32())],
    ("none", "status"): [("{name}", pa.string())],
    ("quasi", "location"): [("cell_area", pa.string())],  # MCC-MNC-LAC: the cell id is dropped
    ("direct", "ip"): [("{name}_prefix", pa.string())],  # /24 for IPv4, /48 for IPv6
    ("quasi", "device"): [("device_{name}", pa.string())],  # os, app_version (redacted like attributes)
    ("direct", "device_id"): [("device_token", pa.string())],
    ("none", "device"): [("{name}", pa.string())],
    ("sensitive", "recording"): [("has_recording", pa.bool_())],  # never the URI
    ("sensitive", "free_text"): [("{name}", pa.string())],  # every detected span replaced by its label
    ("quasi", "free_text"): [("{name}", pa.map_(pa.string(), pa.string()))],  # redacted values
}


@cache
def analytics_schema() -> pa.Schema:
    out: list[pa.Field] = []
    annotated = schemas.pii_fields("CallEvent")
    parents = {a.path.rsplit(".", 1)[0] for a in annotated if "." in a.path}
    for ann in annotated:
        if ann.path in parents:
            continue  # a nested record: its leaves carry their own rules
        rule = ANALYTICS_COLUMNS.get((ann.klass, ann.category))
        if rule is None:
            raise ValueError(f"no analytics rule for field {ann.path} ({ann.klass}, {ann.category})")
        leaf = ann.path.rsplit(".", 1)[-1]
        for template, arrow_type in rule:
            out.append(pa.field(template.format(name=leaf), arrow_type, nullable=True))
    out.append(pa.field("key_version", pa.string(), nullable=False))
    return pa.schema([*out, *LINEAGE])
