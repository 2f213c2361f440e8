"""Validation and normalization of CallEvents; secret-named attributes stripped first."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import schemas
from pipeline.policy import DEFAULT_SECRET_NAMES
from pipeline.reasons import Drop, Reason, Stage
from pipeline.secret_names import is_secret_name, strip_secrets, strip_secrets_json
from pipeline.validate import MAX_DURATION_S, validate_batch

NOW = 1_710_500_000_000  # 2024-03-15T10:53:20Z
T0 = NOW - 3_600_000


def call(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": "ev-1",
        "account_id": "acct-1",
        "org_id": "org-1",
        "carrier_id": "gb-carrier-1",
        "kind": "voice",
        "direction": "outbound",
        "caller": "+44 20 7946 0958",
        "callee": "0161 496 0753",
        "started_at": T0,
        "answered_at": T0 + 5_000,
        "ended_at": T0 + 65_000,
        "duration_s": 60,
        "status": "answered",
        "cell_id": "234-15-1234-5678",
        "caller_ip": "203.0.113.45",
        "device": {"device_id": "dev-1", "device_type": "phone", "os": "iOS 17", "app_version": "2.4.1"},
        "recording_uri": "s3://rec/1.wav",
        "transcript": "hello",
        "attributes": {"plan": "gold"},
    }
    record.update(overrides)
    return record


def one(record: Any) -> tuple[Reason | None, dict[str, Any] | None]:
    out = validate_batch([record], DEFAULT_SECRET_NAMES, NOW)
    if out.rejections:
        (rej,) = out.rejections
        assert rej.stage == Stage.VALIDATE and rej.index == 0
        return rej.reason, None
    return None, out.records[0]


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("user_password", True),
        ("PIN", True),
        ("sim_pin", True),
        ("authToken", True),
        ("x-api-key", True),
        ("apiKey", True),
        ("APIKey", True),
        ("userpassword", True),
        ("Client-Secret", True),
        ("session_id", True),
        ("credentials", True),
        ("otp", True),
        ("plan", False),
        ("pinned_version", False),
        ("spinner", False),
        ("author", False),
        ("opinion", False),
        ("region", False),
    ],
)
def test_secret_names(key: str, secret: bool) -> None:
    assert is_secret_name(key, DEFAULT_SECRET_NAMES) is secret


def test_strip_secrets_keeps_everything_else() -> None:
    record = call(attributes={"plan": "gold", "userPassword": "hunter2", "PIN": "1234"})
    stripped = strip_secrets(record, DEFAULT_SECRET_NAMES)
    assert stripped["attributes"] == {"plan": "gold"}
    assert record["attributes"]["PIN"] == "1234"  # the input is not changed
    assert {k: v for k, v in stripped.items() if k != "attributes"} == {
        k: v for k, v in record.items() if k != "attributes"
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"attributes": {"pin": "1234", "plan": "gold"}}', {"attributes": {"plan": "gold"}}),
        (b'[{"attributes": {"authToken": "t"}}, 7]', [{"attributes": {}}, 7]),
        (b'{"attributes": null}', {"attributes": None}),
    ],
)
def test_strip_secrets_json(raw: bytes, expected: Any) -> None:
    assert orjson.loads(strip_secrets_json(raw, DEFAULT_SECRET_NAMES)) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b'{"attributes": {"password": "hunter2", "plan": "gold"',  # truncated JSON
        b'{"attributes": {"password": hunter2, "plan": "gold"}}',  # unquoted value
    ],
)
def test_strip_secrets_from_broken_json_masks_values(raw: bytes) -> None:
    out = strip_secrets_json(raw, DEFAULT_SECRET_NAMES)
    assert b"hunter2" not in out
    assert b'"plan": "gold"' in out


def test_strip_secrets_leaves_binary_alone() -> None:
    raw = b"\x00\x00\x00\x00\x01\xff\xfe"
    assert strip_secrets_json(raw, DEFAULT_SECRET_NAMES) == raw


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({}, None),
        ({"event_id": None}, Reason.MISSING_FIELD),
        ({"callee": None}, Reason.MISSING_FIELD),
        ({"device": {"device_type": "phone", "os": "x", "app_version": "1"}}, Reason.MISSING_FIELD),
        ({"started_at": "2024-03-15T10:00:00Z"}, Reason.WRONG_TYPE),
        ({"duration_s": True}, Reason.WRONG_TYPE),
        ({"duration_s": 1.5}, Reason.WRONG_TYPE),
        ({"attributes": {"plan": 3}}, Reason.WRONG_TYPE),
        ({"device": "phone"}, Reason.WRONG_TYPE),
        ({"kind": "fax"}, Reason.UNKNOWN_ENUM),
        ({"status": "ANSWERED"}, Reason.UNKNOWN_ENUM),
        ({"event_id": ""}, Reason.BAD_ID),
        ({"account_id": "   "}, Reason.BAD_ID),
        ({"org_id": "o" * 129}, Reason.BAD_ID),
        ({"caller": "1" * 65}, Reason.BAD_ID),
        ({"device": {"device_id": "", "device_type": "phone", "os": "x", "app_version": "1"}}, Reason.BAD_ID),
        ({"started_at": 900_000_000_000, "answered_at": None, "ended_at": None}, Reason.BAD_TIME),
        ({"started_at": NOW + 2 * 86_400_000, "answered_at": None, "ended_at": None}, Reason.BAD_TIME),
        ({"answered_at": T0 - 1}, Reason.BAD_TIME),
        ({"ended_at": T0 + 1_000}, Reason.BAD_TIME),  # before answered_at
        ({"answered_at": None, "ended_at": T0 - 1}, Reason.BAD_TIME),
        ({"duration_s": -1}, Reason.BAD_DURATION),
        ({"duration_s": MAX_DURATION_S + 1}, Reason.BAD_DURATION),
        ({"duration_s": MAX_DURATION_S}, None),
        ({"answered_at": None, "ended_at": None, "duration_s": 0, "status": "busy"}, None),
        ({"started_at": NOW + 3_600_000, "answered_at": None, "ended_at": None}, None),  # clock skew
    ],
)
def test_reasons(overrides: dict[str, Any], reason: Reason | None) -> None:
    assert one(call(**overrides))[0] == reason


def test_not_a_record_is_malformed() -> None:
    assert one(["not", "a", "record"])[0] == Reason.MALFORMED


def test_missing_required_field() -> None:
    for name in schemas.required_fields("CallEvent"):
        record = call()
        del record[name]
        assert one(record)[0] == Reason.MISSING_FIELD, name


def test_duplicates_within_a_batch() -> None:
    batch = [call(event_id="a"), call(event_id="b"), call(event_id="a"), call(event_id="a", duration_s=-1)]
    out = validate_batch(batch, DEFAULT_SECRET_NAMES, NOW)
    assert out.indices == [0, 1]
    assert [(r.offset, r.reason) for r in out.rejections] == [(2, Reason.DUPLICATE), (3, Reason.BAD_DURATION)]


def test_output_holds_exactly_the_schema_fields() -> None:
    record = call(extra="dropped")
    del record["cell_id"]
    record["device"] = {**record["device"], "serial": "x"}
    _, out = one(record)
    assert out is not None
    assert list(out) == [f["name"] for f in schemas.raw("CallEvent")["fields"]]
    assert out["cell_id"] is None
    assert set(out["device"]) == {"device_id", "device_type", "os", "app_version"}


def test_secrets_stripped_and_counted() -> None:
    out = validate_batch(
        [call(attributes={"plan": "gold", "pin": "1234", "api_key": "k"})], DEFAULT_SECRET_NAMES, NOW
    )
    assert out.records[0]["attributes"] == {"plan": "gold"}
    assert out.drops[Drop.SECRET_ATTRIBUTE] == 2


@pytest.mark.parametrize(
    ("caller", "callee", "carrier", "expected", "regions"),
    [
        # the other number's region reads the national one
        ("+44 20 7946 0958", "0161 496 0753", "c1", ("+442079460958", "+441614960753"), ("GB",)),
        ("(415) 555-2671", "+1 212 555 0147", "c1", ("+14155552671", "+12125550147"), ("US",)),
        # neither international: the carrier's region
        ("030 12345678", "030 901820", "de-telco", ("+493012345678", "+4930901820"), ("DE",)),
        (
            "0044 20 7946 0958",
            "06 12 34 56 78",
            "carrier_FR_2",
            ("+442079460958", "+33612345678"),
            ("GB", "FR"),
        ),
        # no region to read it in, or not a valid number: kept as given
        ("020 7946 0958", "0161 496 0753", "c1", ("020 7946 0958", "0161 496 0753"), ()),
        ("+44 20 7946 0958", "12", "c1", ("+442079460958", "12"), ("GB",)),
        ("anonymous", "+1 212 555 0147", "c1", ("anonymous", "+12125550147"), ("US",)),
    ],
)
def test_phone_normalization(
    caller: str, callee: str, carrier: str, expected: tuple[str, str], regions: tuple[str, ...]
) -> None:
    out = validate_batch([call(caller=caller, callee=callee, carrier_id=carrier)], DEFAULT_SECRET_NAMES, NOW)
    (record,) = out.records
    assert (record["caller"], record["callee"]) == expected
    assert out.regions == [regions]


def test_input_records_are_not_changed() -> None:
    record = call(attributes={"pin": "1", "plan": "gold"})
    before = orjson.dumps(record)
    validate_batch([record], DEFAULT_SECRET_NAMES, NOW)
    assert orjson.dumps(record) == before


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Avro JSON encoding of the union: {"map": {...}}
        (
            b'{"attributes": {"map": {"sip_password": "x", "plan": "gold"}}}',
            {"attributes": {"map": {"plan": "gold"}}},
        ),
        # an unknown top-level field the decoder would ignore still must not reach a dead letter
        (b'{"event_id": "e", "password": "hunter2"}', {"event_id": "e"}),
        (b'"just a string"', "just a string"),
    ],
)
def test_strip_secrets_json_at_any_depth(raw: bytes, expected: Any) -> None:
    assert orjson.loads(strip_secrets_json(raw, DEFAULT_SECRET_NAMES)) == expected


def test_strip_secrets_passes_non_records_through() -> None:
    assert strip_secrets("raw text", DEFAULT_SECRET_NAMES) == "raw text"


def test_the_one_parse_resolution_agrees_with_the_reference_on_carrier_traffic() -> None:
    """normalize_numbers resolves each spelling once (pipeline/memo.py) with one parse per
    region hint; it must give what the reference `_resolve` gives, and the facts it leaves for
    pseudonymization must be phone_facts' own."""
    from pipeline.carrier.generate import generate_traffic
    from pipeline.memo import Memo
    from pipeline.phones import _resolve, carrier_region, international_region, normalize_numbers
    from pipeline.pseudonymize import phone_facts

    calls = generate_traffic(11, 3_000, 1_767_225_600_000, accounts=800).calls
    odd = [
        "+44 20 7946 0958",
        "0044 20 7946 0958",
        "020 7946 0958",
        "+1 (650) 253-0000 ext. 12",
        "not a number",
        "",
        "+999 123",
        "00",
        "(03) 1219-9622",
        "1-800-FLOWERS",
    ]
    memo = Memo()
    for i, call in enumerate(calls):
        if i < len(odd):
            call = {**call, "caller": odd[i]}
        record = dict(call)
        normalize_numbers(record, memo)
        fallback = carrier_region(call["carrier_id"])
        for mine, written, other in (
            (record["caller"], call["caller"], call["callee"]),
            (record["callee"], call["callee"], call["caller"]),
        ):
            expected, _region = _resolve(written, international_region(other), fallback)
            assert mine == expected, written
            if mine.startswith("+") and mine != written:
                assert memo.get(("facts", mine), lambda: None) == phone_facts(mine)


