"""The Avro contracts: every field annotated and documented, ids consistent, schemas evolve safely."""

from __future__ import annotations

import copy
import io
from typing import Any

import fastavro
import pytest

import schemas
from pipeline import codec
from pipeline.carrier import generate

START = 1_767_225_600_000
NAMES = sorted(schemas.FILES)
CLASSES = {"direct", "quasi", "sensitive", "none"}


def _all_fields(node: Any, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    for f in node["fields"]:
        out.append((prefix + f["name"], f))
        types = f["type"] if isinstance(f["type"], list) else [f["type"]]
        for t in types:
            if isinstance(t, dict) and t.get("type") == "record":
                out.extend(_all_fields(t, prefix + f["name"] + "."))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_field_has_doc_and_pii_annotation(name: str) -> None:
    raw = schemas.raw(name)
    assert raw["doc"]
    for path, f in _all_fields(raw):
        assert f.get("doc"), f"{name}.{path} has no doc"
        assert f["pii"]["class"] in CLASSES, f"{name}.{path}"
        assert f["pii"]["category"], f"{name}.{path}"
    assert [p.path for p in schemas.pii_fields(name)] == [p for p, _ in _all_fields(raw)]


@pytest.mark.parametrize("name", NAMES)
def test_parsed_schema_carries_timestamps_as_longs(name: str) -> None:
    assert "logicalType" not in repr(schemas.parsed(name))
    assert "logicalType" not in repr(schemas.parsed_batch(name))
    assert codec.time_fields(name)


def test_schema_ids_single_and_batch_are_disjoint_and_cover_every_record() -> None:
    assert set(schemas.SCHEMA_IDS).isdisjoint(schemas.BATCH_SCHEMA_IDS)
    assert {n for n, _ in schemas.SCHEMA_IDS.values()} == set(NAMES)
    assert {n for n, _ in schemas.BATCH_SCHEMA_IDS.values()} == set(NAMES)
    assert all(schemas.SCHEMA_IDS[schemas.ID_OF[n]][0] == n for n in NAMES)
    assert all(schemas.BATCH_SCHEMA_IDS[schemas.BATCH_ID_OF[n]][0] == n for n in NAMES)


def _v2(name: str) -> dict[str, Any]:
    """The next version of a schema: one optional field added at the end, annotated."""
    v2 = copy.deepcopy(schemas.raw(name))
    v2["fields"].append(
        {
            "name": "network",
            "type": ["null", "string"],
            "default": None,
            "doc": "Radio access technology (added in v2).",
            "pii": {"class": "none", "category": "network"},
        }
    )
    return v2


def _samples(name: str) -> list[dict[str, Any]]:
    traffic = generate.generate_traffic(2, 50, START, accounts=200)
    return {"CallEvent": traffic.calls, "ConsentEvent": traffic.consents, "PrivacyRequest": traffic.requests}[
        name
    ]


@pytest.mark.parametrize("name", NAMES)
def test_v1_data_is_read_by_v2_with_the_new_field_defaulted(name: str) -> None:
    records = _samples(name)
    assert records
    v1 = schemas.parsed(name)
    v2 = fastavro.parse_schema(schemas._strip_logical(_v2(name)))
    for rec in records:
        bio = io.BytesIO()
        fastavro.schemaless_writer(bio, v1, rec)
        bio.seek(0)
        assert fastavro.schemaless_reader(bio, v1, v2) == {**rec, "network": None}


@pytest.mark.parametrize("name", NAMES)
def test_v2_container_is_read_by_the_v1_codec(name: str) -> None:
    """A carrier upgraded first: its v2 files (with timestamp logical types) still decode."""
    records = _samples(name)
    v2 = fastavro.parse_schema(_v2(name))
    newer = [{**r, "network": "5G"} for r in records]
    bio = io.BytesIO()
    fastavro.writer(bio, v2, newer)
    out = codec.decode_value(bio.getvalue(), name)
    assert out.rejections == []
    assert out.records == records  # the extra field is dropped, timestamps stay epoch ms


def test_v2_json_is_read_by_the_v1_codec() -> None:
    call = _samples("CallEvent")[0]
    out = codec.decode_value(codec.to_json({**call, "network": "5G"}, "CallEvent"), "CallEvent")
    assert out.records == [call]
