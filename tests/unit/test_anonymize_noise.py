"""Noise on the aggregates across builds: the attacks it is there for, tried.

- differencing: two builds around one subject's removal (an erasure, retention, an objection)
  show that subject's contribution only blurred by the noise, never exactly (with noise off they
  show it exactly: the gap this closes);
- averaging: rebuilding unchanged data any number of times gives the same bytes, so there is
  nothing to average; only values that changed get fresh noise;
- tiny groups: a group at k that loses a subject is suppressed (and counted), as before;
- clamping: a subject's share of a group is bounded before the noise, so a heavy caller moves a
  value by at most the bound;
- the files hold no token and say that their values are noisy, and how much.
"""

from __future__ import annotations

import math
import shutil
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from jobs.anonymize import AGGREGATES, AnonymizeResult, aggregate_path, anonymize
from jobs.anonymize_noise import CI95, KEY_PURPOSE, Noise
from jobs.noise import NoiseKey, sd
from pipeline.keys import PseudonymKey
from tests.support.analysis_lake import T0, analytics_row, token, write_zone

AS_OF = datetime(2026, 7, 1, tzinfo=UTC)
KEY = PseudonymKey("v1", bytes(range(32)))
NOISE = Noise(NoiseKey("v1", KEY.derive(KEY_PURPOSE)), Fraction(1))
HOURS = 60
VICTIM = 999


def _build(lake: Path, noise: Noise | None = NOISE, k: int = 5) -> AnonymizeResult:
    con = duckdb.connect()
    try:
        return anonymize(con, lake, k=k, as_of=AS_OF, noise=noise)
    finally:
        con.close()


def _rows(lake: Path, name: str = "calls_hourly") -> list[dict[str, Any]]:
    return pq.read_table(aggregate_path(lake, name)).to_pylist()