def test_the_unrolled_checker_gives_the_reasons_and_rows_of_the_rules_on_every_kind_of_damage() -> None:
    """validate_batch runs the schema's field rules unrolled into one function (`checker`); it
    must agree with `check_fields` + `project`, field by field and damage by damage."""
    from pipeline.carrier.generate import generate_traffic
    from pipeline.field_rules import check_fields, checker, fast_checker, project, schema_rules

    rules = schema_rules()
    check = checker()
    calls = generate_traffic(12, 200, 1_767_225_600_000).calls
    damage: list[Any] = [None, 7, 1.5, True, "", " ", "a\x00b", "x" * 200, {"k": 1}, {"k": "v"}, ["l"], "zz"]
    cases = []
    for i, call in enumerate(calls):
        cases.append(call)
        name = rules[i % len(rules)].name
        for bad in damage:
            cases.append({**call, name: bad})
        if call.get("device"):
            for bad in damage:
                cases.append({**call, "device": {**call["device"], "os": bad}})
                cases.append({**call, "device": {**call["device"], "device_id": bad}})
        cases.append({k: v for k, v in call.items() if k != name})
        cases.append({**call, "unknown_field": 1})
        cases.append(dict(reversed(call.items())))  # another order: the fast form hands it on
        cases.append({**call, "started_at": True, "duration_s": 1.0})
    fast = fast_checker()
    for case in cases:
        expected = check_fields(case, rules)
        reason, row = check(case)
        assert reason == expected, case
        if expected is None:
            assert row == project(case, rules)
        assert fast(case) == (reason, row), case
        if row is not None:  # the same keys in the same order, the device a copy of its own
            got = fast(case)[1]
            assert got is not None and list(got) == list(row) and got is not case
            assert list(got["device"] or ()) == list(row["device"] or ())
            assert got["device"] is None or got["device"] is not case["device"]


