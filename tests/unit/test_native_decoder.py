"""The native decoder (pipeline/native/) against fastavro, the reference it stands in for.

Soundness is its contract: whenever it gives a record, fastavro gives the equal one (keys in the
same order, values of the same types); whenever fastavro raises, or the bytes are not exactly one
record, it gives None. It may decline (None) what fastavro reads, and the caller then goes the
fastavro way; that is held rare: never for what a writer makes. The module is imported directly:
CI builds it (pyproject.toml), and a missing build must fail here, not be skipped.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from pipeline import _native, codec
from pipeline.bench import canary
from pipeline.identifiers import bad_identifier, identifier_paths

# Every kind of node the decoder compiles, beyond what the three schemas use: booleans, floats,
# bytes, arrays of records, maps of arrays, a named enum used twice (the second time by its short
# name, resolved in the namespace), a recursive record, a union of several non-null branches.
EVERY_TYPE: dict[str, Any] = {
    "type": "record",
    "name": "Every",
    "namespace": "test.native",
    "fields": [
        {"name": "flag", "type": "boolean"},
        {"name": "ratio", "type": "float"},
        {"name": "score", "type": "double"},
        {"name": "blob", "type": "bytes"},
        {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["low", "mid", "high"]}},
        {"name": "levels", "type": {"type": "array", "items": "Level"}},
        {"name": "nothing", "type": "null"},
        {"name": "tags", "type": {"type": "map", "values": {"type": "array", "items": "long"}}},
        {
            "name": "parts",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Part",
                    "namespace": "test.other",
                    "fields": [{"name": "n", "type": "int"}, {"name": "label", "type": ["null", "string"]}],
                },
            },
        },
        {"name": "choice", "type": ["null", "int", "string", "test.other.Part", "boolean"]},
        {
            "name": "chain",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Link",
                    "fields": [{"name": "value", "type": "long"}, {"name": "next", "type": ["null", "Link"]}],
                },
            ],
        },
    ],
}

NAMES = sorted(schemas.FILES)


def _public(schema: Any) -> str:
    """A parsed schema as the decoder takes it: JSON, less fastavro's private keys."""
    return json.dumps({k: v for k, v in schema.items() if not k.startswith("__")})


SCHEMAS: dict[str, Any] = {name: schemas.parsed(name) for name in NAMES}
SCHEMAS["PrivacyRequest v1"] = schemas.parsed_writer("PrivacyRequest", 1)
SCHEMAS["Every"] = fastavro.parse_schema(EVERY_TYPE)
DECODERS = {name: _native.Decoder(_public(schema)) for name, schema in SCHEMAS.items()}


def _values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of a parsed schema: unicode with astral characters and empty strings, int64 and int32
    extremes, maps of 0 to many keys, nested and recursive records, every union branch."""
    if isinstance(schema, list):
        return st.one_of([_values(branch, named) for branch in schema])
    if isinstance(schema, str):
        primitive = {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "float": st.floats(width=32),
            "double": st.floats(),
            "bytes": st.binary(max_size=20),
            "string": st.text(max_size=20),
        }
        if schema in primitive:
            return primitive[schema]
        return st.deferred(lambda: named[schema])
    kind = schema["type"]
    if kind == "record":
        fields: dict[str, st.SearchStrategy[Any]] = {}
        out = st.deferred(lambda: st.fixed_dictionaries(fields))
        named[schema["name"]] = out
        for f in schema["fields"]:
            fields[f["name"]] = _values(f["type"], named)
        # a recursive record ends: its recursive branch is one of several
        return out
    if kind == "enum":
        named[schema["name"]] = st.sampled_from(schema["symbols"])
        return named[schema["name"]]
    if kind == "array":
        return st.lists(_values(schema["items"], named), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), _values(schema["values"], named), max_size=6)
    return _values(kind, named)


STRATEGIES = {name: _values(schema, {}) for name, schema in SCHEMAS.items()}
RECORDS = st.sampled_from(sorted(SCHEMAS)).flatmap(lambda name: st.tuples(st.just(name), STRATEGIES[name]))


def _encode(name: str, record: dict[str, Any]) -> bytes:
    bio = io.BytesIO()
    fastavro.schemaless_writer(bio, SCHEMAS[name], record)
    return bio.getvalue()


def _shape(v: Any) -> Any:
    """A value with its types spelled out, so == also holds types and key order (and NaN)."""
    if isinstance(v, dict):
        return ("dict", [(_shape(k), _shape(x)) for k, x in v.items()])
    if isinstance(v, list):
        return ("list", [_shape(x) for x in v])
    return (type(v).__name__, repr(v) if isinstance(v, float) else v)


def _fastavro(name: str, value: bytes, start: int) -> Any:
    """fastavro's record of value[start:], or None if it raises or leaves bytes over."""
    bio = io.BytesIO(value[start:])
    try:
        record = fastavro.schemaless_reader(bio, SCHEMAS[name], None)
    except Exception:
        return None
    return record if bio.tell() == len(value) - start else None


