"""The `callpipe.field` header: the schema field a rejection is about, never a value (pure)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline import codec
from pipeline.carrier.generate import generate_traffic
from pipeline.reasons import Reason
from pipeline.validate import validate_batch

START = 1_767_225_600_000
CALL: dict[str, Any] = generate_traffic(5, 1, START, 3_600_000, accounts=1).calls[0]
DEVICE = {"device_id": "d-1", "device_type": "phone", "os": "x 1", "app_version": "1.0"}


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"duration_s": "12"}, Reason.WRONG_TYPE, "duration_s"),
        ({"status": "dropped"}, Reason.UNKNOWN_ENUM, "status"),
        ({"account_id": None}, Reason.MISSING_FIELD, "account_id"),
        ({"device": {**DEVICE, "device_type": 7}}, Reason.WRONG_TYPE, "device.device_type"),
        ({"device": {**DEVICE, "device_id": ""}}, Reason.BAD_ID, "device.device_id"),
        ({"account_id": " "}, Reason.BAD_ID, "account_id"),
    ],
)
def test_json_decoding_names_the_field(change: dict[str, Any], reason: Reason, field: str) -> None:
    raw = orjson.dumps({**CALL, **change})
    for value in (raw, b"[" + raw + b"]", raw + b"\n" + raw):  # one event, an array, JSON lines
        (rej, *_) = codec.decode_value(value, "CallEvent").rejections
        assert (rej.reason, rej.field) == (reason, field)
        assert ("callpipe.field", field.encode()) in rej.headers("calls.raw")


def test_no_field_where_none_is_to_blame() -> None:
    (rej,) = codec.decode_value(b"{broken", "CallEvent").rejections
    assert rej.reason is Reason.MALFORMED and rej.field is None
    assert all(k != "callpipe.field" for k, _ in rej.headers("calls.raw"))


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"ended_at": CALL["started_at"] - 5000, "answered_at": None}, Reason.BAD_TIME, "ended_at"),
        ({"started_at": 5}, Reason.BAD_TIME, "started_at"),
        ({"duration_s": -1}, Reason.BAD_DURATION, "duration_s"),
    ],
)
def test_validation_names_the_field(change: dict[str, Any], reason: Reason, field: str) -> None:
    record = {**codec.decode_value(orjson.dumps(CALL), "CallEvent").records[0], **change}
    out = validate_batch([record], (), START + 86_400_000)
    (rej,) = out.rejections
    assert (rej.reason, rej.field) == (reason, field)


def test_a_duplicate_names_event_id() -> None:
    record = codec.decode_value(orjson.dumps(CALL), "CallEvent").records[0]
    (rej,) = validate_batch([record, dict(record)], (), START + 86_400_000).rejections
    assert (rej.reason, rej.field) == (Reason.DUPLICATE, "event_id")