def test_what_the_decoders_admit_the_field_rules_accept_so_the_worker_may_skip_them() -> None:
    """The worker asks the field rules nothing of a record a decoder admitted (`admitted_copier`):
    every such record, from JSON with every kind of damage and from Avro with hostile strings,
    must be one the rules accept, and the copy must be the rules' own row, device copied too."""
    from pipeline import codec
    from pipeline.carrier.generate import generate_traffic
    from pipeline.field_rules import admitted_copier, fast_checker, schema_rules

    rules = schema_rules()
    calls = generate_traffic(12, 200, 1_767_225_600_000).calls
    damage: list[Any] = [None, 7, -(2**40), 1.5, True, "", " ", "a\x00b", "x" * 200, "\u200b", "😀", {"k": 1}]
    damage += [{"k": "v"}, ["l"], "zz", "2024-03-15T10:53:20Z", 2**63]
    values: list[bytes] = []
    for i, call in enumerate(calls):
        name = rules[i % len(rules)].name
        values.append(orjson.dumps(call))
        for bad in damage:
            values.append(orjson.dumps({**call, name: bad}))
            if call.get("device"):
                values.append(orjson.dumps({**call, "device": {**call["device"], "device_id": bad}}))
        values.append(orjson.dumps({k: v for k, v in call.items() if k != name}))
        values.append(orjson.dumps({**call, "unknown_field": 1}))
        values.append(orjson.dumps(dict(reversed(call.items()))))
    strings: list[Any] = ["", " ", "\t", "a\x00b", "x" * 200, "\u200b", "\u2028", "😀", "ok"]
    avro_calls = []
    for i, call in enumerate(calls):
        for s in strings:
            field = ("event_id", "caller", "cell_id", "org_id")[i % 4]
            avro_calls.append({**call, field: s})
            if call.get("device"):
                avro_calls.append({**call, "device": {**call["device"], "device_id": s}})
    values += codec.encode(avro_calls, "CallEvent", "avro")
    values += codec.encode(avro_calls, "CallEvent", "avro", 50)
    values += codec.encode(avro_calls, "CallEvent", "json", 50)
    fast, admitted = fast_checker(), admitted_copier()
    seen = 0
    for value in values:
        decoded = codec.decode_value(value, "CallEvent")
        plain = codec.plain_record(value, None, "CallEvent")
        for record in decoded.records + ([plain] if plain is not None else []):
            reason, row = fast(record)
            assert reason is None and row is not None, record
            assert admitted(record) == (None, row)
            got = admitted(record)[1]
            assert got is not None and got is not record and list(got) == list(row)
            assert got["device"] is None or got["device"] is not record["device"]
            seen += 1
    assert seen > 2 * len(calls)  # the damage left most events admissible, and all were asked