def _sound(name: str, value: bytes, start: int = 0) -> dict[str, Any] | None:
    got = DECODERS[name].decode(value, start)
    want = _fastavro(name, value, start)
    if want is None:
        assert got is None, (name, value)
    elif got is not None:
        assert _shape(got) == _shape(want), (name, value)
    return got


@settings(max_examples=400, deadline=None)
@given(RECORDS, st.binary(max_size=6))
def test_valid_records_decode_as_fastavro_reads_them(named: tuple[str, Any], prefix: bytes) -> None:
    name, record = named
    body = _encode(name, record)
    got = _sound(name, prefix + body, len(prefix))
    assert got is not None, "a record a writer made was declined"
    assert _shape(got) == _shape(fastavro.schemaless_reader(io.BytesIO(body), SCHEMAS[name], None))


@settings(max_examples=300, deadline=None)
@given(RECORDS, st.data())
def test_damaged_records_are_declined_or_read_as_fastavro_reads_them(
    named: tuple[str, Any], data: st.DataObject
) -> None:
    name, record = named
    body = bytearray(_encode(name, record))
    _sound(name, bytes(body) + data.draw(st.binary(min_size=1, max_size=8)))
    _sound(name, bytes(body[: data.draw(st.integers(0, len(body) - 1))]) if body else b"")
    for _ in range(data.draw(st.integers(1, 3))):
        if body:
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    _sound(name, bytes(body))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SCHEMAS)), st.binary(max_size=64))
def test_random_bytes_are_declined_or_read_as_fastavro_reads_them(name: str, value: bytes) -> None:
    _sound(name, value)


BATCH_SCHEMAS = {name: fastavro.parse_schema({"type": "array", "items": SCHEMAS[name]}) for name in SCHEMAS}


