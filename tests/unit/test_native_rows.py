"""Records decoded into Arrow columns (pipeline/native_rows.py over pipeline/native/src/rows.rs)
against the dict path they stand in for: `codec.plain_record` / `codec.decode_value`, then
`sinks.arrow.to_table`.

What holds: a message is taken exactly when the dict path would give its records without a
rejection (and the native decoder would, which declines a little more); the table of what was
taken equals the table of the decoder's dicts, schema and nullability included; a message not
taken leaves the columns as they were; `records_of` gives the dicts back exactly. The module is
imported directly: a missing build must fail here, not be skipped.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from pipeline import _native, codec, native_rows
from pipeline.bench import canary
from pipeline.native_rows import RowColumns, records_of, row_columns
from schemas.zones import call_event_schema, vault_schema
from sinks.arrow import to_table
from tests.unit.test_native_decoder import ANY_ID, EVERY_TYPE, IDENTIFYING, SCHEMAS, _shape, _with_ids

SCHEMA = call_event_schema()
CALLS = canary.seeded(2_000).traffic.calls
BATCH_ID = schemas.BATCH_ID_OF["CallEvent"].to_bytes(4, "big")
SINGLE_ID = schemas.ID_OF["CallEvent"].to_bytes(4, "big")


def _columns() -> RowColumns:
    found = row_columns("CallEvent")
    assert found is not None, "CallEvent has no native columns"
    return found


def _same(table: pa.Table, records: list[dict[str, Any]]) -> None:
    """The table is the dict path's table of `records`, and gives them back."""
    want = to_table(records, SCHEMA)
    table.validate(full=True)
    assert table.schema.equals(want.schema, check_metadata=True)
    assert table.equals(want, check_metadata=True)
    # a struct's children as Arrow's converter fills them under a null struct (valid
    # placeholders): the Parquet writer refuses a null in a non-nullable child even there
    for name in ("device",):
        mine, theirs = table.column(name).combine_chunks(), want.column(name).combine_chunks()
        for i in range(mine.type.num_fields):
            assert mine.field(i).null_count == theirs.field(i).null_count, (name, i)
    pq.write_table(table, io.BytesIO())
    assert [_shape(r) for r in records_of(table)] == [_shape(r) for r in records]


def _body(record: dict[str, Any]) -> bytes:
    bio = io.BytesIO()
    fastavro.schemaless_writer(bio, SCHEMAS["CallEvent"], record)
    return bio.getvalue()


def test_the_schema_is_the_vault_schema_less_lineage() -> None:
    assert list(vault_schema())[: len(SCHEMA)] == list(SCHEMA)
    assert _columns().schema.equals(SCHEMA)
    assert row_columns("ConsentEvent") is None  # no Arrow schema: the dict path


def test_canary_traffic_one_record_a_message() -> None:
    columns = _columns()
    values = codec.encode(CALLS, "CallEvent", "avro", 1)
    records = [codec.plain_record(v, None, "CallEvent") for v in values]
    assert all(r is not None for r in records)
    keys = [columns.append(v, None) for v in values]
    assert keys == [c["started_at"] for c in CALLS]
    assert len(columns) == len(CALLS)
    _same(columns.take(len(CALLS)), records)  # type: ignore[arg-type]
    assert len(columns) == 0


def test_canary_traffic_in_batches_of_500() -> None:
    columns = _columns()
    values = codec.encode(CALLS, "CallEvent", "avro", 500)
    keys = [columns.append_batch(v, None) for v in values]
    assert [k for batch in keys if batch is not None for k in batch] == [c["started_at"] for c in CALLS]
    decoded = [r for v in values for r in codec.decode_value(v, "CallEvent").records]
    _same(columns.take(len(columns)), decoded)


@pytest.mark.parametrize("first", [0, 1, 7, 8, 9, 700, 1_999, 2_000])
def test_take_leaves_the_rest_in_order(first: int) -> None:
    columns = _columns()
    for value in codec.encode(CALLS, "CallEvent", "avro", 500):
        columns.append_batch(value, None)
    head = columns.take(first)
    assert len(columns) == len(CALLS) - first
    columns.append(codec.encode(CALLS[:1], "CallEvent", "avro", 1)[0], None)  # after a take, too
    tail = columns.take(len(columns))
    _same(pa.concat_tables([head, tail]), [*CALLS, CALLS[0]])
    with pytest.raises(ValueError):
        columns.take(1)


