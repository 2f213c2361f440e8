"""Re-identification risk: unicity by p known points, k-anonymity of the aggregates."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import duckdb
import pytest

from jobs import risk
from jobs.anonymize import anonymize
from jobs.anonymize_noise import Noise
from jobs.noise import NoiseKey
from tests.support.analysis_lake import T0, analytics_row, crowd, write_zone

AS_OF = datetime(2026, 7, 1, tzinfo=UTC)


def _unicity(lake: Path, **kw: Any) -> risk.Unicity:
    con = duckdb.connect()
    try:
        return risk.unicity(con, lake, as_of=AS_OF, **kw)
    finally:
        con.close()


def _shares(u: risk.Unicity) -> list[float]:
    return [p.share for p in u.by_points]


def test_private_places_single_everyone_out(lake: Path) -> None:
    rows = [
        analytics_row(s, T0 + timedelta(hours=h), cell_area=f"cell-{s}") for s in range(20) for h in range(5)
    ]
    write_zone(lake, "analytics", rows)
    u = _unicity(lake)
    assert (u.subjects, u.points) == (20, 100)
    assert _shares(u) == [1.0, 1.0, 1.0, 1.0]
    assert [p.sampled for p in u.by_points] == [20] * 4


def test_identical_traces_single_no_one_out(lake: Path) -> None:
    rows = [
        analytics_row(s, T0 + timedelta(hours=h), cell_area="shared") for s in range(10) for h in range(5)
    ]
    write_zone(lake, "analytics", rows)
    u = _unicity(lake)
    assert _shares(u) == [0.0] * 4
    assert all(p.median_matches == 10 for p in u.by_points)


def test_points_shared_one_by_one_but_unique_together(lake: Path) -> None:
    # A grid: subject (a, b) is at place a in hour 0 and place b in hour 1, for a, b in 0..2.
    # Every single point is shared by 3 subjects; every pair of points names one subject.
    rows = []
    for a in range(3):
        for b in range(3):
            s = a * 3 + b
            rows.append(analytics_row(s, T0, cell_area=f"c{a}"))
            rows.append(analytics_row(s, T0 + timedelta(hours=1), cell_area=f"c{b}"))
    write_zone(lake, "analytics", rows)
    u = _unicity(lake, max_points=3)
    one, two, three = u.by_points
    assert (one.sampled, one.unique, one.median_matches) == (9, 0, 3)
    assert (two.sampled, two.unique, two.share) == (9, 9, 1.0)
    assert three.sampled == 0  # nobody holds 3 points


def test_matches_a_brute_force_count(lake: Path) -> None:
    rng = random.Random(3)
    rows = [
        analytics_row(s, T0 + timedelta(hours=rng.randrange(6)), cell_area=f"c{rng.randrange(4)}")
        for s in range(40)
        for _ in range(rng.randrange(1, 8))
    ]
    write_zone(lake, "analytics", rows)
    traces: dict[str, set[tuple[int, str]]] = {}
    for r in rows:
        hour = int(r["started_at"].timestamp()) // 3600
        traces.setdefault(r["account_token"], set()).add((hour, r["cell_area"]))
    con = duckdb.connect()
    u = risk.unicity(con, lake, as_of=AS_OF, sample=40, seed=11)
    # The same draw, read back with the job's own ordering, counted by brute force.
    drawn = con.execute(
        "SELECT s, t, l, row_number() OVER (PARTITION BY s ORDER BY hash(s, t, l, $seed), t, l) AS d "
        "FROM (SELECT DISTINCT account_token s, epoch_ms(started_at) // 3600000 t, cell_area l "
        f"FROM read_parquet('{lake}/analytics/calls/*/*/*.parquet'))",
        {"seed": 11},
    ).fetchall()
    order: dict[str, list[tuple[int, str]]] = {}
    for s, t, place, _d in sorted(drawn, key=lambda x: x[3]):
        order.setdefault(s, []).append((t, place))
    for p in u.by_points:
        eligible = [s for s in order if len(order[s]) >= p.points]
        unique = sum(
            1 for s in eligible if sum(set(order[s][: p.points]) <= trace for trace in traces.values()) == 1
        )
        assert (p.sampled, p.unique) == (len(eligible), unique)


def test_sample_and_seed(lake: Path) -> None:
    write_zone(lake, "analytics", crowd(subjects=30, hours=6, seed=5))
    a = _unicity(lake, sample=10, seed=1)
    b = _unicity(lake, sample=10, seed=1)
    assert a == b
    assert all(p.sampled <= 10 for p in a.by_points)


def test_coarse_resolution_buys_anonymity(lake: Path) -> None:
    rng = random.Random(9)
    rows = [
        analytics_row(s, T0 + timedelta(hours=rng.randrange(48)), cell_area=f"c{rng.randrange(50)}")
        for s in range(60)
        for _ in range(10)
    ]
    write_zone(lake, "analytics", rows)
    fine = _unicity(lake, resolution=risk.FINE)
    coarse = _unicity(lake, resolution=risk.COARSE)
    assert fine.by_points[3].share > 0.9
    assert coarse.by_points[0].share == 0.0 and coarse.by_points[3].share == 0.0


def test_empty_lake(lake: Path) -> None:
    u = _unicity(lake)
    assert (u.subjects, u.by_points) == (0, ())


@pytest.mark.parametrize("k", [2, 5])
def test_k_anonymity_of_built_aggregates(lake: Path, k: int) -> None:
    rows = crowd(subjects=6, hours=3)
    rows += [analytics_row(100, T0, caller_country=33)]
    write_zone(lake, "analytics", rows)
    con = duckdb.connect()
    anonymize(con, lake, k=k, as_of=AS_OF, noise=None)  # exact: the true subject counts
    figures = {x.name: x for x in risk.k_anonymity(con, lake)}
    hourly = figures["calls_hourly"]
    assert (hourly.k, hourly.groups, hourly.below_k, hourly.min_subjects) == (k, 3, 0, 6)
    assert (hourly.suppressed_groups, hourly.suppressed_calls) == (1, 1)
    assert dict(hourly.histogram)["5-9"] == 3
    assert sum(n for _, n in hourly.histogram) == hourly.groups


@pytest.mark.parametrize(
    ("hits", "n", "low", "high"),
    [
        (0, 0, 0.0, 1.0),
        (0, 1000, 0.0, 0.0038),
        (1000, 1000, 0.9962, 1.0),
        (975, 1000, 0.9634, 0.983),
        (5, 10, 0.2366, 0.7634),
    ],
)
def test_wilson_interval(hits: int, n: int, low: float, high: float) -> None:
    assert risk.wilson(hits, n) == (low, high)


def test_k_anonymity_of_noisy_aggregates_reads_the_noise_from_the_file(lake: Path) -> None:
    write_zone(lake, "analytics", crowd(subjects=6, hours=3))
    con = duckdb.connect()
    noise = Noise(NoiseKey("v1", bytes(range(32))), Fraction(1))
    anonymize(con, lake, k=5, as_of=AS_OF, noise=noise)
    hourly = {x.name: x for x in risk.k_anonymity(con, lake)}["calls_hourly"]
    assert (hourly.groups, hourly.noisy_groups, hourly.below_k) == (3, 3, 0)  # k held on true counts
    assert hourly.noise is not None and hourly.noise["epsilon_per_row"] == "1"
    assert hourly.noise["values"]["subjects"] == {
        "bound": "1",
        "epsilon": "1/3",
        "scale": "3.0",
        "sd": "4.22",
        "ci95": "9",
    }
