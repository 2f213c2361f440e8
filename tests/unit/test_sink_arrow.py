"""sinks.arrow: rows -> tables of the zone schemas -> sorted (dt, bucket) partitions."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.keys import Domain
from schemas.zones import analytics_schema, vault_schema
from sinks.arrow import (
    SUBJECT_COLUMN,
    RowsError,
    analytics_table,
    buckets_of,
    partition,
    to_table,
    vault_table,
    zone_schema,
)
from sinks.layout import ANALYTICS, VAULT, bucket_of
from tests.support.sink_rows import DAY_MS, KEY, T0, event, events, filled


@pytest.mark.parametrize(("zone", "build"), [(VAULT, vault_table), (ANALYTICS, analytics_table)])
def test_table_has_exactly_the_zone_schema(zone: str, build: object) -> None:
    rows = [e.vault if zone == VAULT else e.analytics for e in events(10)]
    table = build(rows)  # type: ignore[operator]
    assert table.schema.equals(zone_schema(zone))
    assert table.num_rows == 10
    assert table.column("event_id").to_pylist() == [r["event_id"] for r in rows]


def test_timestamps_from_epoch_ms_are_utc_milliseconds() -> None:
    row = event(1, account="a", started_at=T0 + 1234).vault
    row["answered_at"] = None
    table = vault_table([row])
    assert table.schema.field("started_at").type == pa.timestamp("ms", tz="UTC")
    assert table.column("started_at")[0].as_py() == datetime(2025, 11, 29, 0, 0, 1, 234000, tzinfo=UTC)
    assert table.column("answered_at")[0].as_py() is None


def test_nested_device_and_attributes_map() -> None:
    row = event(1, account="a", started_at=T0).vault
    row["device"] = {"device_id": "d-1", "device_type": "phone", "os": "iOS 17", "app_version": "1.2"}
    row["attributes"] = {"plan": "gold", "region": "eu"}
    table = vault_table([row])
    assert table.column("device")[0].as_py()["device_id"] == "d-1"
    assert dict(table.column("attributes")[0].as_py()) == {"plan": "gold", "region": "eu"}


def test_missing_optional_keys_are_null_and_unknown_keys_never_land() -> None:
    row = event(1, account="a", started_at=T0).analytics
    del row["transcript"]
    row["caller"] = "+447700900123"  # a raw field that must not reach analytics
    table = analytics_table([row])
    assert table.column("transcript")[0].as_py() is None
    assert "caller" not in table.schema.names


@pytest.mark.parametrize(
    ("zone", "column"),
    [(VAULT, "event_id"), (VAULT, "started_at"), (VAULT, "source_offset"), (ANALYTICS, "key_version")],
)
def test_null_in_required_column_names_the_column(zone: str, column: str) -> None:
    ev = event(1, account="a", started_at=T0)
    row = dict(ev.vault if zone == VAULT else ev.analytics)
    row[column] = None
    with pytest.raises(RowsError, match=column):
        to_table([row], zone_schema(zone))


def test_required_nested_field_checked_only_when_parent_present() -> None:
    ok = event(1, account="a", started_at=T0).vault
    ok["device"] = None
    bad = event(2, account="a", started_at=T0).vault
    bad["device"] = {"device_id": None, "device_type": "phone", "os": "x", "app_version": "1"}
    assert vault_table([ok]).num_rows == 1
    with pytest.raises(RowsError, match=r"device\.device_id"):
        vault_table([ok, bad])


def test_type_errors_never_quote_the_value() -> None:
    row = event(1, account="a", started_at=T0).vault
    row["duration_s"] = "+447700900123"
    with pytest.raises(RowsError) as info:
        vault_table([row])
    assert "447700900123" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_empty_batch_is_an_empty_table_of_the_schema() -> None:
    assert vault_table([]).schema.equals(vault_schema())
    assert analytics_table([]).num_rows == 0
    assert partition(vault_table([]), VAULT, pa.array([], pa.int32())) == []


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=50), st.integers(1, 64))
def test_buckets_of_matches_keys_bucket_of(accounts: list[str], buckets: int) -> None:
    tokens = [KEY.token(Domain.ACCOUNT, a) for a in accounts]
    assert buckets_of(tokens, buckets).to_pylist() == [bucket_of(t, buckets) for t in tokens]


@given(
    st.lists(st.text("0123456789abcdefABCDEF", min_size=1, max_size=40), min_size=1, max_size=50),
    st.integers(0, 3),
)
def test_buckets_of_any_hex_and_a_sliced_column_as_bucket_of_says(tokens: list[str], start: int) -> None:
    """The column form (the last 8 hex digits read per column) and the fallback (shorter
    tokens) give `bucket_of`'s answer, a sliced column too."""
    column = pa.array(["0" * 32] * start + tokens).slice(start)
    assert buckets_of(column, 7).to_pylist() == [bucket_of(t, 7) for t in tokens]