def test_clear_empties_the_columns() -> None:
    columns = _columns()
    for value in codec.encode(CALLS[:10], "CallEvent", "avro", 1):
        columns.append(value, None)
    columns.clear()
    assert len(columns) == 0
    _same(columns.take(0), [])
    columns.append(codec.encode(CALLS[:1], "CallEvent", "avro", 1)[0], None)
    _same(columns.take(1), CALLS[:1])


def _damaged(values: list[bytes]) -> list[bytes]:
    out = [v[: len(v) // 2] for v in values] + [v[:-1] for v in values] + [v + b"\x00" for v in values]
    out += [v[:30] + bytes([v[30] ^ 0xFF]) + v[31:] for v in values]
    out += [v[:5] + b"\xff" * 12 + v[17:] for v in values]
    return out


def _hostile_calls() -> list[dict[str, Any]]:
    """Calls with hostile strings in their identifiers and free text (as test_native_decoder)."""
    hostile = ["", " ", "\t", "a\x00b", "x" * 300, "\u200b", "😀", "𝔘\U0010ffff", "\x7f", "é" * 40]
    calls = CALLS[:20]
    out = [
        {**call, field: s}
        for call in calls
        for s in hostile
        for field in ("event_id", "caller", "org_id", "transcript", "cell_id")
    ]
    out += [{**call, "attributes": {s: s for s in hostile}} for call in calls]
    out += [
        {**call, "device": {**call["device"], "device_id": s}}
        for call in calls
        if call["device"]
        for s in hostile
    ]
    return out


def test_hostile_and_damaged_messages_are_taken_exactly_when_plain_record_takes_them() -> None:
    bad = Path(__file__).resolve().parent.parent / "bad_inputs"
    values = [
        p.read_bytes() for p in sorted(bad.rglob("*")) if p.is_file() and p.suffix not in (".py", ".md")
    ]
    good = codec.encode(CALLS[:40], "CallEvent", "avro", 1)
    values += good + _damaged(good) + codec.encode(_hostile_calls(), "CallEvent", "avro", 1)
    values += codec.encode(CALLS[:3], "CallEvent", "avro", 2)  # a batch is not one record
    values += [b"\x00" + schemas.ID_OF["ConsentEvent"].to_bytes(4, "big") + good[0][5:]]  # another id
    values += [b"", b"\x00", good[0][:5], b"\x01" + good[0][1:]]
    columns = _columns()
    taken: list[dict[str, Any]] = []
    for i, value in enumerate(values):
        want = codec.plain_record(value, None, "CallEvent")
        got = columns.append(value, None)
        assert (got is None) == (want is None), i
        if want is not None:
            assert got == want["started_at"]
            taken.append(want)
        assert len(columns) == len(taken)
    assert 40 <= len(taken) < len(values) - 100
    _same(columns.take(len(taken)), taken)


@pytest.mark.parametrize(
    ("headers", "taken"),
    [
        (None, True),
        ([], True),
        ([("callpipe.format", b"confluent")], True),
        ({"callpipe.format": b"confluent"}, True),
        ([("callpipe.format", b"json")], False),
        ([("callpipe.format", b"avro")], False),
        ([("callpipe.format", b"avro-batch")], False),
        ([("callpipe.format", b"no-such-format")], True),  # unknown values: the bytes are sniffed
    ],
)
def test_format_headers_as_plain_record_reads_them(headers: Any, taken: bool) -> None:
    value = codec.encode(CALLS[:1], "CallEvent", "avro", 1)[0]
    assert (codec.plain_record(value, headers, "CallEvent") is not None) is taken
    columns = _columns()
    assert (columns.append(value, headers) is not None) is taken
    batch = b"\x00" + BATCH_ID + value[5:]  # not a batch body, whatever the headers say
    assert columns.append_batch(batch, headers) is None
    good_batch = codec.encode(CALLS[:3], "CallEvent", "avro", 3)[0]
    assert (columns.append_batch(good_batch, headers) is not None) is taken
    assert len(columns) == 4 * taken


def test_a_message_of_the_other_framing_is_not_taken() -> None:
    columns = _columns()
    single = codec.encode(CALLS[:1], "CallEvent", "avro", 1)[0]
    batch = codec.encode(CALLS[:2], "CallEvent", "avro", 2)[0]
    assert columns.append(batch, None) is None
    assert columns.append(b"\x00" + BATCH_ID + single[5:], None) is None
    assert columns.append_batch(single, None) is None
    assert columns.append_batch(b"\x00" + SINGLE_ID + batch[5:], None) is None
    assert columns.append_batch(b"\x00" + BATCH_ID + b"\x00", None) is None  # empty: decode_value rejects it
    assert codec.decode_value(b"\x00" + BATCH_ID + b"\x00", "CallEvent").rejections
    assert len(columns) == 0


def test_a_batch_is_taken_whole_or_not_at_all() -> None:
    """One bad event makes the batch None (decode_value then rejects that event alone), and the
    columns keep what they held."""
    columns = _columns()
    columns.append(codec.encode(CALLS[:1], "CallEvent", "avro", 1)[0], None)
    for bad in _hostile_calls()[::7]:
        batch = [*CALLS[:30], bad, *CALLS[30:40]]
        value = codec.encode(batch, "CallEvent", "avro", 500)[0]
        out = codec.decode_value(value, "CallEvent")
        got = columns.append_batch(value, None)
        if got is None:
            assert len(columns) == 1
        else:
            assert not out.rejections and got == [r["started_at"] for r in out.records]
            assert [_shape(r) for r in out.records] == [_shape(r) for r in batch]
            columns.clear()
            columns.append(codec.encode(CALLS[:1], "CallEvent", "avro", 1)[0], None)
    good = codec.encode(CALLS[:40], "CallEvent", "avro", 500)[0]
    for value in _damaged([good]) + [good[: len(good) - k] for k in range(1, 40)]:
        assert columns.append_batch(value, None) is None or len(columns) == 41
        columns.clear()
        columns.append(codec.encode(CALLS[:1], "CallEvent", "avro", 1)[0], None)
    _same(columns.take(1), CALLS[:1])


CALL_EVENTS = _with_ids("CallEvent", ANY_ID)


@settings(max_examples=200, deadline=None)
@given(st.lists(CALL_EVENTS, max_size=12), st.data())
def test_generated_records_are_taken_as_the_dict_path_reads_them(
    records: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Any CallEvent (int64 and int32 extremes, astral strings, maps, null and present unions,
    unnameable identifiers), whole or damaged: taken exactly when plain_record takes it, and the
    columns of what was taken are the dict path's table of it, however they are taken out."""
    values = codec.encode(records, "CallEvent", "avro", 1)
    for value in list(values):
        if data.draw(st.booleans()):
            cut = data.draw(st.integers(5, len(value)))
            flip = data.draw(st.integers(5, len(value) - 1))
            values.append(value[:cut])
            values.append(value[:flip] + bytes([data.draw(st.integers(0, 255))]) + value[flip + 1 :])
    values = data.draw(st.permutations(values))
    columns = _columns()
    taken: list[dict[str, Any]] = []
    for value in values:
        want = codec.plain_record(value, None, "CallEvent")
        got = columns.append(value, None)
        assert (got is None) == (want is None)
        if want is not None:
            assert got == want["started_at"]
            taken.append(want)
    first = data.draw(st.integers(0, len(taken)))
    head = columns.take(first)
    _same(pa.concat_tables([head, columns.take(len(taken) - first)]), taken)


@settings(max_examples=200, deadline=None)
@given(st.lists(CALL_EVENTS, max_size=12), st.data())
def test_generated_batches_are_taken_whole_or_not_at_all(
    records: list[dict[str, Any]], data: st.DataObject
) -> None:
    """A batch is taken exactly when it is an array of records the decoder takes one by one
    (identifiers judged), and then holds them; else nothing is appended."""
    columns = _columns()
    columns.append(codec.encode(CALLS[:1], "CallEvent", "avro", 1)[0], None)
    value = codec.encode(records, "CallEvent", "avro", 500)[0] if records else b"\x00" + BATCH_ID + b"\x00"
    if data.draw(st.booleans()):
        at = data.draw(st.integers(5, len(value) - 1))
        value = value[:at] + bytes([data.draw(st.integers(0, 255))]) + value[at + 1 :]
    read = IDENTIFYING["CallEvent"].decode_array(value, 5)
    each = read is not None and all(IDENTIFYING["CallEvent"].decode(_body(r), 0) is not None for r in read)
    got = columns.append_batch(value, None)
    assert (got is not None) == (each and bool(read))
    if got is None:
        _same(columns.take(len(columns)), CALLS[:1])
        return
    assert read is not None
    out = codec.decode_value(value, "CallEvent")
    assert not out.rejections and [_shape(r) for r in out.records] == [_shape(r) for r in read]
    assert got == [r["started_at"] for r in read]
    _same(columns.take(len(columns)), [CALLS[0], *read])


def _long(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append(z & 0x7F | 0x80)
        z >>= 7
    return bytes(out + bytes([z]))


def _text(s: str) -> bytes:
    raw = s.encode()
    return _long(len(raw)) + raw


def test_a_map_keeps_each_key_once_as_the_dict_does() -> None:
    """A writer never repeats a map key, but the bytes may: the dict keeps the first place and the
    last value, and so do the columns, in small maps and large ones."""
    for size in (3, 8, 40):
        call = {**CALLS[0], "attributes": None}
        body = _body(call)
        assert body.endswith(b"\x00")  # attributes null: its union branch is the last byte
        pairs = [(f"k{i % 5}", f"v{i}") for i in range(size)]
        entries = b"".join(_text(k) + _text(v) for k, v in pairs)
        value = (
            b"\x00"
            + SINGLE_ID
            + body[:-1]
            + b"\x02"
            + _long(-len(pairs))
            + _long(len(entries))
            + entries
            + b"\x00"
        )
        want = codec.plain_record(value, None, "CallEvent")
        assert want is not None and len(want["attributes"]) == min(size, 5)
        columns = _columns()
        assert columns.append(value, None) == want["started_at"]
        _same(columns.take(1), [want])
        assert list(records_of(to_table([want], SCHEMA))[0]["attributes"].items()) == list(
            want["attributes"].items()
        )


def test_an_undone_append_leaves_no_trace_in_nested_columns() -> None:
    """A record declined in its last field (attributes, after device and the map's entries were
    appended) is undone in every column, children included."""
    columns = _columns()
    call = next(c for c in CALLS if c["device"])
    body = _body({**call, "attributes": None})[:-1]
    bad = (
        b"\x00" + SINGLE_ID + body + b"\x02" + _long(2) + _text("a") + _text("b") + _text("c") + _text("\x00")
    )
    assert codec.plain_record(bad, None, "CallEvent") is None  # the second entry runs out
    assert columns.append(bad, None) is None
    good = codec.encode([call], "CallEvent", "avro", 1)[0]
    assert columns.append(good, None) == call["started_at"]
    _same(columns.take(1), [call])


def _decoder(fields: list[dict[str, Any]]) -> _native.Decoder:
    return _native.Decoder(json.dumps({"type": "record", "name": "R", "fields": fields}))


LONG = {"name": "k", "type": "long"}


@pytest.mark.parametrize(
    "fields",
    [
        [LONG, {"name": "f", "type": "boolean"}],
        [LONG, {"name": "f", "type": "double"}],
        [LONG, {"name": "f", "type": "bytes"}],
        [LONG, {"name": "f", "type": {"type": "array", "items": "string"}}],
        [LONG, {"name": "f", "type": {"type": "map", "values": "long"}}],
        [LONG, {"name": "f", "type": ["null", "int", "string"]}],
        [LONG, {"name": "f", "type": ["int", "string"]}],
        [LONG, {"name": "f", "type": "null"}],
        [
            LONG,
            {
                "name": "f",
                "type": [
                    "null",
                    {"type": "record", "name": "L", "fields": [{"name": "n", "type": ["null", "L"]}]},
                ],
            },
        ],
        [{"name": "k", "type": "int"}],
        [{"name": "k", "type": ["null", "long"]}],
        [{"name": "other", "type": "long"}],
    ],
)
def test_schemas_without_columns_are_refused(fields: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError):
        _native.Rows(_decoder(fields), "k")


def test_every_type_schema_is_refused() -> None:
    with pytest.raises(ValueError):
        _native.Rows(_native.Decoder(json.dumps(EVERY_TYPE)), "nothing")


def test_columns_of_another_schema_follow_its_layout() -> None:
    """Null as the second branch, a nullable struct holding an enum and a map, nested nulls: the
    columns are what Arrow's converter makes of the decoder's dicts."""
    fields: list[dict[str, Any]] = [
        {"name": "s", "type": ["string", "null"]},
        {"name": "n", "type": ["null", "int"]},
        {
            "name": "r",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "In",
                    "fields": [
                        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["a", "bb"]}},
                        {"name": "m", "type": ["null", {"type": "map", "values": "string"}]},
                        {"name": "t", "type": ["null", "long"]},
                    ],
                },
            ],
        },
        LONG,
    ]
    schema = pa.schema(
        [
            pa.field("s", pa.string()),
            pa.field("n", pa.int32()),
            pa.field(
                "r",
                pa.struct(
                    [
                        pa.field("e", pa.string(), nullable=False),
                        pa.field("m", pa.map_(pa.string(), pa.string())),
                        pa.field("t", pa.timestamp("ms", tz="UTC")),
                    ]
                ),
            ),
            pa.field("k", pa.int64(), nullable=False),
        ]
    )
    decoder = _decoder(fields)
    rows = _native.Rows(decoder, "k")
    assert native_rows._mirrors(rows.layout(), list(schema))
    columns = RowColumns("R", rows, schema)
    avro = fastavro.parse_schema({"type": "record", "name": "R", "fields": fields})
    records: list[dict[str, Any]] = [
        {"s": None, "n": None, "r": None, "k": -(2**63)},
        {"s": "x", "n": -(2**31), "r": {"e": "bb", "m": None, "t": None}, "k": 2**63 - 1},
        {"s": "", "n": 7, "r": {"e": "a", "m": {}, "t": 5}, "k": 0},
        {"s": "😀", "n": None, "r": {"e": "bb", "m": {"": "", "é": "v"}, "t": -1}, "k": 1},
    ]
    for record in records * 3:
        bio = io.BytesIO()
        fastavro.schemaless_writer(bio, avro, record)
        assert decoder.decode(bio.getvalue(), 0) == record
        assert rows.append(bio.getvalue(), 0) == record["k"]
    head = columns.take(5)
    table = pa.concat_tables([head, columns.take(7)])
    table.validate(full=True)
    want = to_table(records * 3, schema)
    assert table.schema.equals(want.schema) and table.equals(want)
    assert [_shape(r) for r in records_of(table)] == [_shape(r) for r in records * 3]


