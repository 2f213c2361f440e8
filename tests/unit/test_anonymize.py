"""The anonymize job: k-anonymous aggregates, suppression counted, atomic and re-runnable.

These tests check the true values, so they build with noise off (`noise=None`); the noise and
what it protects against are tested in test_anonymize_noise.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from jobs import audit
from jobs.anonymize import AGGREGATES, Aggregate, aggregate_path, anonymize, duration_bucket_sql
from jobs.replace import JobBusy, job_lock
from tests.support.analysis_lake import T0, analytics_row, crowd, write_zone

AS_OF = datetime(2026, 7, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("duration", "bucket"),
    [
        (0, "0s"),
        (1, "1-59s"),
        (59, "1-59s"),
        (60, "1-5m"),
        (299, "1-5m"),
        (300, "5-15m"),
        (899, "5-15m"),
        (900, "15-60m"),
        (3599, "15-60m"),
        (3600, "60m+"),
        (86_000, "60m+"),
        (None, None),
    ],
)
def test_duration_buckets(duration: int | None, bucket: str | None) -> None:
    con = duckdb.connect()
    got = con.execute(f"SELECT {duration_bucket_sql('d')} FROM (SELECT $d::INTEGER AS d)", {"d": duration})
    assert got.fetchall() == [(bucket,)]


def test_unknown_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown dimensions"):
        Aggregate(
            "x", "hour", ("cell_area",), "cell areas are not generalized", max_calls=1, max_duration_s=1
        )


def _build(lake: Path, k: int = 5, as_of: datetime = AS_OF):
    """A build with noise off: the exact values."""
    con = duckdb.connect()
    try:
        return anonymize(con, lake, k=k, as_of=as_of, noise=None)
    finally:
        con.close()


def _rows(lake: Path, name: str) -> list[dict]:
    return pq.read_table(aggregate_path(lake, name)).to_pylist()


def test_groups_below_k_are_suppressed_and_counted(lake: Path) -> None:
    rows = crowd(subjects=6, hours=3)  # 6 subjects per hour: published at k = 5
    # 4 subjects calling France in hour 0: one group of 4 < k, suppressed (and its 4 calls counted)
    rows += [analytics_row(100 + s, T0 + timedelta(minutes=5), caller_country=33) for s in range(4)]
    write_zone(lake, "analytics", rows)
    result = _build(lake)
    hourly = next(a for a in result.aggregates if a.name == "calls_hourly")
    assert (hourly.published_groups, hourly.suppressed_groups, hourly.suppressed_calls) == (3, 1, 4)
    published = _rows(lake, "calls_hourly")
    assert all(r["subjects"] >= 5 for r in published)
    assert all(r["caller_country"] == 44 for r in published)
    assert sum(r["calls"] for r in published) == 18


@pytest.mark.parametrize("k", [1, 2, 5, 7, 20])
def test_every_published_group_has_at_least_k_subjects(lake: Path, k: int) -> None:
    rows = crowd(subjects=9, hours=4, seed=k)
    rows += [analytics_row(50 + s, T0 + timedelta(hours=s), status="busy", duration_s=0) for s in range(9)]
    write_zone(lake, "analytics", rows)
    result = _build(lake, k=k)
    for agg in AGGREGATES:
        published = _rows(lake, agg.name)
        assert all(r["subjects"] >= k for r in published)
        stats = next(a for a in result.aggregates if a.name == agg.name)
        assert sum(r["calls"] for r in published) + stats.suppressed_calls == len(rows)


def test_no_tokens_or_raw_quasi_identifiers_in_aggregates(lake: Path) -> None:
    write_zone(lake, "analytics", crowd(subjects=6, hours=2))
    _build(lake)
    for agg in AGGREGATES:
        names = set(pq.read_schema(aggregate_path(lake, agg.name)).names)
        assert not {n for n in names if n.endswith("_token")}
        assert not names & {"cell_area", "started_at", "event_id", "caller_ip_prefix", "duration_s"}
        assert "subjects" in names


def test_subjects_counts_distinct_accounts_not_calls(lake: Path) -> None:
    # 5 subjects, 3 calls each in the same hour: 15 calls, 5 subjects, published at k = 5 only
    rows = [analytics_row(s, T0 + timedelta(minutes=m)) for s in range(5) for m in (1, 2, 3)]
    write_zone(lake, "analytics", rows)
    _build(lake, k=5)
    assert [(r["calls"], r["subjects"]) for r in _rows(lake, "calls_hourly")] == [(15, 5)]
    _build(lake, k=6)
    assert _rows(lake, "calls_hourly") == []


def test_rows_at_or_after_as_of_are_left_out(lake: Path) -> None:
    write_zone(lake, "analytics", crowd(subjects=5, hours=4))
    result = _build(lake, as_of=T0 + timedelta(hours=2))
    assert result.source_rows == 10
    assert len(_rows(lake, "calls_hourly")) == 2


def test_rerun_replaces_the_aggregate_and_audits_each_run(lake: Path) -> None:
    write_zone(lake, "analytics", crowd(subjects=6, hours=3))
    first = _build(lake)
    second = _build(lake)
    assert [a.sha256 for a in first.aggregates] == [a.sha256 for a in second.aggregates]
    for agg in AGGREGATES:
        assert sorted(p.name for p in aggregate_path(lake, agg.name).parent.iterdir()) == [
            f"{agg.name}.parquet"
        ]
    entries = [e for e in audit.read(lake) if e["job"] == "anonymize"]
    assert [e["outcome"] for e in entries] == ["ok", "ok"]
    assert entries[-1]["counts"]["calls_hourly.suppressed_groups"] == 0
    assert {f["sha256"] for f in entries[-1]["files"]} == {a.sha256 for a in second.aggregates}


def test_stray_temp_file_of_a_killed_run_is_removed_and_never_read(lake: Path) -> None:
    write_zone(lake, "analytics", crowd(subjects=6, hours=2))
    _build(lake)
    stray = aggregate_path(lake, "calls_hourly").parent / ".calls_hourly.deadbeef.tmp"
    stray.write_bytes(b"half a parquet file")
    _build(lake)
    assert not stray.exists()


def test_history_older_than_analytics_is_carried_over(lake: Path) -> None:
    old = crowd(subjects=6, hours=2)  # 2026-06-01 hours 0 and 1
    write_zone(lake, "analytics", old)
    _build(lake)
    # retention removed June 1st; June 2nd arrived
    for path in (lake / "analytics").rglob("*.parquet"):
        path.unlink()
    new = [analytics_row(s, T0 + timedelta(days=1, minutes=s)) for s in range(6)]
    write_zone(lake, "analytics", new)
    result = _build(lake)
    hourly = next(a for a in result.aggregates if a.name == "calls_hourly")
    assert hourly.carried_groups == 2
    hours = sorted(r["hour"] for r in _rows(lake, "calls_hourly"))
    assert [h.astimezone(UTC) for h in hours] == [T0, T0 + timedelta(hours=1), T0 + timedelta(days=1)]


def test_a_raised_k_suppresses_carried_history_below_it_and_keeps_building(lake: Path) -> None:
    write_zone(lake, "analytics", crowd(subjects=6, hours=2))  # June 1st: groups of 6
    assert min(a.min_subjects or 0 for a in _build(lake, k=5).aggregates) == 6
    for path in (lake / "analytics").rglob("*.parquet"):  # retention removed June 1st
        path.unlink()
    write_zone(lake, "analytics", [analytics_row(s, T0 + timedelta(days=1, minutes=s)) for s in range(8)])
    result = _build(lake, k=7)  # the policy now asks for 7: June 1st's groups of 6 may not stay
    hourly = next(a for a in result.aggregates if a.name == "calls_hourly")
    assert hourly.carried_groups == 0 and hourly.suppressed_groups == 2 and hourly.suppressed_calls == 12
    assert [r["subjects"] for r in _rows(lake, "calls_hourly")] == [8]
    assert all(a.min_subjects is None or a.min_subjects >= 7 for a in result.aggregates)
    meta = pq.read_metadata(aggregate_path(lake, "calls_hourly")).metadata
    assert meta[b"callpipe.k"] == b"7" and meta[b"callpipe.suppressed_groups"] == b"2"


def test_empty_lake_gives_empty_aggregates(lake: Path) -> None:
    result = _build(lake)
    assert result.source_rows == 0
    for agg in AGGREGATES:
        assert _rows(lake, agg.name) == []


def test_time_grains_are_utc_whatever_the_session_time_zone(lake: Path) -> None:
    at = T0 + timedelta(hours=23, minutes=30)  # 23:30 UTC: the next day in Kolkata
    write_zone(lake, "analytics", [analytics_row(s, at) for s in range(5)])
    con = duckdb.connect()
    con.execute("SET TimeZone = 'Asia/Kolkata'")
    anonymize(con, lake, k=5, as_of=AS_OF, noise=None)
    daily = _rows(lake, "calls_daily")
    assert [str(r["day"]) for r in daily] == ["2026-06-01"]
    hourly = _rows(lake, "calls_hourly")
    assert [r["hour"].astimezone(UTC) for r in hourly] == [T0 + timedelta(hours=23)]


def test_refuses_to_read_while_another_job_holds_the_lake(lake: Path) -> None:
    write_zone(lake, "analytics", crowd(subjects=6, hours=2))
    with job_lock(lake), pytest.raises(JobBusy):
        _build(lake)
    assert not aggregate_path(lake, "calls_hourly").exists()
    assert [e["job"] for e in audit.read(lake)] == []


@pytest.mark.parametrize(("keep_days", "hours"), [(None, 3), (29, 0), (30, 3)])
def test_aggregates_retention(lake: Path, keep_days: int | None, hours: int) -> None:
    write_zone(lake, "analytics", crowd(subjects=6, hours=3))  # 2026-06-01 00:00 to 03:00
    con = duckdb.connect()
    result = anonymize(con, lake, k=5, as_of=T0 + timedelta(days=30), noise=None, keep_days=keep_days)
    assert len(_rows(lake, "calls_hourly")) == hours
    hourly = next(a for a in result.aggregates if a.name == "calls_hourly")
    assert hourly.expired_groups == 3 - hours
    assert [str(r["day"]) for r in _rows(lake, "calls_daily")] == (["2026-06-01"] if hours else [])
