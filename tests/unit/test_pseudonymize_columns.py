"""The analytics zone per column: the very table the row path gives, from the vault zone's table,
remembering under the row path's own memo entries."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import pseudonymize_columns
from pipeline.bench.bench_columns import chain_batch
from pipeline.bench.canary import KEY, seeded
from pipeline.keys import Domain
from pipeline.memo import Memo
from pipeline.pseudonymize import row_pseudonymizer
from pipeline.pseudonymize_columns import FACTS, analytics_columns, column_plan, plan_of, tokens
from schemas.zones import analytics_schema, vault_schema
from sinks.arrow import analytics_table, vault_table


def vault_row(n: int, **overrides: Any) -> dict[str, Any]:
    """A vault row (the zone's columns in order, lineage last) of a GB call."""
    row: dict[str, Any] = {
        "event_id": f"ev-{n}",
        "account_id": "acct-1",
        "org_id": "org-1",
        "carrier_id": "gb-carrier",
        "kind": "voice",
        "direction": "inbound",
        "caller": "+447911123456",
        "callee": "+442079460958",
        "started_at": 1_710_000_000_000 + n,
        "answered_at": 1_710_000_001_000,
        "ended_at": 1_710_000_061_000,
        "duration_s": 60,
        "status": "answered",
        "cell_id": "234-15-1234-56789",
        "caller_ip": "203.0.113.45",
        "device": {"device_id": "dev-1", "device_type": "phone", "os": "iOS 17", "app_version": "2.4.1"},
        "recording_uri": "s3://rec/1.wav",
        "transcript": None,
        "attributes": {"plan": "gold"},
        "source_partition": 0,
        "source_offset": n,
        "source_index": 0,
    }
    row.update(overrides)
    assert list(row) == vault_schema().names
    return row


def row_path(rows: list[dict[str, Any]], regions: list[tuple[str, ...]], memo: Memo) -> pa.Table:
    pseudonymize = row_pseudonymizer()
    return analytics_table([pseudonymize(row, KEY, r, memo) for row, r in zip(rows, regions, strict=True)])


def remembered(memo: Memo) -> dict[Any, Any]:
    """What a memo holds, its HMAC states (functions) by key only."""
    return {k: (None if k[0] == "hmac" else v) for k, v in memo._values.items()}


def assert_same(
    rows: list[dict[str, Any]], regions: list[tuple[str, ...]], max_entries: int = 10_000
) -> None:
    row_memo, column_memo = Memo(max_entries), Memo(max_entries)
    want = row_path(rows, regions, row_memo)
    got = analytics_columns(vault_table(rows), regions, KEY, column_memo)
    assert got.schema == analytics_schema()
    assert got.equals(want), [n for n in want.schema.names if not got[n].equals(want[n])]
    if max_entries >= 10_000:  # nothing forgotten: what the columns remember, the rows do alike
        column, row = remembered(column_memo), remembered(row_memo)
        assert {k: row.get(k) for k in column} == column  # the columns make tokens without memory
        facts = column_memo.table(FACTS)  # the columns' table of what `_phone` remembers
        assert facts and {number: row.get(("facts", number)) for number in facts} == facts


def test_the_plan_covers_the_analytics_schema() -> None:
    columns = [c for step in column_plan() for c in step.columns]
    assert [*columns, "key_version", "source_partition", "source_offset", "source_index"] == list(
        analytics_schema().names
    )


def test_a_transform_without_a_column_form_fails_the_plan() -> None:
    def novel(value: Any, key: Any, regions: Any, memo: Memo) -> tuple[Any, ...]:
        return (value,)

    with pytest.raises(ValueError, match="no column transform for field event_id"):
        plan_of([("event_id", None, ("event_id",), novel)])


@pytest.mark.parametrize(("batch", "events"), [(1, 40), (500, 2_000)])
def test_seeded_traffic_gives_the_chains_table(batch: int, events: int) -> None:
    canary = seeded(events)
    calls = canary.traffic.calls
    shared = Memo()  # kept across batches, as a worker keeps it
    for i in range(0, events, batch):
        part = chain_batch(calls[i : i + batch], canary, KEY)
        want = analytics_table(part.rows)
        assert analytics_columns(part.vault, part.regions, KEY, Memo()).equals(want)
        assert analytics_columns(part.vault, part.regions, KEY, shared).equals(want)


def test_seeded_traffic_after_the_row_path_and_as_a_writer_may_hand_it_over() -> None:
    canary = seeded(3_000)
    part = chain_batch(canary.traffic.calls, canary, KEY)
    # the traffic holds what the edge cases below hold, in bulk (a guard on the test itself)
    assert 0 < part.vault["transcript"].null_count < part.vault.num_rows
    assert 0 < part.vault["attributes"].null_count < part.vault.num_rows
    assert len(set(part.regions)) > 1
    want = analytics_table(part.rows)
    memo = Memo()
    row_path(part.vault_rows, part.regions, memo)  # the column path finds the row path's entries
    assert analytics_columns(part.vault, part.regions, KEY, memo).equals(want)
    # filtered, sliced (a map's children are not sliced with it) and chunked tables
    keep = [i % 3 != 0 for i in range(part.vault.num_rows)]
    kept = [i for i, k in enumerate(keep) if k]
    filtered = part.vault.filter(pa.array(keep))
    got = analytics_columns(filtered, [part.regions[i] for i in kept], KEY, Memo())
    assert got.equals(analytics_table([part.rows[i] for i in kept]))
    sliced = analytics_columns(part.vault.slice(7, 300), part.regions[7:307], KEY, Memo())
    assert sliced.equals(analytics_table(part.rows[7:307]))
    chunked = pa.concat_tables([part.vault.slice(0, 100), part.vault.slice(100)])
    assert analytics_columns(chunked, part.regions, KEY, Memo()).equals(want)


def test_an_empty_table() -> None:
    got = analytics_columns(vault_schema().empty_table(), [], KEY, Memo())
    assert got.equals(analytics_table([]))
    assert got.schema == analytics_schema()


def test_all_null_columns() -> None:
    nulls = dict(
        cell_id=None, caller_ip=None, device=None, recording_uri=None, transcript=None, attributes=None
    )
    assert_same([vault_row(n, **nulls) for n in range(3)], [("GB",), (), ("US", "GB")])


def test_nulls_beside_values() -> None:
    rows = [
        vault_row(0),
        vault_row(1, device=None, attributes=None, cell_id=None, caller_ip=None, recording_uri=None),
        vault_row(2, attributes={}, transcript="ring 07911 123456"),
        vault_row(
            3, device={"device_id": "dev-2", "device_type": "tablet", "os": "Android", "app_version": "1"}
        ),
    ]
    assert_same(rows, [("GB",)] * 4)


def test_cells_ips_and_numbers_off_the_common_form() -> None:
    rows = [
        vault_row(0, cell_id="weird cell 42", caller_ip="2001:db8:85a3:1:2:3:4:5"),
        vault_row(1, cell_id="234-15-1234", caller_ip="not-an-ip", caller="0207946 0958"),
        vault_row(2, cell_id="310-260-7F3A-1B2C", caller_ip="::ffff:198.51.100.7", callee="+999123"),
        vault_row(3, cell_id="weird cell 42", caller_ip=" 10.1.2.3 ", callee="+18005550199"),
        vault_row(4, caller_ip="not-an-ip", caller="0207946 0958"),  # None remembered as an answer
        # IPv6 forms that carry an IPv4 address: 6to4, Teredo, NAT64, ISATAP
        vault_row(5, caller_ip="2002:c000:0204::1"),
        vault_row(6, caller_ip="2001:0:4136:e378:8000:63bf:3fff:fdd2"),
        vault_row(7, caller_ip="64:ff9b::5db8:d822"),
        vault_row(8, caller_ip="2001:db8:1:2:200:5efe:5db8:d822"),
        vault_row(9, caller_ip="2002:c000:0204::1"),
    ]
    assert_same(rows, [("GB",)] * len(rows))
    got = analytics_columns(vault_table(rows), [("GB",)] * len(rows), KEY, Memo())
    prefixes = got.column("caller_ip_prefix").to_pylist()[5:]
    assert prefixes == ["192.0.2.0/24", "192.0.2.0/24", "93.184.216.0/24", "93.184.216.0/24", "192.0.2.0/24"]


def test_free_text_with_numbers_emails_and_secret_looking_values() -> None:
    text = "call me on 020 7946 0958 or jane@example.com, or +1 415 555 2671 after 10:30"
    attributes = {
        "note": "password=hunter2 from 198.51.100.7",
        "api": "sk_live_51HxQ2eZvKYlo2C0aBcDeFgHiJ",
        "sip": "e9fcb779fa35da84@sbc6.carrier.net",
        "callback": "020 7946 0958",
        "long": "x" * 70 + " 020 7946 0958",  # past MAX_REMEMBERED_VALUE: never remembered
        "plan": "gold",
    }
    rows = [vault_row(n, transcript=text, attributes=attributes) for n in range(4)]
    rows.append(vault_row(4, transcript="nothing to see", attributes={"plan": "gold"}))
    regions = [("GB",), ("US",), ("GB",), (), ("GB", "US")]  # one value, several regions
    assert_same(rows, regions)
    got = analytics_columns(vault_table(rows), regions, KEY, Memo())
    assert "jane@example.com" not in str(got.column("transcript").to_pylist())
    assert got.column("attributes")[0].as_py()[0] == ("note", "password=hunter2 from [IP]")


PII_KEYS = [
    {"callback:+14155550123": "yes", "bob@example.com": "vip", "note": "ring +14155550123"},
    {"cb 07911 123456": "yes", "plan": "gold"},  # a national number: GB's, not US's
    {"a@example.com": "1", "b@example.org": "2", "plan": "gold", "c@example.net": "3"},
    {"[EMAIL]": "literal", "[EMAIL]#2": "also", "bob@example.com": "vip"},
    {"plan": "gold", "from 198.51.100.7": "from 198.51.100.7"},  # one text as key and value
    {"x" * 70 + " +14155550123": "long"},  # past MAX_REMEMBERED_VALUE: never remembered
]


def test_attribute_keys_redacted_as_the_row_path_does() -> None:
    rows = [vault_row(n, attributes=a) for n, a in enumerate(PII_KEYS * 2)]
    rows += [vault_row(len(rows)), vault_row(len(rows) + 1, attributes=None)]
    regions = [("GB",), ("US",), (), ("GB", "US")] * 3 + [("GB",), ("GB",)]
    assert_same(rows, regions)
    for entries in (1, 3, 50):
        assert_same(rows, regions, max_entries=entries)
    got = analytics_columns(vault_table(rows), regions, KEY, Memo()).column("attributes").to_pylist()
    assert got[0] == [("callback:[PHONE]", "yes"), ("[EMAIL]", "vip"), ("note", "ring [PHONE]")]
    assert got[1] == [("cb 07911 123456", "yes"), ("plan", "gold")]  # US: no such number
    assert got[7] == [("cb [PHONE]", "yes"), ("plan", "gold")]  # GB
    assert got[2] == [("[EMAIL]", "1"), ("[EMAIL]#2", "2"), ("plan", "gold"), ("[EMAIL]#3", "3")]
    assert got[3] == [("[EMAIL]", "literal"), ("[EMAIL]#2", "also"), ("[EMAIL]#3", "vip")]
    assert got[4] == [("plan", "gold"), ("from [IP]", "from [IP]")]
    for raw in ("+14155550123", "bob@example.com", "198.51.100.7", "@example"):
        assert raw not in str(got), raw
    # sliced: a map's children are not sliced with it
    table = vault_table(rows)
    sliced = analytics_columns(table.slice(3, 6), regions[3:9], KEY, Memo())
    assert sliced.equals(row_path(rows[3:9], regions[3:9], Memo()))


def test_device_os_and_app_version_written_with_personal_data_are_redacted_alike() -> None:
    def device(os: str, version: str) -> dict[str, Any]:
        return {"device_id": "dev-1", "device_type": "phone", "os": os, "app_version": version}

    rows = [
        vault_row(0, device=device("iOS +14155550177", "bob@example.com")),
        vault_row(1, device=device("iOS 17.2", "5.12.3")),  # ordinary values stay
        vault_row(2, device=device("Android 07911 123456", "1")),
        vault_row(3, device=None),
        vault_row(4, device=device("iOS +14155550177", "bob@example.com")),
    ]
    regions = [("US",), ("GB",), ("GB",), ("GB",), ("GB", "US")]
    assert_same(rows, regions)
    assert_same(rows, regions, max_entries=1)
    got = analytics_columns(vault_table(rows), regions, KEY, Memo())
    assert got.column("device_os").to_pylist() == [
        "iOS [PHONE]",
        "iOS 17.2",
        "Android [PHONE]",
        None,
        "iOS [PHONE]",
    ]
    assert got.column("device_app_version").to_pylist() == ["[EMAIL]", "5.12.3", "1", None, "[EMAIL]"]


def test_duplicates_across_rows_and_a_memo_that_forgets_mid_batch() -> None:
    canary = seeded(600)
    part = chain_batch(canary.traffic.calls, canary, KEY)
    rows = part.vault_rows + [vault_row(n) for n in range(5)] * 3
    regions = part.regions + [("GB",)] * 15
    for entries in (1, 3, 50):
        assert_same(rows, regions, max_entries=entries)


def test_one_regions_tuple_per_row() -> None:
    with pytest.raises(ValueError, match="one regions tuple per row"):
        analytics_columns(vault_table([vault_row(0)]), [], KEY, Memo())


def test_a_null_map_value_is_refused_without_quoting_the_map() -> None:
    vault = vault_table([vault_row(0, attributes={"tel": "07911 123456", "gap": None})])
    with pytest.raises(ValueError, match="column attributes") as caught:
        analytics_columns(vault, [("GB",)], KEY, Memo())
    assert "07911" not in str(caught.value)


# What the column form answers by regular expression over the column, or natively, held to the
# row form at the edges of those fast ways: cell ids of other scripts' alphanumerics, attribute
# texts one character past an email address whole or past the remembered length.
CELLS = [
    "310-260-7F3A-1B2C",
    "٣١٠-٢٦٠-١-٢",
    "ab-cd-ef-gh",
    "a-b-c-d\n",
    "a-b-c",
    "a-b-c-d-e",
    "a--c-d",
    "x_y-1-2-3",
]
TEXTS = [
    "e9fcb779fa35da84@sbc6.carrier.net",
    "e9fcb779fa35da84@sbc6.carrier.net\n",
    "e9fcb779fa35da84@sbc6.carrier.n3t",
    "a@b.cc",
    "a@b.c",
    "a" * 52 + "@example.com",  # 64 characters: "[EMAIL]" whole
    "a" * 53 + "@example.com",  # 65: the detector's way
    "ünïcode@exämple.com",
    "plain words",
    "plain words\twith tab",
    "Ｔｅｌ ０２０ ７９４６ ０９５８",  # full-width digits: the detector reads them
    "@",
    "",
]


def test_cells_and_attribute_texts_at_the_edges_of_the_column_ways() -> None:
    rows = [
        vault_row(
            n, cell_id=CELLS[n % len(CELLS)], attributes={TEXTS[n % len(TEXTS)]: TEXTS[-1 - n % len(TEXTS)]}
        )
        for n in range(len(CELLS) * len(TEXTS))
    ]
    assert_same(rows, [("GB",)] * len(rows))
    got = analytics_columns(vault_table(rows), [("GB",)] * len(rows), KEY, Memo())
    assert got.column("cell_area").to_pylist()[:3] == ["310-260-7F3A", "٣١٠-٢٦٠-١", "ab-cd-ef"]


@given(st.lists(st.text(max_size=40), max_size=30), st.integers(0, 5), st.sampled_from(list(Domain)))
def test_tokens_of_a_column_are_the_keys_tokens(values: list[str], start: int, domain: Domain) -> None:
    column = pa.array(["before"] * start + values, pa.string()).slice(start)  # a sliced array too
    assert tokens(KEY, domain, column).to_pylist() == [KEY.token(domain, v) for v in values]


def test_tokens_without_the_native_module_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    column = pa.array(["acct-1", "", "ü-7"], pa.string())
    native = tokens(KEY, Domain.ACCOUNT, column)
    monkeypatch.setattr(pseudonymize_columns, "_native", None)
    assert tokens(KEY, Domain.ACCOUNT, column).equals(native)


def test_tokens_refuse_nulls_and_other_types() -> None:
    for column in (pa.array(["a", None]), pa.array([1, 2]), pa.array(["a"], pa.large_string())):
        with pytest.raises(ValueError, match="string array without nulls"):
            tokens(KEY, Domain.ACCOUNT, column)


def test_native_tokens_refuse_offsets_that_leave_the_data() -> None:
    from pipeline import _native as native  # imported directly: a missing build fails, never skips

    for offsets in ([0, 10], [2, 1], [-1, 2]):
        with pytest.raises(ValueError, match="offsets"):
            native.tokens(KEY.secret, b"", np.array(offsets, np.int32).tobytes(), b"abc", 1, 32)
    with pytest.raises(ValueError, match="fewer offsets"):
        native.tokens(KEY.secret, b"", np.array([0, 1], np.int32).tobytes(), b"abc", 2, 32)
    with pytest.raises(ValueError, match="1 to 64"):
        native.tokens(KEY.secret, b"", np.array([0, 1], np.int32).tobytes(), b"abc", 1, 65)