def test_append_message_takes_what_append_or_append_batch_takes_and_nothing_else() -> None:
    """One native call per message (framing judged natively): the same acceptance, the same
    rows, as `append` then `append_batch` with `codec.plain_framing`, over hostile, damaged,
    oversize, empty and other-schema messages, singles and batches."""
    bad = Path(__file__).resolve().parent.parent / "bad_inputs"
    values: list[bytes | None] = [
        p.read_bytes() for p in sorted(bad.rglob("*")) if p.is_file() and p.suffix not in (".py", ".md")
    ]
    good = codec.encode(CALLS[:40], "CallEvent", "avro", 1)
    batches = codec.encode(CALLS[:40], "CallEvent", "avro", 7)
    values += good + _damaged(good) + batches + _damaged(batches)
    values += codec.encode(_hostile_calls()[:200], "CallEvent", "avro", 1)
    values += [b"\x00" + BATCH_ID + b"\x00", None, b"", b"\x00", good[0][:5], b"\x01" + good[0][1:]]
    values += [b"\x00" + schemas.ID_OF["ConsentEvent"].to_bytes(4, "big") + good[0][5:]]
    limit = codec.DEFAULT_LIMITS.max_event_bytes
    huge = {**CALLS[0], "transcript": "x" * limit}
    values += codec.encode([huge], "CallEvent", "avro", 1) + codec.encode(
        [CALLS[0], huge], "CallEvent", "avro", 2
    )
    one, both = _columns(), _columns()
    for i, value in enumerate(values):
        want = one.append(value, None)
        if want is None:
            want = one.append_batch(value, None)
        assert both.append_message(value, None) == want, i
        assert len(both) == len(one)
    assert 80 <= len(one) < sum(1 for v in values if v) and one.take(len(one)).equals(both.take(len(both)))
    headers = [("callpipe.format", b"json")]
    assert both.append_message(good[0], headers) is None and both.append_message(batches[0], headers) is None
    assert both.append_message(good[0], [("callpipe.format", b"confluent")]) == CALLS[0]["started_at"]
