"""Retention, as properties: it never removes an unexpired row, always removes expired ones, nulls
exactly the category values older than their limit, and a second run changes nothing."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs import retention, retention_plan
from jobs.replace import write_parquet
from pipeline.policy import Policy, Retention
from schemas.clock import DAY_MS
from schemas.zones import analytics_schema, vault_schema
from sinks import crypt
from sinks.layout import ANALYTICS, VAULT, partition_dir

AS_OF = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
AS_OF_MS = int(AS_OF.timestamp() * 1000)
POLICY = Policy(retention=Retention(vault_days=10, analytics_days=20, recording_days=3, transcript_days=5))

# A row: (age in ms before AS_OF, bucket, has transcript, has recording)
rows_strategy = st.lists(
    st.tuples(
        st.one_of(
            st.integers(0, 25 * DAY_MS),
            # ages right at each limit, to the millisecond
            st.sampled_from([d * DAY_MS + e for d in (3, 5, 10, 20) for e in (-1, 0, 1)]),
        ),
        st.integers(0, 2),
        st.booleans(),
        st.booleans(),
    ),
    min_size=1,
    max_size=60,
)


def _vault_rows(rows: list[tuple[int, int, bool, bool]]) -> list[dict[str, Any]]:
    out = []
    for i, (age, _bucket, has_text, has_rec) in enumerate(rows):
        started = datetime.fromtimestamp((AS_OF_MS - age) / 1000, UTC)
        out.append(
            {
                "event_id": f"e{i:04d}",
                "account_id": f"a{i % 7}",
                "org_id": "o",
                "carrier_id": "c",
                "kind": "voice",
                "direction": "inbound",
                "caller": "+441",
                "callee": "+442",
                "started_at": started,
                "duration_s": 1,
                "status": "answered",
                "recording_uri": f"s3://r/{i}" if has_rec else None,
                "transcript": f"text {i}" if has_text else None,
                "source_partition": 0,
                "source_offset": i,
                "source_index": 0,
            }
        )
    return out


def _analytics_rows(vault: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "event_id": r["event_id"],
            "account_token": "t" + r["account_id"],
            "started_at": r["started_at"],
            "transcript": r["transcript"],
            "has_recording": r["recording_uri"] is not None,
            "key_version": "v1",
            "source_partition": 0,
            "source_offset": r["source_offset"],
            "source_index": 0,
        }
        for r in vault
    ]


def _write_lake(lake: Path, rows: list[tuple[int, int, bool, bool]]) -> None:
    vault = _vault_rows(rows)
    analytics = _analytics_rows(vault)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (r, (_age, bucket, _t, _rec)) in enumerate(zip(vault, rows, strict=True)):
        groups.setdefault((r["started_at"].strftime("%Y-%m-%d"), bucket), []).append(i)
    for (dt, bucket), idx in groups.items():
        for zone, data, schema in (
            (VAULT, vault, vault_schema()),
            (ANALYTICS, analytics, analytics_schema()),
        ):
            table = pa.Table.from_pylist([data[i] for i in idx], schema=schema)
            write_parquet(table, partition_dir(lake, zone, dt, bucket) / "f.parquet", zone)


def _read(lake: Path, zone: str) -> dict[str, dict[str, Any]]:
    files = sorted(lake.glob(f"{zone}/calls/dt=*/bucket=*/*.parquet"))
    if not files:
        return {}
    table = pa.concat_tables([crypt.read_table(f) for f in files])
    return {r["event_id"]: r for r in table.to_pylist()}


def _fingerprint(lake: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(lake)), p.stat().st_mtime_ns) for p in lake.rglob("*.parquet"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows_strategy)
def test_retention_keeps_exactly_the_unexpired_rows_and_values(
    rows: list[tuple[int, int, bool, bool]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lake = Path(tmp) / "lake"
        _write_lake(lake, rows)
        before = {VAULT: _read(lake, VAULT), ANALYTICS: _read(lake, ANALYTICS)}
        con = duckdb.connect()
        retention.run(con, lake, POLICY, AS_OF)
        limits = {VAULT: 10, ANALYTICS: 20}
        for zone in (VAULT, ANALYTICS):
            after = _read(lake, zone)
            cutoff = AS_OF - timedelta(days=limits[zone])
            expected = {e for e, r in before[zone].items() if r["started_at"] >= cutoff}
            assert set(after) == expected  # never an unexpired row removed, every expired one gone
            for event_id, row in after.items():
                old = before[zone][event_id]
                text_cut = AS_OF - timedelta(days=5)
                assert row["transcript"] == (None if row["started_at"] < text_cut else old["transcript"])
                if zone == VAULT:
                    rec_cut = AS_OF - timedelta(days=3)
                    assert row["recording_uri"] == (
                        None if row["started_at"] < rec_cut else old["recording_uri"]
                    )
                rest = {k: v for k, v in row.items() if k not in ("transcript", "recording_uri")}
                assert rest == {k: v for k, v in old.items() if k not in ("transcript", "recording_uri")}
        fingerprint = _fingerprint(lake)
        again = retention.run(con, lake, POLICY, AS_OF)
        assert again.summary.files_rewritten == again.summary.files_removed == 0
        assert _fingerprint(lake) == fingerprint  # re-running is a no-op


@settings(max_examples=200, deadline=None)
@given(rows_strategy)
def test_apply_limits_is_exact(rows: list[tuple[int, int, bool, bool]]) -> None:
    table = pa.Table.from_pylist(_vault_rows(rows), schema=vault_schema())
    row_cut = AS_OF - timedelta(days=10)
    text_cut = AS_OF - timedelta(days=5)
    out = retention.apply_limits(table, row_cut, {"transcript": text_cut}).to_pylist()
    kept = [r for r in table.to_pylist() if r["started_at"] >= row_cut]
    assert [r["event_id"] for r in out] == [r["event_id"] for r in kept]
    for new, old in zip(out, kept, strict=True):
        assert new["transcript"] == (None if old["started_at"] < text_cut else old["transcript"])
        assert new["recording_uri"] == old["recording_uri"]


def test_cutoffs_follow_the_policy() -> None:
    cuts = retention_plan.cutoffs(POLICY, AS_OF)
    assert cuts.rows == {VAULT: AS_OF - timedelta(days=10), ANALYTICS: AS_OF - timedelta(days=20)}
    assert cuts.categories[VAULT] == {
        "recording_uri": AS_OF - timedelta(days=3),
        "transcript": AS_OF - timedelta(days=5),
    }
    assert cuts.categories[ANALYTICS] == {"transcript": AS_OF - timedelta(days=5)}


def test_files_without_statistics_are_read_not_trusted(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    rows = [(2 * DAY_MS, 0, True, True), (4 * DAY_MS, 0, True, False), (15 * DAY_MS, 0, True, True)]
    table = pa.Table.from_pylist(_vault_rows(rows), schema=vault_schema())
    path = partition_dir(lake, VAULT, "2026-05-20", 0) / "nostats.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path, write_statistics=False)
    result = retention.run(duckdb.connect(), lake, POLICY, AS_OF)
    assert result.summary.rows_removed == {VAULT: 1}
    after = _read(lake, VAULT)
    assert sorted(after) == ["e0000", "e0001"]
    assert (after["e0000"]["transcript"], after["e0000"]["recording_uri"]) == ("text 0", "s3://r/0")
    assert (after["e0001"]["transcript"], after["e0001"]["recording_uri"]) == ("text 1", None)


def test_a_naive_as_of_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        retention_plan.cutoffs(POLICY, AS_OF.replace(tzinfo=None))