def _sound_batch(name: str, value: bytes) -> list[Any] | None:
    """`_sound` for `decode_array`, against fastavro's reader of an array of the record."""
    got = DECODERS[name].decode_array(value, 0)
    bio = io.BytesIO(value)
    try:
        want = fastavro.schemaless_reader(bio, BATCH_SCHEMAS[name], None)
    except Exception:
        want = None
    if want is None or bio.tell() != len(value):
        assert got is None, (name, value)
    elif got is not None:
        assert _shape(got) == _shape(want), (name, value)
    return got


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(SCHEMAS)).flatmap(
        lambda n: st.tuples(st.just(n), st.lists(STRATEGIES[n], max_size=5))
    ),
    st.data(),
)
def test_batches_decode_as_fastavro_reads_them_and_damage_is_declined(
    batch: tuple[str, list[Any]], data: st.DataObject
) -> None:
    """A batch message's body (an Avro array of records, in blocks as a writer makes them):
    read whole as fastavro reads it; cut, lengthened or flipped, declined or read the same."""
    name, records = batch
    bio = io.BytesIO()
    fastavro.schemaless_writer(bio, BATCH_SCHEMAS[name], records)
    body = bytearray(bio.getvalue())
    got = _sound_batch(name, bytes(body))
    assert got is not None, "a batch a writer made was declined"
    assert len(got) == len(records)
    _sound_batch(name, bytes(body) + data.draw(st.binary(min_size=1, max_size=8)))
    _sound_batch(name, bytes(body[: data.draw(st.integers(0, len(body) - 1))]))
    for _ in range(data.draw(st.integers(1, 3))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    _sound_batch(name, bytes(body))


def test_batch_messages_decode_natively_as_with_fastavro(monkeypatch: pytest.MonkeyPatch) -> None:
    """decode_value of Confluent batch messages, whole, cut and flipped: the same records, lineage
    and rejections (reasons, fields) with the native decoder as with fastavro alone."""
    calls = canary.seeded(600).traffic.calls
    values = codec.encode(calls, "CallEvent", "avro", 100)
    values += [v[: len(v) // 2] for v in values] + [v[:-1] for v in values] + [v + b"\x00" for v in values]
    values += [v[:40] + bytes([v[40] ^ 0xFF]) + v[41:] for v in values[:6]]
    assert codec._body_reader("CallEvent", True) is not codec._fastavro_reader("CallEvent", True)
    assert codec._body_reader("CallEvent", True)(values[0], 5) is not None  # read natively

    def decoded(v: bytes) -> Any:
        out = codec.decode_value(v, "CallEvent", partition=0, offset=1)
        return (
            [_shape(r) for r in out.records],
            out.lineage,
            [(r.reason, r.index, r.field, r.raw) for r in out.rejections],
        )

    native = [decoded(v) for v in values]
    with monkeypatch.context() as m:
        m.setattr(codec, "_body_reader", codec._fastavro_reader)
        slow = [decoded(v) for v in values]
    assert native == slow
    assert sum(len(n[0]) for n in native) >= len(calls)  # the whole batches were read


IDENTIFYING = {
    name: _native.Decoder(
        _public(SCHEMAS[name]), [(list(path), limit) for path, limit in identifier_paths(name)]
    )
    for name in NAMES
}
PLAIN_ID = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=140)
ANY_ID = st.one_of(PLAIN_ID, st.text(max_size=140), st.sampled_from(["", " ", "  ", "a\tb", "é", "\x7f"]))


def _with_ids(name: str, ids: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Records of `name` whose identifier fields hold values of `ids`."""

    def put(record: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
        for path, _limit in identifier_paths(name):
            node = record
            for part in path[:-1]:
                node = node.get(part) or {}
            if path[-1] in node and isinstance(node[path[-1]], str):
                node[path[-1]] = data.draw(ids)
        return record

    return st.tuples(STRATEGIES[name], st.data()).map(lambda t: put(*t))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(NAMES).flatmap(lambda n: st.tuples(st.just(n), _with_ids(n, ANY_ID))))
def test_identifiers_are_judged_as_bad_identifier_judges_them(named: tuple[str, Any]) -> None:
    """With the schema's identifier fields: a record given is fastavro's and `bad_identifier`
    finds its identifiers nameable; one declined has an identifier that is not printable ASCII
    within its limit, not all spaces (the only ones the native side leaves to Python)."""
    name, record = named
    body = _encode(name, record)
    got = IDENTIFYING[name].decode(body, 0)
    want = fastavro.schemaless_reader(io.BytesIO(body), SCHEMAS[name], None)
    if got is not None:
        assert _shape(got) == _shape(want) and bad_identifier(got, name) is None
    else:
        plain = True
        for path, limit in identifier_paths(name):
            node: Any = want
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, str):
                plain &= (
                    0 < len(node) <= limit and node.isascii() and node.isprintable() and not node.isspace()
                )
        assert not plain, "a record with plainly nameable identifiers was declined"


def test_every_truncation_of_real_traffic_is_declined() -> None:
    calls = canary.seeded(20).traffic.calls
    for call in calls[:8]:
        body = _encode("CallEvent", call)
        assert _sound("CallEvent", body) is not None
        for end in range(len(body)):
            assert _sound("CallEvent", body[:end]) is None
        assert DECODERS["CallEvent"].decode(body, len(body) + 1) is None  # start past the end


def _long(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        if z < 0x80:
            return bytes(out + bytes([z]))
        out.append(z & 0x7F | 0x80)
        z >>= 7


def _one(schema: Any) -> _native.Decoder:
    return _native.Decoder(
        json.dumps({"type": "record", "name": "R", "fields": [{"name": "f", "type": schema}]})
    )


def _fastavro_one(schema: Any, value: bytes) -> Any:
    return fastavro.schemaless_reader(
        io.BytesIO(value),
        fastavro.parse_schema({"type": "record", "name": "R", "fields": [{"name": "f", "type": schema}]}),
    )


INTS = {"type": "array", "items": "int"}
STRINGS = {"type": "map", "values": "string"}


def test_blocks_with_a_negative_count_carry_their_size() -> None:
    """Avro lets a writer give an array or map block a negative count followed by the block's size
    in bytes (fastavro reads the size and ignores it); the decoder holds the size to the block."""
    items = _long(7) + _long(-300)
    blocked = _long(-2) + _long(len(items)) + items + _long(1) + _long(5) + b"\x00"
    assert _one(INTS).decode(blocked, 0) == _fastavro_one(INTS, blocked) == {"f": [7, -300, 5]}
    wrong = _long(-2) + _long(len(items) + 1) + items + b"\x00"
    assert _fastavro_one(INTS, wrong) == {"f": [7, -300]} and _one(INTS).decode(wrong, 0) is None
    entry = _long(1) + b"k" + _long(2) + b"v1"
    mapped = _long(-1) + _long(len(entry)) + entry + b"\x00"
    assert _one(STRINGS).decode(mapped, 0) == _fastavro_one(STRINGS, mapped) == {"f": {"k": "v1"}}
    assert _one(INTS).decode(_long(-(2**63)) + _long(0) + b"\x00", 0) is None  # no positive count


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "enum", "name": "E", "symbols": ["a", "b", "c"]}, _long(-1)),  # fastavro: "c"
        (["null", "string"], _long(-1) + _long(1) + b"x"),  # fastavro: the last branch
        ("int", _long(2**31)),  # fastavro: an int past 32 bits
        ("int", _long(-(2**31) - 1)),
        ("long", b"\x80" * 9 + b"\x02"),  # fastavro drops the bit past 64: 0
        ("long", b"\x80" * 10 + b"\x01"),  # an 11-byte varint: fastavro wraps it
    ],
)
def test_what_only_fastavro_reads_is_declined(schema: Any, value: bytes) -> None:
    """The bytes no Avro writer makes that fastavro still reads: the decoder declines them, and the
    caller reads them with fastavro (pipeline/codec.py: plain_record, then decode_value)."""
    _fastavro_one(schema, value)  # reads without raising
    assert _one(schema).decode(value, 0) is None


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ("string", _long(1) + b"\xff"),  # invalid UTF-8
        ("string", _long(3) + b"\xed\xa0\x80"),  # a UTF-8 surrogate
        ("bytes", _long(-1)),
        ("string", _long(5) + b"abc"),
        ({"type": "enum", "name": "E", "symbols": ["a"]}, _long(1)),
        (["null", "string"], _long(2)),
        ("double", b"\x00" * 7),
        ("float", b"\x00" * 3),
        ("boolean", b""),
        ({"type": "array", "items": "null"}, _long(2**40) + b"\x00"),  # empty items past any bound
    ],
)
def test_what_fastavro_refuses_is_declined(schema: Any, value: bytes) -> None:
    if schema != {"type": "array", "items": "null"}:  # fastavro would loop 2**40 times there
        with pytest.raises(Exception):  # noqa: B017 - fastavro raises EOFError, IndexError, ...
            _fastavro_one(schema, value)
    assert _one(schema).decode(value, 0) is None


def test_values_fastavro_spells_its_own_way() -> None:
    """A boolean byte other than 0 is true for fastavro; floats widen exactly; a map keeps the first
    place and the last value of a repeated key."""
    assert _one("boolean").decode(b"\x02", 0) == _fastavro_one("boolean", b"\x02") == {"f": True}
    nan = b"\x01\x00\xc0\x7f"
    assert repr(_one("float").decode(nan, 0)) == repr(_fastavro_one("float", nan))
    repeated = _long(3) + _long(1) + b"a" + _long(1) + b"1" + _long(1) + b"b" + _long(1) + b"2"
    repeated += _long(1) + b"a" + _long(1) + b"3" + b"\x00"
    got = _one(STRINGS).decode(repeated, 0)
    assert got is not None and list(got["f"].items()) == list(_fastavro_one(STRINGS, repeated)["f"].items())


def test_deep_nesting_is_declined_not_a_crash() -> None:
    """A recursive schema nests as deep as the bytes say; the decoder stops at its bound."""
    decoder = DECODERS["Every"]
    record = {
        "flag": True,
        "ratio": 0.5,
        "score": 1.0,
        "blob": b"",
        "level": "low",
        "levels": [],
        "nothing": None,
        "tags": {},
        "parts": [],
        "choice": None,
        "chain": None,
    }
    chain = None
    for i in range(20):
        chain = {"value": i, "next": chain}
    assert _sound("Every", _encode("Every", {**record, "chain": chain})) is not None
    deep = _encode("Every", record)[:-1] + (_long(1) + _long(0)) * 100_000 + b"\x00"
    assert decoder.decode(deep, 0) is None


@pytest.mark.parametrize(
    "schema",
    [
        {
            "type": "record",
            "name": "R",
            "fields": [{"name": "f", "type": {"type": "fixed", "name": "F", "size": 2}}],
        },
        {
            "type": "record",
            "name": "R",
            "fields": [{"name": "f", "type": {"type": "int", "logicalType": "date"}}],
        },
        {"type": "record", "name": "R", "fields": [{"name": "f", "type": "Undefined"}]},
        {
            "type": "record",
            "name": "R",
            "fields": [{"name": "f", "type": "int"}, {"name": "f", "type": "int"}],
        },
        {"type": "error", "name": "R", "fields": []},
        {"type": "array", "items": "int"},
        "string",
    ],
)
def test_schemas_it_cannot_mirror_are_refused(schema: Any) -> None:
    with pytest.raises(ValueError):
        _native.Decoder(json.dumps(schema))


def test_the_raw_schema_with_timestamps_is_refused() -> None:
    """The .avsc as written has timestamp logical types, which fastavro turns into datetimes."""
    with pytest.raises(ValueError):
        _native.Decoder(json.dumps(schemas.raw("CallEvent")))


def _plain_both(values: list[bytes], monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    native = [codec.plain_record(v, None, "CallEvent") for v in values]
    with monkeypatch.context() as m:
        m.setattr(codec, "_body_reader", codec._fastavro_reader)
        slow = [codec.plain_record(v, None, "CallEvent") for v in values]
    return native, slow


def _taken(value: bytes) -> Any:
    """What the worker makes of a message (pipeline/stream/runner.py: feed): plain_record's
    record, else decode_value's records and rejections."""
    record = codec.plain_record(value, None, "CallEvent")
    if record is not None:
        return [_shape(record)], []
    out = codec.decode_value(value, "CallEvent", partition=0, offset=1)
    return [_shape(r) for r in out.records], [(r.reason, r.index, r.field, r.raw) for r in out.rejections]


def test_every_record_is_read_natively_and_the_worker_can_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the worker logs at start and shows as callpipe_native_decoder on /metrics."""
    assert all(codec.native_decoding(name) for name in NAMES)
    with monkeypatch.context() as m:
        m.setattr(codec, "_body_reader", codec._fastavro_reader)
        assert not codec.native_decoding()


def test_plain_record_reads_canary_traffic_natively_as_with_fastavro(monkeypatch: pytest.MonkeyPatch) -> None:
    assert codec._body_reader("CallEvent") is not codec._fastavro_reader("CallEvent")  # the native one
    calls = canary.seeded(2_000).traffic.calls
    native, slow = _plain_both(codec.encode(calls, "CallEvent", "avro", 1), monkeypatch)
    assert all(r is not None for r in native)
    assert [_shape(r) for r in native] == [_shape(r) for r in slow] == [_shape(c) for c in calls]


def test_plain_record_on_hostile_messages_natively_as_with_fastavro(monkeypatch: pytest.MonkeyPatch) -> None:
    """The known-bad messages (tests/bad_inputs/) and calls with hostile strings in their
    identifiers and free text: the same records and rejections either way."""
    bad = Path(__file__).resolve().parent.parent / "bad_inputs"
    values = [
        p.read_bytes() for p in sorted(bad.rglob("*")) if p.is_file() and p.suffix not in (".py", ".md")
    ]
    hostile = ["", " ", "\t", "a\x00b", "x" * 300, "\u200b", "\u2028", "😀", "𝔘\U0010ffff", "\x7f", "é" * 40]
    calls = canary.seeded(40).traffic.calls
    damaged = [
        {**call, field: s}
        for call in calls
        for s in hostile
        for field in ("event_id", "caller", "org_id", "transcript", "cell_id")
    ]
    damaged += [{**call, "attributes": {s: s for s in hostile}} for call in calls]
    damaged += [
        {**call, "device": {**call["device"], "device_id": s}}
        for call in calls
        if call["device"]
        for s in hostile
    ]
    values += codec.encode(damaged, "CallEvent", "avro", 1)
    native, slow = _plain_both(values, monkeypatch)
    # the native side declines more (identifiers beyond printable ASCII), never takes more...
    assert all(n is None or _shape(n) == _shape(s) for n, s in zip(native, slow, strict=True))
    assert any(n is None and s is not None for n, s in zip(native, slow, strict=True))
    assert any(r is None for r in native) and any(r is not None for r in native)
    # ...and what the worker makes of every message is the same either way
    taken = [_taken(v) for v in values]
    with monkeypatch.context() as m:
        m.setattr(codec, "_body_reader", codec._fastavro_reader)
        assert [_taken(v) for v in values] == taken
