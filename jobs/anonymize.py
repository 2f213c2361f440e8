"""`callpipe jobs anonymize`: the aggregates zone, built from analytics, k-anonymous by construction.

Each aggregate generalizes the quasi-identifiers of a call (start time to the hour or day, the
caller's country code, carrier, kind, direction, status, a duration bucket), drops every token,
and counts per group: `calls`, `subjects` (distinct account tokens) and `duration_s_total`. A group
is published only if it covers at least k subjects (Policy.k, checked on the true count); smaller
groups are suppressed and counted, and the counts go to the job's output, the Parquet file's
key-value metadata and the audit.

Noise (Policy.noise, on by default): k holds per build, and without noise two builds could be
subtracted to show what one subject who left a group in between (an erasure, retention, an
objection) had contributed. So each subject's contribution to a group is clamped
(`Aggregate.max_calls`, `Aggregate.max_duration_s`) and every published value gets keyed discrete
Laplace noise calibrated to that bound (jobs/anonymize_noise.py, jobs/noise.py): the same data
gives the same values on every rebuild, changed data fresh noise. Each row carries its values'
95% error bars (`*_ci95`), and the file's metadata the mechanism, epsilon and scales. With noise
off (`noise=None`) the values are the exact, unclamped counts and the error bars 0.

Known limit: suppression is per aggregate (primary suppression only). calls_daily re-counts what
calls_hourly suppressed, so the difference of the two tells how many calls of a published day
group fell into suppressed hourly cells (not which cells, nor who). Secondary suppression, which
would close that, is not done.

The run holds the lake's job lock (`jobs.replace.job_lock`), so it reads analytics in the old or
the new state of any retention, erase or compaction, never in between.

Layout and crash safety: an aggregate is one file, `<lake>/aggregates/<name>/<name>.parquet`. It is
written by DuckDB to a temporary file in the same folder (a dot name no `*.parquet` glob matches),
fsynced, then renamed over the old file with os.replace and the folder fsynced. A reader therefore
sees the old aggregate or the new one, never a mix; a killed run leaves at most a stray temporary
file that the next run removes. Re-running replaces each aggregate with a fresh build; rows are
written in a total order, so the same input gives the same bytes (and the same audited checksum).

Aggregates are kept (retention `aggregates_days`, none by default) while analytics expires: rows of
periods older than the oldest analytics row still present are carried over from the previous build
of the same definition, so history survives analytics retention without ever being recomputed.
A carried group is held to today's k: after the policy raised k, history published under the
smaller one is suppressed (and counted) rather than kept, as it cannot be recomputed.
When the policy sets `aggregates_days`, periods starting before `as_of` minus that many days are
left out of each build (fresh or carried), which is how the aggregates zone expires.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from jobs import audit
from jobs.anonymize_carry import carry_over
from jobs.anonymize_noise import CI95, VALUES, Noise, add_noise, describe, metadata, summary, value_noise
from jobs.replace import JobBusy, job_lock
from sinks import layout
from sinks.files import fsync_dir

# Duration buckets: (label, lower bound in seconds, inclusive). A call lands in the last bucket whose
# bound it reaches; unanswered calls have duration 0.
DURATION_BUCKETS: tuple[tuple[str, int], ...] = (
    ("0s", 0),
    ("1-59s", 1),
    ("1-5m", 60),
    ("5-15m", 300),
    ("15-60m", 900),
    ("60m+", 3600),
)

# Generalized quasi-identifiers: output column -> SQL expression over the analytics columns.
DIMENSIONS: dict[str, str] = {
    "caller_country": "caller_country",
    "carrier_id": "carrier_id",
    "kind": "kind",
    "direction": "direction",
    "status": "status",
    "duration_bucket": "",  # filled in from DURATION_BUCKETS below
}
# Time grains: output column -> SQL expression (UTC, whatever the session time zone).
GRAINS: dict[str, str] = {
    "hour": "time_bucket(INTERVAL 1 HOUR, started_at)",  # TIMESTAMPTZ; buckets are in UTC
    "day": "CAST(timezone('UTC', started_at) AS DATE)",
}
# The instant a period starts (TIMESTAMPTZ), to compare with a retention cutoff.
PERIOD_START: dict[str, str] = {
    "hour": "hour",
    "day": "timezone('UTC', CAST(day AS TIMESTAMP))",
}


def duration_bucket_sql(column: str = "duration_s") -> str:
    arms = " ".join(
        f"WHEN {column} >= {low} THEN '{label}'" for label, low in reversed(DURATION_BUCKETS) if low > 0
    )
    return f"CASE {arms} WHEN {column} IS NULL THEN NULL ELSE '{DURATION_BUCKETS[0][0]}' END"


DIMENSIONS["duration_bucket"] = duration_bucket_sql()


@dataclass(frozen=True)
class Aggregate:
    """One published table: a time grain and the generalized dimensions it groups by, and, when
    noise is on, how much of one subject's calls and seconds a group counts (the bounds the noise
    is calibrated to: more of a subject's activity in one group is clamped, not counted)."""

    name: str
    grain: str  # a key of GRAINS
    dimensions: tuple[str, ...]  # keys of DIMENSIONS
    description: str
    max_calls: int  # per subject and group
    max_duration_s: int  # per subject and group, the sum of their calls' durations

    def __post_init__(self) -> None:
        if self.grain not in GRAINS:
            raise ValueError(f"aggregate {self.name}: unknown grain {self.grain}")
        unknown = set(self.dimensions) - set(DIMENSIONS)
        if unknown:
            raise ValueError(f"aggregate {self.name}: unknown dimensions {sorted(unknown)}")
        if self.max_calls < 1 or self.max_duration_s < 1:
            raise ValueError(f"aggregate {self.name}: contribution bounds must be at least 1")

    @property
    def definition(self) -> str:
        """A fingerprint of what the rows mean: carry-over only happens between equal definitions."""
        text = "|".join([self.grain, GRAINS[self.grain], *(f"{d}={DIMENSIONS[d]}" for d in self.dimensions)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# The bounds: a subject rarely places more than two calls of one status and duration bucket in
# one hour, or ten of one kind, direction and status in one day; half an hour and an hour of
# calls cover all but the longest. What is clamped away is counted in the job's output.
AGGREGATES: tuple[Aggregate, ...] = (
    Aggregate(
        "calls_hourly",
        "hour",
        ("caller_country", "carrier_id", "direction", "status", "duration_bucket"),
        "calls per UTC hour, caller country code, carrier, direction, status and duration bucket",
        max_calls=2,
        max_duration_s=1800,
    ),
    Aggregate(
        "calls_daily",
        "day",
        ("caller_country", "carrier_id", "kind", "direction", "status"),
        "calls per UTC day, caller country code, carrier, kind, direction and status",
        max_calls=10,
        max_duration_s=3600,
    ),
)


@dataclass(frozen=True)
class AggregateResult:
    name: str
    path: str  # relative to the lake
    published_groups: int  # rows of the aggregate, carried-over ones included
    published_calls: int  # calls they count
    suppressed_groups: int  # fresh groups with fewer than k subjects, not published
    suppressed_calls: int  # calls inside them
    carried_groups: int  # rows kept from the previous build (periods older than analytics)
    expired_groups: int  # rows left out because their period is past the aggregates' retention
    # the fewest subjects of a published group as checked against k: the true count of the
    # groups built now, the published one of exact carried rows; >= k by construction
    min_subjects: int | None
    sha256: str
    noise: dict[str, object] | None  # mechanism, epsilon, each value's bound, scale and error bars
    clamped_calls: int  # calls of the groups built now left out by the bounds (noise on)
    clamped_duration_s: int  # seconds likewise


@dataclass(frozen=True)
class AnonymizeResult:
    k: int
    as_of: str
    source_rows: int
    aggregates: tuple[AggregateResult, ...]
    duration_s: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def aggregate_path(lake: Path, name: str) -> Path:
    return lake / layout.AGGREGATES / name / f"{name}.parquet"


def groups_sql(agg: Aggregate, source: str) -> str:
    """Every group of `agg` over `source` (a table expression), before suppression: the exact
    values, and `calls_clamped` / `duration_s_clamped` with each subject's share held to the
    aggregate's bounds. Parameter $as_of."""
    dims = ",\n    ".join(f"{DIMENSIONS[d]} AS {d}" for d in agg.dimensions)
    keys = ", ".join([agg.grain, *agg.dimensions])
    return f"""
WITH per_subject AS (
    SELECT
        {GRAINS[agg.grain]} AS {agg.grain},
        {dims},
        account_token,
        count(*) AS calls,
        coalesce(sum(duration_s), 0)::BIGINT AS duration_s
    FROM {source}
    WHERE started_at < $as_of
    GROUP BY ALL
)
SELECT
    {keys},
    sum(calls)::BIGINT AS calls,
    count(account_token) AS subjects,
    sum(duration_s)::BIGINT AS duration_s_total,
    sum(least(calls, {agg.max_calls}))::BIGINT AS calls_clamped,
    sum(least(duration_s, {agg.max_duration_s}))::BIGINT AS duration_s_clamped
FROM per_subject
GROUP BY ALL
"""


def keys(agg: Aggregate) -> list[str]:
    """The columns that name a group."""
    return [agg.grain, *agg.dimensions]


def columns(agg: Aggregate) -> list[str]:
    return [*keys(agg), *VALUES, *CI95]


def anonymize(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    *,
    k: int,
    as_of: datetime,
    noise: Noise | None,
    keep_days: int | None = None,
    aggregates: tuple[Aggregate, ...] = AGGREGATES,
    progress: Callable[[AggregateResult], None] | None = None,
) -> AnonymizeResult:
    """Build every aggregate from the analytics zone as of `as_of` and record the run in the audit.

    `noise` is the noise on the published values (Policy.noise with the key; None publishes the
    exact counts: a caller says so, there is no default). `keep_days` is the aggregates'
    retention (Policy.retention.aggregates_days; None keeps them): periods starting before
    `as_of - keep_days` are not published, carried over or not."""
    if k < 1:
        raise ValueError("k must be at least 1")
    started = time.monotonic()
    cutoff = None if keep_days is None else as_of - timedelta(days=keep_days)
    params = {
        "k": k,
        "as_of": as_of.isoformat(),
        "keep_days": keep_days,
        "aggregates": [a.name for a in aggregates],
        "noise": summary(noise),
    }
    try:
        # The lake's job lock: retention, erase and compact cannot replace analytics files while
        # they are read, and a change they left half applied is finished before reading.
        with job_lock(lake):
            source_rows, results = _build_all(con, lake, k, as_of, cutoff, noise, aggregates, progress)
    except JobBusy:
        raise  # another job's run, not this one: nothing to audit
    except BaseException as exc:
        audit.record(
            lake,
            job="anonymize",
            params=params,
            counts={},
            files=[],
            duration_s=time.monotonic() - started,
            outcome=f"failed: {type(exc).__name__}",
        )
        raise
    result = AnonymizeResult(k, as_of.isoformat(), source_rows, tuple(results), time.monotonic() - started)
    counts: dict[str, int] = {"source_rows": source_rows}
    for r in results:
        counts[f"{r.name}.published_groups"] = r.published_groups
        counts[f"{r.name}.suppressed_groups"] = r.suppressed_groups
        counts[f"{r.name}.suppressed_calls"] = r.suppressed_calls
        counts[f"{r.name}.carried_groups"] = r.carried_groups
        counts[f"{r.name}.expired_groups"] = r.expired_groups
    audit.record(
        lake,
        job="anonymize",
        params=params,
        counts=counts,
        files=[{"path": r.path, "sha256": r.sha256, "action": "replaced"} for r in results],
        duration_s=result.duration_s,
        outcome="ok",
    )
    return result


def _build_all(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    k: int,
    as_of: datetime,
    cutoff: datetime | None,
    noise: Noise | None,
    aggregates: tuple[Aggregate, ...],
    progress: Callable[[AggregateResult], None] | None,
) -> tuple[int, list[AggregateResult]]:
    has_data = any((lake / layout.ANALYTICS).glob("calls/dt=*/**/*.parquet"))
    view = f"_anon_src_{uuid.uuid4().hex[:8]}"
    if has_data:
        files = _quote(layout.glob(lake, layout.ANALYTICS))
        con.execute(f"CREATE TEMP VIEW {view} AS SELECT * FROM read_parquet('{files}')")
        row = con.execute(
            f"SELECT count(*) FROM {view} WHERE started_at < $as_of", {"as_of": as_of}
        ).fetchone()
        source_rows = int(row[0]) if row else 0
    else:
        source_rows = 0
    results = []
    try:
        for agg in aggregates:
            res = _build_one(con, lake, agg, view if has_data else None, k, as_of, cutoff, noise)
            results.append(res)
            if progress is not None:
                progress(res)
    finally:
        con.execute(f"DROP VIEW IF EXISTS {view}")
    return source_rows, results


def _build_one(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    agg: Aggregate,
    source: str | None,
    k: int,
    as_of: datetime,
    cutoff: datetime | None,
    noise: Noise | None,
) -> AggregateResult:
    final = aggregate_path(lake, agg.name)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stray in final.parent.glob(f".{agg.name}.*.tmp"):
        stray.unlink()  # left by a killed run; never visible to readers
    groups = f"_anon_groups_{uuid.uuid4().hex[:8]}"
    noisy = f"_anon_noisy_{uuid.uuid4().hex[:8]}"
    cols = ", ".join(columns(agg))
    if source is not None:
        con.execute(f"CREATE TEMP TABLE {groups} AS {groups_sql(agg, source)}", {"as_of": as_of})
    else:  # no analytics at all: an empty frame of the right shape
        con.execute(
            f"CREATE TEMP TABLE {groups} AS {groups_sql(agg, _empty_source())} LIMIT 0", {"as_of": as_of}
        )
    values = value_noise(noise, agg.max_calls, agg.max_duration_s) if noise else ()
    try:
        stats = con.execute(
            f"""SELECT
                  count(*) FILTER (WHERE subjects >= $k),
                  count(*) FILTER (WHERE subjects < $k),
                  coalesce(sum(calls) FILTER (WHERE subjects < $k), 0),
                  min({agg.grain}),
                  min(subjects) FILTER (WHERE subjects >= $k),
                  coalesce(sum(calls - calls_clamped) FILTER (WHERE subjects >= $k), 0),
                  coalesce(sum(duration_s_total - duration_s_clamped) FILTER (WHERE subjects >= $k), 0)
                FROM {groups}""",
            {"k": k},
        ).fetchall()[0]  # fetched whole: the connection serves the next query
        fresh, suppressed, suppressed_calls, oldest, min_subjects, clamped_calls, clamped_s = stats
        if min_subjects is not None and min_subjects < k:  # cannot happen; never publish if it does
            raise RuntimeError(f"aggregate {agg.name}: a group below k reached the output")
        carry = carry_over(con, final, agg.definition, agg.grain, columns(agg), oldest, k)
        if carry:
            suppressed += carry.below_k
            suppressed_calls += carry.below_k_calls
            if carry.min_exact is not None:
                min_subjects = min(carry.min_exact, min_subjects or carry.min_exact)
        group_keys = ", ".join(keys(agg))
        if noise is None:
            exact = ", ".join(f"0::BIGINT AS {c}" for c in CI95)
            body = f"SELECT {group_keys}, {', '.join(VALUES)}, {exact} FROM {groups} WHERE subjects >= $k"
        else:
            true = con.sql(
                f"SELECT {group_keys}, calls_clamped AS calls, subjects,"
                f" duration_s_clamped AS duration_s_total FROM {groups} WHERE subjects >= $k",
                params={"k": k},
            ).to_arrow_table()
            con.register(noisy, add_noise(true, agg.name, keys(agg), noise, values))
            body = f"SELECT {cols} FROM {noisy}"
        tmp = final.parent / f".{agg.name}.{uuid.uuid4().hex[:8]}.tmp"
        copy_params: dict[str, object] = {"k": k} if noise is None else {}
        if carry and carry.carried:
            body = f"{body} UNION ALL {carry.sql}"
            copy_params.update(carry.params)
        if cutoff is not None:
            body = f"SELECT * FROM ({body}) WHERE {PERIOD_START[agg.grain]} >= $cutoff"
            copy_params["cutoff"] = cutoff
        meta = {
            "callpipe.aggregate": agg.name,
            "callpipe.definition": agg.definition,
            "callpipe.k": str(k),
            "callpipe.as_of": as_of.isoformat(),
            "callpipe.suppressed_groups": str(suppressed),
            "callpipe.suppressed_calls": str(suppressed_calls),
            "callpipe.description": agg.description,
            **metadata(noise, values),
        }
        kv = ", ".join(f"'{key}': '{_quote(value)}'" for key, value in meta.items())
        con.execute(
            f"COPY ({body} ORDER BY ALL) TO '{_quote(str(tmp))}' "
            f"(FORMAT parquet, COMPRESSION zstd, KV_METADATA {{{kv}}})",
            copy_params,
        )
        row = con.execute(
            f"SELECT count(*), coalesce(sum(calls), 0) FROM read_parquet('{_quote(str(tmp))}')"
        ).fetchone()
        assert row is not None
        published, published_calls = row
        _fsync_file(tmp)
        os.chmod(tmp, 0o644)
        digest = audit.sha256_file(tmp)
        os.replace(tmp, final)  # the commit point: readers see the old file or the new one
        fsync_dir(final.parent)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {groups}")
        if noise is not None:
            con.unregister(noisy)
    return AggregateResult(
        name=agg.name,
        path=str(final.relative_to(lake)),
        published_groups=int(published),
        published_calls=int(published_calls),
        suppressed_groups=int(suppressed),
        suppressed_calls=int(suppressed_calls),
        carried_groups=carry.carried if carry else 0,
        expired_groups=int(fresh) + (carry.carried if carry else 0) - int(published),
        min_subjects=min_subjects,
        sha256=digest,
        noise=describe(noise, values),
        clamped_calls=int(clamped_calls) if noise else 0,
        clamped_duration_s=int(clamped_s) if noise else 0,
    )


def _empty_source() -> str:
    return (
        "(SELECT NULL::TIMESTAMPTZ AS started_at, NULL::SMALLINT AS caller_country,"
        " NULL::VARCHAR AS carrier_id, NULL::VARCHAR AS kind, NULL::VARCHAR AS direction,"
        " NULL::VARCHAR AS status,"
        " NULL::INTEGER AS duration_s, NULL::VARCHAR AS account_token)"
    )


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
