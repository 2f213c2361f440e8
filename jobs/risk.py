"""Re-identification risk, measured: k-anonymity of the aggregates and unicity of the analytics zone.

k-anonymity: per aggregate, the smallest `subjects` of a published group, the distribution of
`subjects` over groups, and the groups and calls suppressed at build time (from the file's metadata).
Where the values are noisy (jobs/anonymize_noise.py) `subjects` is the published, noisy count: k
was checked on the true count when the file was built, so `below_k` counts exact rows only, and
`noise` gives the mechanism, epsilon and each value's error bars from the file's metadata.

Unicity, after de Montjoye et al. 2013 ("Unique in the Crowd", Sci. Rep. 3:1376; 4 points single out
95% of 1.5M people in hourly antenna-level data): a subject's trace is the set of distinct
(time, place) points of their calls. For p = 1..4, sample subjects holding at least p points, draw p
of each sampled subject's own points at random, and count the subjects whose trace holds all p.
A sampled subject is unique when that count is 1 (only themself); unicity is the unique share.

Resolutions: `FINE` is the zone's own (UTC hour x cell_area, the LAC-level place analytics keeps);
`COARSE` is the aggregates' (UTC day x caller country code), so an operator sees what the
generalization buys; `DAY_CELL` and `HOUR_COUNTRY` coarsen only one of the two. Everything runs
in DuckDB SQL over temp tables; the draw is seeded (DuckDB's `hash` of subject, point and seed),
so one seed gives one answer on one DuckDB version.

The matching sets are nested: with each subject's points in one seeded random order, the set for
p + 1 points is the set for p points narrowed to those also holding point p + 1. So one pass keeps a
table of (sampled subject, still-matching subject) and narrows it with one join per p; the work is
the first point's population per sampled subject plus a shrinking number of lookups after it.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from jobs.anonymize import AGGREGATES, Aggregate, aggregate_path
from jobs.anonymize_noise import from_metadata
from sinks import layout


@dataclass(frozen=True)
class Resolution:
    name: str
    time_sql: str  # an integer period over the analytics columns
    place_sql: str  # a place; rows where it is NULL hold no known point
    label: str


FINE = Resolution(
    "fine", "epoch_ms(started_at) // 3600000", "cell_area", "hour x cell area (the zone's own resolution)"
)
COARSE = Resolution(
    "coarse", "epoch_ms(started_at) // 86400000", "CAST(caller_country AS VARCHAR)", "day x country code"
)
# The two steps in between: which half of the generalization buys what.
DAY_CELL = Resolution("day_cell", COARSE.time_sql, FINE.place_sql, "day x cell area")
HOUR_COUNTRY = Resolution("hour_country", FINE.time_sql, COARSE.place_sql, "hour x country code")
RESOLUTIONS = (FINE, DAY_CELL, HOUR_COUNTRY, COARSE)
SUBJECT_BINS = (1, 5, 10, 20, 50, 100, 1000)  # lower bounds of the `subjects` histogram bins


@dataclass(frozen=True)
class PointUnicity:
    points: int  # p
    sampled: int  # sampled subjects holding at least p points
    unique: int  # of them, singled out by their p points
    share: float  # unique / sampled (0 when nothing was sampled)
    median_matches: float | None  # median size of the matching set
    ci95: tuple[float, float]  # Wilson 95% interval of the share (the sample is not the crowd)


@dataclass(frozen=True)
class Unicity:
    resolution: str
    label: str
    subjects: int  # subjects with at least one known point
    points: int  # distinct (subject, time, place) points
    sample: int
    seed: int
    by_points: tuple[PointUnicity, ...]


@dataclass(frozen=True)
class KAnonymity:
    name: str
    k: int | None  # the k it was built with (metadata)
    groups: int
    calls: int
    min_subjects: int | None
    median_subjects: float | None
    below_k: int  # published exact groups with fewer than k subjects: must be 0
    histogram: tuple[tuple[str, int], ...]  # (bin label, groups)
    suppressed_groups: int | None
    suppressed_calls: int | None
    noisy_groups: int  # groups whose values carry noise (the rest are exact)
    noise: dict[str, Any] | None  # the build's mechanism, epsilon, bounds, scales, error bars


def k_anonymity(
    con: duckdb.DuckDBPyConnection, lake: Path, aggregates: tuple[Aggregate, ...] = AGGREGATES
) -> list[KAnonymity]:
    """The k-anonymity figures of every aggregate that exists in the lake."""
    out = []
    for agg in aggregates:
        path = aggregate_path(lake, agg.name)
        if not path.exists():
            continue
        src = f"read_parquet('{_quote(str(path))}')"
        meta = dict(
            con.execute(
                f"SELECT key::VARCHAR, value::VARCHAR FROM parquet_kv_metadata('{_quote(str(path))}')"
            ).fetchall()
        )
        k = _int(meta.get("callpipe.k"))
        present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        noisy = "subjects_ci95 > 0" if "subjects_ci95" in present else "FALSE"
        row = con.execute(
            f"SELECT count(*), coalesce(sum(calls), 0), min(subjects), median(subjects),"
            f" count(*) FILTER (WHERE subjects < $k AND NOT ({noisy})),"
            f" count(*) FILTER (WHERE {noisy}) FROM {src}",
            {"k": k if k is not None else 1},
        ).fetchone()
        assert row is not None
        bins = " ".join(
            f"WHEN subjects >= {low} THEN {i}" for i, low in reversed(list(enumerate(SUBJECT_BINS)))
        )
        counts = dict(
            con.execute(f"SELECT CASE {bins} ELSE -1 END AS b, count(*) FROM {src} GROUP BY b").fetchall()
        )
        histogram = tuple((_bin_label(i), int(counts.get(i, 0))) for i in range(len(SUBJECT_BINS)))
        out.append(
            KAnonymity(
                name=agg.name,
                k=k,
                groups=int(row[0]),
                calls=int(row[1]),
                min_subjects=row[2],
                median_subjects=float(row[3]) if row[3] is not None else None,
                below_k=int(row[4]),
                histogram=histogram,
                suppressed_groups=_int(meta.get("callpipe.suppressed_groups")),
                suppressed_calls=_int(meta.get("callpipe.suppressed_calls")),
                noisy_groups=int(row[5]),
                noise=from_metadata(meta),
            )
        )
    return out


def unicity(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    *,
    as_of: datetime,
    resolution: Resolution = FINE,
    max_points: int = 4,
    sample: int = 1000,
    seed: int = 0,
) -> Unicity:
    """Share of sampled subjects singled out by p = 1..max_points of their own points."""
    has_data = any((lake / layout.ANALYTICS).glob("calls/dt=*/**/*.parquet"))
    if not has_data:
        return Unicity(resolution.name, resolution.label, 0, 0, sample, seed, ())
    tag = uuid.uuid4().hex[:8]
    pts, smp, drawn, match = (f"_risk_{name}_{tag}" for name in ("pts", "smp", "drawn", "match"))
    try:
        con.execute(
            f"""CREATE TEMP TABLE {pts} AS
                SELECT DISTINCT account_token AS s, {resolution.time_sql} AS t, {resolution.place_sql} AS l
                FROM read_parquet('{_quote(layout.glob(lake, layout.ANALYTICS))}')
                WHERE started_at < $as_of AND account_token IS NOT NULL
                  AND {resolution.place_sql} IS NOT NULL""",
            {"as_of": as_of},
        )
        row = con.execute(f"SELECT count(DISTINCT s), count(*) FROM {pts}").fetchone()
        assert row is not None
        subjects, points = int(row[0]), int(row[1])
        con.execute(
            f"""CREATE TEMP TABLE {smp} AS
                SELECT s FROM (SELECT DISTINCT s FROM {pts}) ORDER BY hash(s, $seed), s LIMIT $n""",
            {"seed": seed, "n": sample},
        )
        # One seeded random order of each sampled subject's points; p points are its first p.
        con.execute(
            f"""CREATE TEMP TABLE {drawn} AS
                SELECT s, t, l,
                       row_number() OVER (PARTITION BY s ORDER BY hash(s, t, l, $seed), t, l) AS draw
                FROM {pts} SEMI JOIN {smp} USING (s)
                QUALIFY draw <= $max_points""",
            {"seed": seed, "max_points": max_points},
        )
        by_points = []
        for p in range(1, max_points + 1):
            if p == 1:  # (sampled subject i, subject j holding i's first point)
                step = f"SELECT d.s AS i, x.s AS j FROM {drawn} d JOIN {pts} x USING (t, l) WHERE d.draw = 1"
            else:  # ... narrowed to the j also holding i's p-th point (i without one drops out)
                step = f"""SELECT m.i, m.j FROM {match} m
                           JOIN {drawn} d ON d.s = m.i AND d.draw = {p}
                           JOIN {pts} x ON x.s = m.j AND x.t = d.t AND x.l = d.l"""
            con.execute(f"CREATE OR REPLACE TEMP TABLE {match} AS {step}")
            by_points.append(_tally(con, match, p))
    finally:
        for table in (pts, smp, drawn, match):
            con.execute(f"DROP TABLE IF EXISTS {table}")
    return Unicity(resolution.name, resolution.label, subjects, points, sample, seed, tuple(by_points))


def _tally(con: duckdb.DuckDBPyConnection, match: str, p: int) -> PointUnicity:
    row = con.execute(
        f"""SELECT count(*), count(*) FILTER (WHERE matches = 1), median(matches)
            FROM (SELECT i, count(*) AS matches FROM {match} GROUP BY i)"""
    ).fetchone()
    assert row is not None
    sampled, unique = int(row[0]), int(row[1])
    return PointUnicity(
        points=p,
        sampled=sampled,
        unique=unique,
        share=unique / sampled if sampled else 0.0,
        median_matches=float(row[2]) if row[2] is not None else None,
        ci95=wilson(unique, sampled),
    )


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound at 0% and 100%, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def measure(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    *,
    as_of: datetime,
    sample: int = 1000,
    seed: int = 0,
    aggregates: tuple[Aggregate, ...] = AGGREGATES,
    resolutions: tuple[Resolution, ...] = RESOLUTIONS,
) -> dict[str, object]:
    """Every risk figure, as plain data: k-anonymity per aggregate, unicity at each resolution."""
    return {
        "k_anonymity": [asdict(x) for x in k_anonymity(con, lake, aggregates)],
        "unicity": [
            asdict(unicity(con, lake, as_of=as_of, resolution=r, sample=sample, seed=seed))
            for r in resolutions
        ],
    }


def _bin_label(i: int) -> str:
    low = SUBJECT_BINS[i]
    if i + 1 < len(SUBJECT_BINS):
        high = SUBJECT_BINS[i + 1] - 1
        return f"{low}" if high == low else f"{low}-{high}"
    return f"{low}+"


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def _quote(text: str) -> str:
    return text.replace("'", "''")
