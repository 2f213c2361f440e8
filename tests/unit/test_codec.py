"""The codec: every format round-trips, JSON and Avro agree, bad input becomes typed rejections."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from pipeline import codec, codec_avro
from pipeline.carrier import generate
from pipeline.codec import FORMAT_HEADER, Decoded, Limits, Lineage, decode_batch, decode_value, encode
from pipeline.identifiers import identifier_paths
from pipeline.reasons import Reason, Stage

START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TRAFFIC = generate.generate_traffic(11, 300, START, accounts=60)
RECORDS: dict[str, list[dict[str, Any]]] = {
    "CallEvent": TRAFFIC.calls,
    "ConsentEvent": TRAFFIC.consents,
    "PrivacyRequest": TRAFFIC.requests
    or [{"request_id": "r1", "account_id": "a1", "kind": "erase", "at": START}],
}


@dataclass(frozen=True)
class Msg:
    value: bytes | None
    partition: int = 0
    offset: int = 0
    headers: Any = None


def only_records(out: Decoded) -> list[dict[str, Any]]:
    assert out.rejections == [], [r.reason for r in out.rejections]
    return out.records


@pytest.mark.parametrize("name", sorted(RECORDS))
@pytest.mark.parametrize("fmt", ["avro", "json"])
@pytest.mark.parametrize("batch_size", [1, 7, 500])
def test_encode_decode_round_trip(name: str, fmt: str, batch_size: int) -> None:
    records = RECORDS[name]
    values = encode(records, name, fmt, batch_size)
    assert len(values) == -(-len(records) // batch_size)
    out = decode_batch([Msg(v, 3, i) for i, v in enumerate(values)], name)
    assert only_records(out) == records
    assert out.lineage[0] == Lineage(3, 0, 0)
    if batch_size > 1 and len(records) > 1:
        assert out.lineage[1] == Lineage(3, 0, 1)


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_format_header_is_honoured(fmt: str) -> None:
    calls = RECORDS["CallEvent"][:20]
    for size in (1, 5):
        header = codec.format_header(fmt, size)
        values = encode(calls, "CallEvent", fmt, size)
        out = decode_batch([Msg(v, headers=[header]) for v in values], "CallEvent")
        assert only_records(out) == calls


def test_json_and_avro_give_identical_dicts_including_iso_times() -> None:
    calls = RECORDS["CallEvent"]
    avro = decode_batch([Msg(v) for v in encode(calls, "CallEvent", "avro")], "CallEvent")
    iso = decode_batch([Msg(v) for v in encode(calls, "CallEvent", "json", 50, iso_times=True)], "CallEvent")
    assert only_records(avro) == only_records(iso) == calls


def test_json_array_bare_avro_and_container_are_batches() -> None:
    calls = RECORDS["CallEvent"][:30]
    array = orjson.dumps(calls)
    assert only_records(decode_value(array, "CallEvent")) == calls
    container = codec.encode_container(calls, "CallEvent")
    assert only_records(decode_value(container, "CallEvent")) == calls
    bare = encode(calls[:1], "CallEvent", "avro")[0][5:]  # strip magic byte and schema id
    assert only_records(decode_value(bare, "CallEvent")) == calls[:1]
    assert only_records(decode_value(bare, "CallEvent", headers={FORMAT_HEADER: b"avro"})) == calls[:1]
    batch = encode(calls, "CallEvent", "avro", 30)[0][5:]
    assert only_records(decode_value(batch, "CallEvent", headers=[(FORMAT_HEADER, b"avro-batch")])) == calls


def test_a_container_written_with_timestamp_types_gives_epoch_milliseconds() -> None:
    """A carrier's own Avro writer keeps the schema's timestamp-millis types: its file reads to
    datetimes, which become the same epoch milliseconds as every other framing gives."""
    calls = RECORDS["CallEvent"][:10]
    typed = fastavro.parse_schema(schemas.raw("CallEvent"))
    assert "logicalType" in repr(typed)
    dated = [
        {
            k: datetime.fromtimestamp(v / 1000, UTC) if k.endswith("ed_at") and v is not None else v
            for k, v in c.items()
        }
        for c in calls
    ]
    out = io.BytesIO()
    fastavro.writer(out, typed, dated)
    assert only_records(decode_value(out.getvalue(), "CallEvent")) == calls


def test_pretty_printed_json_object_is_one_event() -> None:
    call = RECORDS["CallEvent"][0]
    value = orjson.dumps(call, option=orjson.OPT_INDENT_2)
    assert only_records(decode_value(b"\n  " + value, "CallEvent")) == [call]


def _call_json(**change: Any) -> bytes:
    call = dict(RECORDS["CallEvent"][0])
    for key, value in change.items():
        if value is ...:
            call.pop(key, None)
        else:
            call[key] = value
    return orjson.dumps(call)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", Reason.EMPTY),
        (None, Reason.EMPTY),
        (b" \n\t", Reason.EMPTY),
        (b"[]", Reason.EMPTY),
        (b"{not json", Reason.MALFORMED),
        (b"\x00\x00\x00", Reason.MALFORMED),
        (b"\x00\x00\x00\x00\x07" + b"\x02a", Reason.UNKNOWN_SCHEMA_ID),
        (b"\x00\x00\x00\x00\x02" + b"\x02a", Reason.WRONG_TYPE),  # a ConsentEvent id on calls.raw
        (b"Obj\x01garbage", Reason.MALFORMED),
        (b"\x13\x01\x02", Reason.MALFORMED),  # bare Avro, negative string length
        (_call_json(duration_s="12"), Reason.WRONG_TYPE),
        (_call_json(duration_s=True), Reason.WRONG_TYPE),
        (_call_json(duration_s=2**31), Reason.WRONG_TYPE),
        (_call_json(started_at="yesterday"), Reason.WRONG_TYPE),
        (_call_json(started_at=1.5e12), Reason.WRONG_TYPE),
        (_call_json(caller=4420794609), Reason.WRONG_TYPE),
        (_call_json(attributes={"retries": 3}), Reason.WRONG_TYPE),
        (_call_json(attributes=["a"]), Reason.WRONG_TYPE),
        (_call_json(device="phone"), Reason.WRONG_TYPE),
        (_call_json(account_id=...), Reason.MISSING_FIELD),
        (_call_json(account_id=None), Reason.MISSING_FIELD),
        (_call_json(device={"device_id": "d", "os": "iOS", "app_version": "1"}), Reason.MISSING_FIELD),
        (_call_json(kind="fax"), Reason.UNKNOWN_ENUM),
        (_call_json(status="ANSWERED"), Reason.UNKNOWN_ENUM),
        (_call_json(direction=1), Reason.WRONG_TYPE),
        (b"[1]", Reason.WRONG_TYPE),
    ],
)
def test_bad_values_give_their_reason(value: bytes | None, reason: Reason) -> None:
    out = decode_value(value, "CallEvent", partition=2, offset=9)
    assert out.records == []
    assert [(r.reason, r.stage, r.partition, r.offset) for r in out.rejections] == [
        (reason, Stage.DECODE, 2, 9)
    ]


def test_truncated_avro_rejects_the_whole_message() -> None:
    value = encode(RECORDS["CallEvent"][:10], "CallEvent", "avro", 10)[0]
    for cut in (6, len(value) // 2, len(value) - 1):
        out = decode_value(value[:cut], "CallEvent")
        assert out.records == []
        assert [(r.reason, r.index, r.raw) for r in out.rejections] == [(Reason.MALFORMED, None, value[:cut])]
    out = decode_value(value + b"\x00", "CallEvent")  # trailing bytes are not silently ignored
    assert [r.reason for r in out.rejections] == [Reason.MALFORMED]


def test_bad_json_line_rejects_only_that_event() -> None:
    calls = RECORDS["CallEvent"][:4]
    lines = [codec.to_json(c, "CallEvent") for c in calls]
    lines[1] = b'{"event_id": "x", "kind": '
    lines[2] = _call_json(status="lost")
    out = decode_value(b"\n".join(lines) + b"\n", "CallEvent", partition=1, offset=40)
    assert out.records == [calls[0], calls[3]]
    assert out.lineage == [Lineage(1, 40, 0), Lineage(1, 40, 3)]
    assert [(r.reason, r.index, r.raw) for r in out.rejections] == [
        (Reason.MALFORMED, 1, lines[1]),
        (Reason.UNKNOWN_ENUM, 2, lines[2]),
    ]


def test_bad_element_of_json_array_rejects_only_that_event() -> None:
    calls = RECORDS["CallEvent"][:3]
    items = [calls[0], {**calls[1], "duration_s": "long"}, calls[2]]
    out = decode_value(orjson.dumps(items), "CallEvent")
    assert out.records == [calls[0], calls[2]]
    assert [(r.reason, r.index) for r in out.rejections] == [(Reason.WRONG_TYPE, 1)]


def test_garbage_in_lines_is_one_dead_letter_not_one_per_line() -> None:
    """A blob that only looks like JSON lines (a megabyte of "{" and newlines) would otherwise
    become hundreds of thousands of dead letters: rejected whole, with its bytes."""
    blob = b"{\n" * 400_000
    out = decode_value(blob, "CallEvent", partition=2, offset=9)
    assert out.records == []
    assert [(r.reason, r.index, r.offset, r.raw) for r in out.rejections] == [
        (Reason.MALFORMED, None, 9, blob)
    ]


def test_json_lines_with_a_few_bad_lines_keep_their_good_ones() -> None:
    calls = RECORDS["CallEvent"][:30]
    lines = [codec.to_json(c, "CallEvent") for c in calls]
    for i in range(0, 28, 2):  # 14 bad lines of 30: more than 10, but not more than half
        lines[i] = b'{"event_id": '
    out = decode_value(b"\n".join(lines), "CallEvent")
    assert len(out.records) == 16 and len(out.rejections) == 14
    assert all(r.index is not None and r.raw == b'{"event_id": ' for r in out.rejections)
    lines[28] = lines[29] = b"{"  # 16 of 30: most lines are bad, so the value is not JSON lines
    out = decode_value(b"\n".join(lines), "CallEvent")
    assert out.records == [] and [r.index for r in out.rejections] == [None]


def test_a_bad_element_of_an_array_is_dead_lettered_alone_as_json_not_with_the_whole_message() -> None:
    """A bad event of a batch carries itself, not its neighbours (their data would sit in
    calls.dlq once per bad event, and replaying it would land the good ones again); most events
    bad, more than 10, the message is one dead letter."""
    calls = RECORDS["CallEvent"][:40]
    items = [{**c, "duration_s": "long"} if i < 11 else c for i, c in enumerate(calls)]
    out = decode_value(orjson.dumps(items), "CallEvent")
    assert len(out.records) == 29
    assert [r.index for r in out.rejections] == list(range(11))
    assert [orjson.loads(r.raw) for r in out.rejections] == items[:11]
    mostly_bad = [{**c, "duration_s": "long"} for c in calls[:12]] + calls[12:20]
    value = orjson.dumps(mostly_bad)
    out = decode_value(value, "CallEvent")
    assert out.records == []
    assert [(r.reason, r.index, r.raw) for r in out.rejections] == [(Reason.WRONG_TYPE, None, value)]


@pytest.mark.parametrize("fmt", ["avro", "avro-container"])
def test_a_bad_event_of_an_avro_batch_is_dead_lettered_alone_as_json(fmt: str) -> None:
    calls = [dict(c) for c in RECORDS["CallEvent"][:30]]
    for i in (3, 17):
        calls[i]["account_id"] = "\x00" * 3  # no command could name it: rejected after decoding

    def packed(records: list[dict[str, Any]]) -> bytes:
        if fmt == "avro":
            return encode(records, "CallEvent", "avro", len(records))[0]
        buf = io.BytesIO()
        fastavro.writer(buf, schemas.parsed("CallEvent"), records)
        return buf.getvalue()

    value = packed(calls)
    out = decode_value(value, "CallEvent")
    assert len(out.records) == 28
    assert [(r.reason, r.index) for r in out.rejections] == [(Reason.BAD_ID, 3), (Reason.BAD_ID, 17)]
    assert [orjson.loads(r.raw)["event_id"] for r in out.rejections] == [
        calls[3]["event_id"],
        calls[17]["event_id"],
    ]
    assert all(len(r.raw) < len(value) // 10 for r in out.rejections)
    value = packed([{**c, "account_id": "\x00"} for c in calls[:20]] + calls[20:])
    out = decode_value(value, "CallEvent")
    assert out.records == [] and [(r.index, r.raw) for r in out.rejections] == [(None, value)]


def test_size_limits() -> None:
    calls = RECORDS["CallEvent"][:5]
    value = encode(calls, "CallEvent", "json", 5)[0]
    out = decode_value(value, "CallEvent", limits=Limits(max_message_bytes=len(value) - 1))
    assert [(r.reason, r.index) for r in out.rejections] == [(Reason.TOO_LARGE, None)]
    longest = max(len(line) for line in value.split(b"\n"))
    out = decode_value(value, "CallEvent", limits=Limits(max_event_bytes=longest - 1))
    assert {r.reason for r in out.rejections} == {Reason.TOO_LARGE}
    assert len(out.records) + len(out.rejections) == 5


def _framings(records: list[dict[str, Any]], name: str) -> dict[str, tuple[bytes, Any]]:
    """The same records as one message of every framing that can carry several: (value, headers)."""
    avro_batch = encode(records, name, "avro", len(records))[0]
    return {
        "json array": (orjson.dumps(records), None),
        "json lines": (b"\n".join(orjson.dumps(r) for r in records), None),
        "json lines (header)": (b"\n".join(orjson.dumps(r) for r in records), [(FORMAT_HEADER, b"jsonl")]),
        "avro batch (confluent)": (avro_batch, None),
        "avro batch (header)": (avro_batch[5:], [(FORMAT_HEADER, b"avro-batch")]),
        "avro container": (codec.encode_container(records, name), None),
        "avro container (uncompressed)": (codec.encode_container(records, name, "null"), None),
    }


def _singles(record: dict[str, Any], name: str) -> dict[str, tuple[bytes, Any]]:
    """One record as a message of every framing that carries one."""
    confluent = encode([record], name, "avro")[0]
    return {
        "json object": (orjson.dumps(record), None),
        "avro (confluent)": (confluent, None),
        "avro (bare)": (confluent[5:], None),
        "avro (header)": (confluent[5:], [(FORMAT_HEADER, b"avro")]),
    }


BIG_TRANSCRIPT = "blah " * (9 * 1024 * 1024 // 5)  # a 9 MB transcript: over the 1 MiB default event limit


def test_an_oversized_event_is_too_large_in_every_framing_and_the_others_are_kept() -> None:
    calls = RECORDS["CallEvent"][:3]
    big = {**calls[1], "transcript": BIG_TRANSCRIPT}
    for framing, (value, headers) in _framings([calls[0], big, calls[2]], "CallEvent").items():
        assert len(value) <= codec.DEFAULT_LIMITS.max_message_bytes, framing
        out = decode_value(value, "CallEvent", headers=headers, partition=2, offset=9)
        assert out.records == [calls[0], calls[2]], framing
        assert [lin.index for lin in out.lineage] == [0, 2], framing
        assert [(r.reason, r.index, r.offset) for r in out.rejections] == [(Reason.TOO_LARGE, 1, 9)], framing
    for framing, (value, headers) in _singles(big, "CallEvent").items():
        out = decode_value(value, "CallEvent", headers=headers)
        assert out.records == [], framing
        assert [(r.reason, r.index, r.raw) for r in out.rejections] == [(Reason.TOO_LARGE, None, value)], (
            framing
        )


def test_events_within_the_limit_pass_in_every_framing() -> None:
    calls = RECORDS["CallEvent"][:4]
    # 750 kB transcripts: each event under the 1 MiB limit, the message over it, so each is measured
    near = [{**c, "transcript": "blah " * 150_000} for c in calls[1:3]]
    records = [calls[0], *near, calls[3]]
    for framing, (value, headers) in _framings(records, "CallEvent").items():
        assert "container" in framing or len(value) > codec.DEFAULT_LIMITS.max_event_bytes, framing
        out = decode_value(value, "CallEvent", headers=headers)
        assert only_records(out) == records, framing


# Control characters and other unprintable ones no command line can carry.
UNNAMEABLE = ["a\x00b", "a\nb", "\x1b[2J", "a\tb", "a\u200bb", "a\u2028b", "\x7f", "a\u00a0b"]


def _identifier_cases() -> list[tuple[str, str]]:
    return [(name, ".".join(path)) for name in sorted(RECORDS) for path, _limit in identifier_paths(name)]


def _with(record: dict[str, Any], path: str, value: str) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    if not rest:
        return {**record, head: value}
    return {**record, head: _with(record[head], rest, value)}


def test_every_identifier_field_is_checked() -> None:
    assert _identifier_cases() == [
        ("CallEvent", "event_id"),
        ("CallEvent", "account_id"),
        ("CallEvent", "org_id"),
        ("CallEvent", "carrier_id"),
        ("CallEvent", "caller"),
        ("CallEvent", "callee"),
        ("CallEvent", "device.device_id"),
        ("ConsentEvent", "account_id"),
        ("PrivacyRequest", "request_id"),
        ("PrivacyRequest", "account_id"),
    ]


@pytest.mark.parametrize(("name", "path"), _identifier_cases(), ids=lambda v: str(v))
def test_unnameable_identifiers_are_bad_id_in_every_framing(name: str, path: str) -> None:
    parent = path.rpartition(".")[0]
    first, second, third = [r for r in RECORDS[name] if not parent or r.get(parent)][:3]
    for text in UNNAMEABLE:
        bad = _with(second, path, text)
        for framing, (value, headers) in _framings([first, bad, third], name).items():
            out = decode_value(value, name, headers=headers)
            assert out.records == [first, third], (framing, text)
            assert [(r.reason, r.index) for r in out.rejections] == [(Reason.BAD_ID, 1)], (framing, text)
        for framing, (value, headers) in _singles(bad, name).items():
            out = decode_value(value, name, headers=headers)
            assert out.records == [], (framing, text)
            assert [(r.reason, r.index) for r in out.rejections] == [(Reason.BAD_ID, None)], (framing, text)


# A control record's time in seconds, microseconds or nanoseconds (what carriers' clients send by
# mistake), and the edges of what is taken.
CONTROL_TIMES = [
    (1_764_547_200, Reason.BAD_TIME),  # 2025-12-01 in seconds
    (1_764_547_200_000_000, Reason.BAD_TIME),  # in microseconds
    (1_764_547_200_000_000_000, Reason.BAD_TIME),  # in nanoseconds
    (-1, Reason.BAD_TIME),
    (946_684_799_999, Reason.BAD_TIME),  # a millisecond before the epoch of service
    (946_684_800_000, None),
    (1_764_547_200_000, None),
    (4_102_444_799_999, None),  # the last millisecond of 2099
    (4_102_444_800_000, Reason.BAD_TIME),
]


@pytest.mark.parametrize("name", ["ConsentEvent", "PrivacyRequest"])
@pytest.mark.parametrize(("at", "reason"), CONTROL_TIMES, ids=lambda v: str(v))
def test_a_control_record_stamped_in_another_unit_is_bad_time_in_every_framing(
    name: str, at: int, reason: Reason | None
) -> None:
    first, second, third = RECORDS[name][:3]
    odd = {**second, "at": at}
    for framing, (value, headers) in _framings([first, odd, third], name).items():
        out = decode_value(value, name, headers=headers)
        if reason is None:
            assert out.records == [first, odd, third] and not out.rejections, framing
        else:
            assert out.records == [first, third], framing
            assert [(r.reason, r.index) for r in out.rejections] == [(reason, 1)], framing
    for framing, (value, headers) in _singles(odd, name).items():
        out = decode_value(value, name, headers=headers)
        assert [r.reason for r in out.rejections] == ([] if reason is None else [reason]), framing


def test_a_call_time_is_left_to_validation_not_the_control_rule() -> None:
    out = decode_value(_call_json(started_at=1_764_547_200), "CallEvent")  # seconds: validation's BAD_TIME
    assert len(only_records(out)) == 1


def test_printable_identifiers_pass() -> None:
    call = RECORDS["CallEvent"][0]
    for text in ["acct-1", "Ärzte GmbH 7", "ü@x.example", "a b", "客户-42", "x" * 128]:
        out = decode_value(orjson.dumps({**call, "account_id": text}), "CallEvent")
        assert only_records(out)[0]["account_id"] == text


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2026-01-01T00:00:00Z", START),
        ("2026-01-01T00:00:00.250Z", START + 250),
        ("2026-01-01T01:00:00+01:00", START),
        ("2026-01-01T00:00:00", START),  # naive: read as UTC
        ("2026-01-01", START),
    ],
)
def test_iso_timestamps_become_epoch_ms(text: str, ms: int) -> None:
    out = decode_value(_call_json(started_at=text), "CallEvent")
    assert only_records(out)[0]["started_at"] == ms


def test_unknown_json_fields_are_ignored_and_optional_fields_default_to_none() -> None:
    call = RECORDS["CallEvent"][0]
    required = {k: call[k] for k in ("event_id", "account_id", "org_id", "carrier_id", "kind", "direction")}
    required |= {k: call[k] for k in ("caller", "callee", "started_at", "duration_s", "status")}
    out = only_records(decode_value(orjson.dumps({**required, "network": "5G"}), "CallEvent"))
    assert out[0] == {**dict.fromkeys(call), **required}


def test_from_json_raises_value_error_with_reason_code_only() -> None:
    with pytest.raises(ValueError, match=r"^unknown_enum$"):
        codec.from_json(orjson.loads(_call_json(kind="secret-value")), "CallEvent")


def test_encode_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        encode(RECORDS["CallEvent"], "CallEvent", "xml")
    with pytest.raises(ValueError):
        encode(RECORDS["CallEvent"], "CallEvent", "avro", 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(value: bytes) -> None:
    for name in RECORDS:
        out = decode_value(value, name)
        assert out.records or out.rejections
        # the message, or a line of it, or one event of a batch alone, as JSON
        assert all(r.raw in value or orjson.loads(r.raw) for r in out.rejections)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.binary(min_size=1, max_size=4))
def test_corrupted_avro_never_raises(cut: int, junk: bytes) -> None:
    value = encode(RECORDS["CallEvent"][:3], "CallEvent", "avro", 3)[0]
    mangled = value[:cut] + junk + value[cut + len(junk) :]
    out = decode_value(mangled, "CallEvent")
    # still three events, or nothing: a corrupted Avro message is never half-read. An event whose
    # identifier the junk made unnameable is rejected alone, after the whole message was read.
    bad_id = [r for r in out.rejections if r.index is not None and r.reason is Reason.BAD_ID]
    assert len(out.records) + len(bad_id) == 3 or (out.records == [] and out.rejections)
    if mangled[:1] == b"\x00":
        assert len(out.records) + len(bad_id) == 3 or [r.index for r in out.rejections] == [None]


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_compiled_avro_writer_matches_fastavro_byte_for_byte(name: str) -> None:
    records = RECORDS[name]
    for rec in records:
        bio = io.BytesIO()
        fastavro.schemaless_writer(bio, schemas.parsed(name), rec)
        assert codec_avro.write_records(b"", name, [rec], batch=False) == bio.getvalue()
    bio = io.BytesIO()
    fastavro.schemaless_writer(bio, schemas.parsed_batch(name), records)
    assert codec_avro.write_records(b"", name, list(records), batch=True) == bio.getvalue()


@pytest.mark.parametrize(
    "change", [{"kind": "fax"}, {"account_id": None}, {"duration_s": "12"}, {"attributes": {"a": 1}}]
)
def test_compiled_avro_writer_refuses_invalid_records(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="CallEvent schema"):
        encode([{**RECORDS["CallEvent"][0], **change}], "CallEvent", "avro")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["callpipe.format", b"callpipe.format", "other"]),
            st.one_of(st.none(), st.binary(max_size=20), st.text(max_size=20), st.integers(0, 99)),
        ),
        max_size=3,
    ),
    st.sampled_from([b"", b"{}", b"\x00\x00\x00\x00\x01\x02", b"Obj\x01", b"[1]\n[2]"]),
)
def test_arbitrary_headers_never_raise(headers: list[tuple[Any, Any]], value: bytes) -> None:
    out = decode_value(value, "CallEvent", headers=headers)
    assert out.records or out.rejections


def test_privacy_request_v1_messages_still_decode_as_v2() -> None:
    """Schema evolution: v1 producers (Confluent id 3, bare bodies) keep working after rectify."""

    v1 = {"request_id": "r-1", "account_id": "acc-1", "kind": "erase", "at": 1_700_000_000_000}
    writer = schemas.parsed_writer("PrivacyRequest", 1)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, writer, v1)
    expected = {**v1, "corrections": None}
    confluent = b"\x00" + (3).to_bytes(4, "big") + body.getvalue()
    assert codec.decode_value(confluent, "PrivacyRequest").records == [expected]
    assert codec.decode_value(body.getvalue(), "PrivacyRequest").records == [expected]
    v2 = {**v1, "kind": "rectify", "corrections": [{"attribute": "org_id", "old": None, "new": "org-2"}]}
    (value,) = codec.encode([v2], "PrivacyRequest", "avro")
    assert value[1:5] == (4).to_bytes(4, "big")
    assert codec.decode_value(value, "PrivacyRequest").records == [v2]


def _agrees(value: bytes | None, headers: Any = None) -> dict[str, Any] | None:
    """plain_record's answer, held to decode_value's: the same record when decode_value keeps
    exactly one event of a Confluent single-record message and rejects nothing, else None."""
    got = codec.plain_record(value, headers, "CallEvent")
    out = decode_value(value, "CallEvent", headers=headers)
    if got is not None:
        assert out.rejections == [] and out.records == [got]
    elif value and value[:1] == b"\x00" and codec._header_format(headers) in (None, codec.Format.CONFLUENT):
        sid = int.from_bytes(value[1:5], "big")
        plain = schemas.SCHEMA_IDS.get(sid) == ("CallEvent", schemas.CURRENT["CallEvent"])
        assert not (plain and not out.rejections and len(out.records) == 1), "a plain message was not taken"
    return got


def test_the_plain_record_shortcut_gives_what_decode_value_gives() -> None:
    """The worker's shortcut for one-event Confluent messages: every valid message is taken with
    the record decode_value gives; every message decode_value rejects, every other framing,
    version or format header is left to decode_value (thousands of corrupted messages too)."""
    calls = RECORDS["CallEvent"][:50]
    values = encode(calls, "CallEvent", "avro")
    for value, call in zip(values, calls, strict=True):
        assert _agrees(value) == call
        assert _agrees(value, [(FORMAT_HEADER, b"confluent")]) == call
        assert _agrees(value, [(FORMAT_HEADER, b"json")]) is None
    assert _agrees(encode(calls, "CallEvent", "avro", 5)[0]) is None  # a batch id
    assert _agrees(encode(calls[:1], "CallEvent", "json")[0]) is None
    assert _agrees(None) is None and _agrees(b"") is None and _agrees(values[0][:5]) is None
    bad = Path(__file__).resolve().parent.parent / "bad_inputs"
    for path in sorted(p for p in bad.rglob("*") if p.is_file() and p.suffix not in (".py", ".md")):
        _agrees(path.read_bytes())
    rng = random.Random(8)
    taken = 0
    for _ in range(3_000):
        value = bytearray(rng.choice(values))
        how = rng.randrange(3)
        if how == 0:
            del value[rng.randrange(5, len(value)) :]
        elif how == 1:
            value[rng.randrange(5, len(value))] = rng.randrange(256)
        else:
            value += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        taken += _agrees(bytes(value)) is not None
    assert 0 < taken < 3_000  # some corruptions still decode (a changed letter), most do not