def test_buckets_of_rejects_null_tokens() -> None:
    with pytest.raises(RowsError):
        buckets_of(pa.array(["ab" * 16, None]), 8)


@pytest.mark.parametrize(
    ("started_at", "dt"),
    [
        (T0, "2025-11-29"),
        (T0 + DAY_MS - 1, "2025-11-29"),
        (T0 + DAY_MS, "2025-11-30"),
        (T0 - 1, "2025-11-28"),
        (0, "1970-01-01"),
        (-1, "1969-12-31"),
    ],
)
def test_dt_is_the_utc_day_of_started_at(started_at: int, dt: str) -> None:
    ev = event(1, account="a", started_at=started_at)
    [part] = partition(vault_table([ev.vault]), VAULT, buckets_of([ev.token], 8))
    assert part.dt == dt
    assert part.bucket == bucket_of(ev.token, 8)


@pytest.mark.parametrize("zone", [VAULT, ANALYTICS])
def test_partitions_cover_every_row_once_sorted_by_account(zone: str) -> None:
    evs = events(500, accounts=40, days=3)
    if zone == VAULT:
        table = vault_table([e.vault for e in evs])
        bucket_col = buckets_of([e.token for e in evs], 8)
    else:
        table = analytics_table([e.analytics for e in evs])
        bucket_col = buckets_of(table["account_token"], 8)
    parts = partition(table, zone, bucket_col)
    seen = [eid for p in parts for eid in p.table.column("event_id").to_pylist()]
    assert sorted(seen) == sorted(e.vault["event_id"] for e in evs)
    assert len({(p.dt, p.bucket) for p in parts}) == len(parts)
    account = SUBJECT_COLUMN[zone]
    for part in parts:
        assert part.table.schema.equals(zone_schema(zone))
        keys = list(
            zip(
                part.table.column(account).to_pylist(),
                part.table.column("started_at").to_pylist(),
                part.table.column("event_id").to_pylist(),
                strict=True,
            )
        )
        assert keys == sorted(keys)
        days = {ts.strftime("%Y-%m-%d") for ts in part.table.column("started_at").to_pylist()}
        assert days == {part.dt}


def test_vault_and_analytics_rows_of_an_event_land_in_the_same_partition() -> None:
    evs = events(300, accounts=25, days=2)
    vault_parts = partition(vault_table([e.vault for e in evs]), VAULT, buckets_of([e.token for e in evs], 8))
    at = analytics_table([e.analytics for e in evs])
    analytics_parts = partition(at, ANALYTICS, buckets_of(at["account_token"], 8))

    def placement(parts: list) -> dict[str, tuple[str, int]]:  # type: ignore[type-arg]
        return {eid: (p.dt, p.bucket) for p in parts for eid in p.table.column("event_id").to_pylist()}

    assert placement(vault_parts) == placement(analytics_parts)


def test_partition_needs_one_bucket_per_row() -> None:
    table = vault_table([filled(vault_schema(), 1), filled(vault_schema(), 2)])
    with pytest.raises(RowsError):
        partition(table, VAULT, pa.array([1], pa.int32()))


def test_analytics_fixture_follows_the_schema() -> None:
    assert set(event(1, account="a", started_at=T0).analytics) == set(analytics_schema().names)