def _by_group(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {(r["hour"], r["caller_country"], r["duration_bucket"]): r for r in rows}


def _lake_rows(victim: bool) -> list[dict[str, Any]]:
    """Every hour: 8 subjects calling once from the UK (the victim adds 2 calls of 120 s), and an
    untouched French group of 6 subjects."""
    rows = []
    for h in range(HOURS):
        at = T0 + timedelta(hours=h, minutes=10)
        rows += [analytics_row(s, at) for s in range(8)]
        rows += [analytics_row(100 + s, at, caller_country=33) for s in range(6)]
        if victim:
            rows += [analytics_row(VICTIM, at + timedelta(minutes=m)) for m in (1, 2)]
    return rows


def _replace_analytics(lake: Path, rows: list[dict[str, Any]]) -> None:
    shutil.rmtree(lake / "analytics", ignore_errors=True)
    write_zone(lake, "analytics", rows)


def _differences(lake: Path, noise: Noise | None) -> list[tuple[int, int, int]]:
    """Build with the victim, remove them, build again: each UK hour's (calls, subjects, seconds)
    before minus after."""
    _replace_analytics(lake, _lake_rows(victim=True))
    _build(lake, noise)
    before = _by_group(_rows(lake))
    _replace_analytics(lake, _lake_rows(victim=False))
    _build(lake, noise)
    after = _by_group(_rows(lake))
    uk = [g for g in before if g[1] == 44]
    assert len(uk) == HOURS
    return [
        (
            before[g]["calls"] - after[g]["calls"],
            before[g]["subjects"] - after[g]["subjects"],
            before[g]["duration_s_total"] - after[g]["duration_s_total"],
        )
        for g in uk
    ]


def test_without_noise_two_builds_show_a_removed_subject_exactly(lake: Path) -> None:
    """The gap: the victim's 2 calls, 1 subject and 240 s in every hour, read off exactly."""
    assert set(_differences(lake, None)) == {(2, 1, 240)}


def test_with_noise_two_builds_show_a_removed_subject_only_through_the_noise(lake: Path) -> None:
    diffs = _differences(lake, NOISE)
    calls = [d[0] - 2 for d in diffs]
    subjects = [d[1] - 1 for d in diffs]
    seconds = [d[2] - 240 for d in diffs]
    # the contribution is almost never what the difference shows ...
    assert sum(1 for d in diffs if d == (2, 1, 240)) == 0
    assert sum(1 for c in calls if c == 0) <= HOURS // 5
    # ... because each difference is the contribution plus two independent draws of the noise:
    # its spread is sqrt(2) times the published sd (calls 2 x 3 / 1, subjects 3, seconds 1800 x 3)
    for errors, scale in ((calls, 6), (subjects, 3), (seconds, 5400)):
        spread = math.sqrt(sum(e * e for e in errors) / len(errors))
        assert 0.6 < spread / (math.sqrt(2) * sd(Fraction(scale))) < 1.5


def test_groups_the_removal_did_not_touch_keep_their_values(lake: Path) -> None:
    _replace_analytics(lake, _lake_rows(victim=True))
    _build(lake)
    before = [r for r in _rows(lake) if r["caller_country"] == 33]
    _replace_analytics(lake, _lake_rows(victim=False))
    _build(lake)
    assert [r for r in _rows(lake) if r["caller_country"] == 33] == before


def test_rebuilding_unchanged_data_gives_the_same_bytes_so_averaging_learns_nothing(lake: Path) -> None:
    _replace_analytics(lake, _lake_rows(victim=True))
    digests = {tuple(a.sha256 for a in _build(lake).aggregates) for _ in range(8)}
    assert len(digests) == 1
    rows = _rows(lake)
    # the values are not the true ones (10 calls, 9 subjects, 1200 s in each UK hour)
    uk = [r for r in rows if r["caller_country"] == 44]
    assert sum(1 for r in uk if (r["calls"], r["subjects"], r["duration_s_total"]) == (10, 9, 1200)) == 0


def test_another_key_draws_other_noise(lake: Path) -> None:
    _replace_analytics(lake, _lake_rows(victim=True))
    _build(lake)
    mine = _rows(lake)
    other = Noise(NoiseKey("v2", PseudonymKey("v2", bytes(range(1, 33))).derive(KEY_PURPOSE)), Fraction(1))
    _build(lake, other)
    assert _rows(lake) != mine


def test_a_group_at_k_that_loses_a_subject_is_suppressed(lake: Path) -> None:
    rows = [analytics_row(s, T0 + timedelta(minutes=s)) for s in range(4)]
    rows.append(analytics_row(VICTIM, T0 + timedelta(minutes=30)))
    _replace_analytics(lake, rows)
    first = _build(lake)
    hourly = _rows(lake)
    assert len(hourly) == 1 and all(hourly[0][c] > 0 for c in CI95)
    assert first.aggregates[0].min_subjects == 5  # k checked on the true count
    _replace_analytics(lake, rows[:4])
    second = _build(lake)
    assert _rows(lake) == []
    assert (second.aggregates[0].suppressed_groups, second.aggregates[0].suppressed_calls) == (1, 4)


def test_a_heavy_callers_share_is_clamped_before_the_noise(lake: Path) -> None:
    rows = [analytics_row(s, T0 + timedelta(minutes=s)) for s in range(6)]
    rows += [analytics_row(VICTIM, T0 + timedelta(seconds=s), duration_s=120) for s in range(50)]
    _replace_analytics(lake, rows)
    result = _build(lake)
    hourly = next(a for a in result.aggregates if a.name == "calls_hourly")
    assert hourly.clamped_calls == 48  # 50 calls, 2 counted
    assert hourly.clamped_duration_s == 50 * 120 - 1800
    assert hourly.noise is not None and hourly.noise["values"]["calls"]["bound"] == 2  # type: ignore[index]


def test_files_say_their_values_are_noisy_and_hold_no_token(lake: Path) -> None:
    _replace_analytics(lake, _lake_rows(victim=True))
    result = _build(lake)
    for agg in AGGREGATES:
        path = aggregate_path(lake, agg.name)
        meta = {k.decode(): v.decode() for k, v in (pq.read_metadata(path).metadata or {}).items()}
        assert meta["callpipe.noise"] == "discrete_laplace"
        assert meta["callpipe.noise.epsilon"] == "1"
        assert meta["callpipe.noise.calls.bound"] == str(agg.max_calls)
        described = next(a for a in result.aggregates if a.name == agg.name).noise
        assert described is not None
        ci = {c: v["ci95"] for c, v in described["values"].items()}  # type: ignore[attr-defined]
        assert all(r[f"{c}_ci95"] == ci[c] > 0 for r in _rows(lake, agg.name) for c in ci)
        data = path.read_bytes()
        for s in (*range(8), *range(100, 106), VICTIM):
            assert token(s).encode() not in data
        assert not [n for n in pq.read_schema(path).names if n.endswith("_token")]
        assert KEY.derive(KEY_PURPOSE).hex().encode() not in data


def test_noisy_history_is_carried_as_published_and_suppressed_when_k_rises(lake: Path) -> None:
    _replace_analytics(lake, _lake_rows(victim=True))
    _build(lake)
    old = _rows(lake)
    _replace_analytics(lake, [analytics_row(s, T0 + timedelta(days=10, minutes=s)) for s in range(9)])
    result = _build(lake)  # retention removed the old hours: they are carried over, noise and all
    hourly = next(a for a in result.aggregates if a.name == "calls_hourly")
    assert hourly.carried_groups == len(old)
    assert [r for r in _rows(lake) if r["hour"] < T0 + timedelta(days=10)] == old
    raised = _build(lake, k=7)  # the true counts of noisy history are gone: it cannot show k = 7
    hourly = next(a for a in raised.aggregates if a.name == "calls_hourly")
    assert (hourly.carried_groups, hourly.suppressed_groups) == (0, len(old))
    assert len(_rows(lake)) == 1


def test_exact_history_from_before_the_error_bars_is_carried_as_exact(lake: Path) -> None:
    _replace_analytics(lake, _lake_rows(victim=False))
    _build(lake, None)
    path = aggregate_path(lake, "calls_hourly")
    table = pq.read_table(path)
    legacy = table.drop_columns(list(CI95)).replace_schema_metadata(table.schema.metadata)
    pq.write_table(legacy, path)  # as a build before this change wrote it
    _replace_analytics(lake, [analytics_row(s, T0 + timedelta(days=10, minutes=s)) for s in range(9)])
    result = _build(lake)
    hourly = next(a for a in result.aggregates if a.name == "calls_hourly")
    assert hourly.carried_groups == 2 * HOURS and hourly.min_subjects == 6
    carried = [r for r in _rows(lake) if r["hour"] < T0 + timedelta(days=10)]
    assert all(r["calls_ci95"] == 0 for r in carried) and {r["subjects"] for r in carried} == {6, 8}


@pytest.mark.parametrize("epsilon", [Fraction(1, 10), Fraction(1), Fraction(4)])
def test_error_bars_follow_epsilon(lake: Path, epsilon: Fraction) -> None:
    _replace_analytics(lake, _lake_rows(victim=False))
    result = _build(lake, Noise(NOISE.key, epsilon))
    for a in result.aggregates:
        agg = next(x for x in AGGREGATES if x.name == a.name)
        values = a.noise["values"]  # type: ignore[index]
        assert values["calls"]["scale"] == pytest.approx(float(agg.max_calls * 3 / epsilon))  # type: ignore[index]
        assert values["subjects"]["scale"] == pytest.approx(float(3 / epsilon))  # type: ignore[index]
