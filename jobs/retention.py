"""Retention: delete what the policy no longer allows the lake to keep (docs/ARCHITECTURE.md "Policy").

A row expires when its `started_at` is older than its zone's limit (vault 90 days, analytics 400
by default); a data category with a shorter limit (recording_uri and transcript, 30 days) is
nulled in rows older than that. All limits are measured back from `as_of`, exactly, to the
millisecond.

The plan reads only Parquet footers (`parquet_metadata`: row counts, min/max of started_at and
null counts per row group), so untouched files are never opened:
- a day partition whose files all end before the zone's cutoff is dropped whole (one rename);
- a file that ends before the cutoff (in a partition that lives on) is removed;
- a file that straddles the cutoff, or may hold a category value older than its limit, is read
  for exact counts (only started_at and the category columns), and rewritten only if a row
  actually changes. A second run therefore plans nothing: re-running is a no-op.
Files are changed through the intent journal of `jobs.replace`, so a killed run leaves the old
or the new lake and the next run completes it.

Access exports in `<lake>/_outbox/` expire too: an export (and its manifest) whose request was
fulfilled more than `retention.outbox.days` before `as_of` is removed (`jobs.outbox`: found through
the request ledger, aged by the ledger's fulfilment time, unlinked then the folder fsynced) and
counted as `access_exports_removed`. Breach lists are not touched.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from jobs import audit, ledger, outbox
from jobs.progress import ProgressFn
from jobs.replace import Change, job_lock, parallel, pending, run_change, write_parquet
from pipeline.policy import Policy
from sinks import crypt
from sinks.layout import ANALYTICS, VAULT, table_dir
from sinks.read import footers, scan

# Category columns with a limit of their own, per zone (policy field -> column).
CATEGORY_COLUMNS = {
    VAULT: {"recording": "recording_uri", "transcript": "transcript"},
    ANALYTICS: {"transcript": "transcript"},
}


@dataclass(frozen=True)
class Cutoffs:
    """Per zone: rows started before `rows` expire; category columns are nulled before theirs."""

    rows: dict[str, datetime]
    categories: dict[str, dict[str, datetime]]  # zone -> column -> cutoff
    outbox: datetime  # access exports fulfilled before it expire


def cutoffs(policy: Policy, as_of: datetime) -> Cutoffs:
    if as_of.tzinfo is None:
        raise ValueError("as_of must carry a time zone (UTC): a naive time is ambiguous")
    r = policy.retention
    days = {VAULT: r.vault_days, ANALYTICS: r.analytics_days}
    category_days = {"recording": r.recording_days, "transcript": r.transcript_days}
    return Cutoffs(
        rows={zone: as_of - timedelta(days=d) for zone, d in days.items()},
        categories={
            zone: {column: as_of - timedelta(days=category_days[cat]) for cat, column in cols.items()}
            for zone, cols in CATEGORY_COLUMNS.items()
        },
        outbox=as_of - timedelta(days=r.outbox_days),
    )


@dataclass(frozen=True)
class FileAction:
    path: str  # relative to the lake
    zone: str
    rows: int
    action: str  # "remove" | "rewrite"
    rows_removed: int
    nulled: dict[str, int] = field(default_factory=dict)  # column -> values nulled


@dataclass(frozen=True)
class Plan:
    as_of: str
    cutoffs: dict[str, Any]
    drops: list[dict[str, Any]]  # {zone, dt, files, rows}
    files: list[FileAction]
    files_total: int
    pending_journals: int
    access_exports: int = 0  # expired access exports in the outbox

    @property
    def empty(self) -> bool:
        return not (self.drops or self.files or self.access_exports)

    def summary(self) -> RetentionSummary:
        rows_removed: dict[str, int] = defaultdict(int)
        nulled: dict[str, int] = defaultdict(int)
        for d in self.drops:
            rows_removed[d["zone"]] += d["rows"]
        for f in self.files:
            rows_removed[f.zone] += f.rows_removed
            for column, n in f.nulled.items():
                nulled[f"{f.zone}.{column}"] += n
        touched = sum(d["files"] for d in self.drops) + len(self.files)
        return RetentionSummary(
            partitions_dropped=len(self.drops),
            files_removed=sum(d["files"] for d in self.drops)
            + sum(1 for f in self.files if f.action == "remove"),
            files_rewritten=sum(1 for f in self.files if f.action == "rewrite"),
            files_total=self.files_total,
            files_touched_share=round(touched / self.files_total, 4) if self.files_total else 0.0,
            rows_removed=dict(rows_removed),
            values_nulled=dict(nulled),
            access_exports_removed=self.access_exports,
        )


@dataclass(frozen=True)
class RetentionSummary:
    """What a retention run removes or removed, as its audit entry counts it."""

    partitions_dropped: int
    files_removed: int
    files_rewritten: int
    files_total: int
    files_touched_share: float
    rows_removed: dict[str, int]  # by zone
    values_nulled: dict[str, int]  # by zone.column
    access_exports_removed: int = 0  # expired access exports (with their manifests) in the outbox


@dataclass(frozen=True)
class RetentionResult:
    """A retention plan (`dry_run`: with every partition and file it would touch) or a finished
    run (with its run id, the killed jobs completed first and its duration)."""

    dry_run: bool
    as_of: str
    cutoffs: dict[str, Any]
    summary: RetentionSummary
    partitions: list[dict[str, Any]] = field(default_factory=list)  # dry run: days to drop
    files: list[dict[str, Any]] = field(default_factory=list)  # dry run: files to rewrite or remove
    pending_journals: int = 0  # dry run: killed jobs the next run completes
    run: str | None = None
    recovered: list[tuple[str, str]] = field(default_factory=list)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """`--json`'s output: the plan's keys for a dry run, the run's otherwise."""
        head = {"dry_run": self.dry_run}
        if self.dry_run:
            return {
                **head,
                "as_of": self.as_of,
                "cutoffs": self.cutoffs,
                "summary": asdict(self.summary),
                "partitions": self.partitions,
                "files": self.files,
                "pending_journals": self.pending_journals,
            }
        return {
            **head,
            "run": self.run,
            "as_of": self.as_of,
            "cutoffs": self.cutoffs,
            "summary": asdict(self.summary),
            "recovered": self.recovered,
            "duration_s": self.duration_s,
        }


FOOTERS_SQL = """
WITH row_groups AS (
    SELECT file_name, row_group_id, any_value(row_group_num_rows) AS rows,
           min(TRY_CAST(stats_min_value AS TIMESTAMPTZ)) FILTER (path_in_schema = 'started_at') AS lo,
           max(TRY_CAST(stats_max_value AS TIMESTAMPTZ)) FILTER (path_in_schema = 'started_at') AS hi,
           {nonnull_cols}
    FROM {footers}
    GROUP BY file_name, row_group_id
)
SELECT file_name,
       sum(rows)::BIGINT AS rows,
       -- NULL when a row group has no statistics: read as "could be anything"
       CASE WHEN count(lo) = count(*) THEN min(lo) END AS lo,
       CASE WHEN count(hi) = count(*) THEN max(hi) END AS hi,
       {maybe_cols}
FROM row_groups
GROUP BY file_name
"""

COUNTS_SQL = """
SELECT filename,
       count(*) FILTER (started_at < $row_cutoff) AS expired,
       {nulled_cols}
FROM {source}
GROUP BY filename
"""


def _footers(con: duckdb.DuckDBPyConnection, files: list[str], columns: dict[str, datetime]) -> list[tuple]:
    nonnull = ",\n           ".join(
        f"sum(row_group_num_rows - coalesce(stats_null_count, 0)) "
        f"FILTER (path_in_schema = '{c}') AS nonnull_{c}"
        for c in columns
    )
    maybe = ",\n       ".join(
        f"coalesce(bool_or(coalesce(nonnull_{c}, 1) > 0 AND coalesce(lo < $cut_{c}, true)), false)"
        f" AS maybe_{c}"
        for c in columns
    )
    source, params = footers(con, files)
    sql = FOOTERS_SQL.format(nonnull_cols=nonnull, maybe_cols=maybe, footers=source)
    params.update({f"cut_{c}": t for c, t in columns.items()})
    return con.execute(sql, params).fetchall()


def _exact(
    con: duckdb.DuckDBPyConnection, files: list[str], row_cutoff: datetime, columns: dict[str, datetime]
) -> dict[str, tuple[int, dict[str, int]]]:
    nulled = ",\n       ".join(
        f"count(*) FILTER (started_at >= $row_cutoff AND started_at < $cut_{c} AND {c} IS NOT NULL) AS {c}"
        for c in columns
    )
    source, params = scan(con, files)
    params.update({"row_cutoff": row_cutoff, **{f"cut_{c}": t for c, t in columns.items()}})
    out = {}
    for row in con.execute(COUNTS_SQL.format(nulled_cols=nulled, source=source), params).fetchall():
        out[row[0]] = (int(row[1]), {c: int(n) for c, n in zip(columns, row[2:], strict=True)})
    return out


def plan(con: duckdb.DuckDBPyConnection, lake: Path, policy: Policy, as_of: datetime) -> Plan:
    """What retention would change at `as_of`; reads footers and, for boundary files, 2-3 columns."""
    cuts = cutoffs(policy, as_of)
    drops: list[dict[str, Any]] = []
    actions: list[FileAction] = []
    total = 0
    for zone in (VAULT, ANALYTICS):
        files = sorted(Path(table_dir(lake, zone)).glob("dt=*/bucket=*/*.parquet"))
        total += len(files)
        if not files:
            continue
        row_cut = cuts.rows[zone]
        columns = cuts.categories[zone]
        by_partition: dict[str, list[tuple]] = defaultdict(list)
        footers = _footers(con, [str(f) for f in files], columns)
        for row in footers:
            by_partition[Path(row[0]).parent.parent.name].append(row)
        candidates = []
        for dt, rows in sorted(by_partition.items()):
            expired = [r for r in rows if _ends_before(r[3], row_cut)]
            if len(expired) == len(rows):
                drops.append(
                    {"zone": zone, "dt": dt[3:], "files": len(rows), "rows": sum(r[1] for r in rows)}
                )
                continue
            for r in rows:
                if _ends_before(r[3], row_cut):
                    actions.append(FileAction(_rel(lake, r[0]), zone, r[1], "remove", r[1]))
                elif r[2] is None or r[2] < row_cut or any(r[4:]):
                    candidates.append(r)
        if not candidates:
            continue
        exact = _exact(con, [r[0] for r in candidates], row_cut, columns)
        for r in candidates:
            expired_rows, nulled = exact.get(r[0], (0, {}))
            nulled = {c: n for c, n in nulled.items() if n}
            if expired_rows == r[1]:
                actions.append(FileAction(_rel(lake, r[0]), zone, r[1], "remove", r[1]))
            elif expired_rows or nulled:
                actions.append(FileAction(_rel(lake, r[0]), zone, r[1], "rewrite", expired_rows, nulled))
    return Plan(
        as_of=as_of.isoformat(),
        cutoffs={
            **{
                zone: {"rows": cuts.rows[zone].isoformat(), **{c: t.isoformat() for c, t in cols.items()}}
                for zone, cols in cuts.categories.items()
            },
            "outbox": {"access_exports": cuts.outbox.isoformat()},
        },
        drops=drops,
        files=sorted(actions, key=lambda a: a.path),
        files_total=total,
        pending_journals=len(pending(lake)),
        access_exports=len(outbox.expired_access_exports(lake, ledger.requests(lake), cuts.outbox)),
    )


def apply_limits(table: pa.Table, row_cutoff: datetime, columns: dict[str, datetime]) -> pa.Table:
    """The rows of `table` that live on, with category values older than their limit nulled."""
    started = table["started_at"]
    kept = table.filter(pc.greater_equal(started, pa.scalar(row_cutoff, started.type)))
    started = kept["started_at"]
    for column, cut in columns.items():
        old = pc.less(started, pa.scalar(cut, started.type))
        values = kept[column]
        idx = kept.schema.get_field_index(column)
        kept = kept.set_column(
            idx, kept.schema.field(column), pc.if_else(old, pa.nulls(len(values), values.type), values)
        )
    return kept


def run(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    policy: Policy,
    as_of: datetime,
    *,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
) -> RetentionResult:
    """Enforce retention at `as_of`. With `dry_run`, only plan (nothing is touched, not even a
    killed job's journal). Returns the plan, its summary and (for a real run) the run id."""
    if dry_run:
        p = plan(con, lake, policy, as_of)
        return RetentionResult(
            dry_run=True,
            as_of=p.as_of,
            cutoffs=p.cutoffs,
            summary=p.summary(),
            partitions=p.drops,
            files=[asdict(f) for f in p.files],
            pending_journals=p.pending_journals,
        )
    started = time.monotonic()
    with job_lock(lake) as recovered:
        the_plan = plan(con, lake, policy, as_of)
        cuts = cutoffs(policy, as_of)
        change = Change(lake, "retention")
        for d in the_plan.drops:
            change.drop(table_dir(lake, d["zone"]) / f"dt={d['dt']}")
        files_audit: list[dict[str, Any]] = [
            {
                "path": f"{d['zone']}/calls/dt={d['dt']}",
                "sha256": None,
                "action": "removed",
                "rows": d["rows"],
            }
            for d in the_plan.drops
        ]
        rewrites = []
        for f in the_plan.files:
            if f.action == "remove":
                change.remove(lake / f.path)
                files_audit.append(
                    {
                        "path": f.path,
                        "sha256": None,
                        "previous_sha256": audit.sha256_file(lake / f.path),
                        "action": "removed",
                        "rows": f.rows,
                    }
                )
            else:
                rewrites.append((f, change.temp_for(lake / f.path)))

        def rewrite(item: tuple[FileAction, Path]) -> dict[str, Any]:
            f, tmp = item
            src = lake / f.path
            new = apply_limits(crypt.read_table(src), cuts.rows[f.zone], cuts.categories[f.zone])
            write_parquet(new, tmp, f.zone)
            return {
                "path": f.path,
                "sha256": audit.sha256_file(tmp),
                "previous_sha256": audit.sha256_file(src),
                "action": "replaced",
                "rows": new.num_rows,
            }

        def write() -> None:
            files_audit.extend(parallel(rewrite, rewrites, progress))
            change.info = {
                "params": {"as_of": the_plan.as_of},
                "counts": asdict(the_plan.summary()),
                "files": files_audit,
            }

        run_change(change, write)
        # The outbox after the lake: a run killed in between removes them next time (idempotent).
        expired = outbox.expired_access_exports(lake, ledger.requests(lake), cuts.outbox)
        summary = replace(the_plan.summary(), access_exports_removed=outbox.remove(lake, expired))
        duration = time.monotonic() - started
        audit.record(
            lake,
            job="retention",
            params={"as_of": the_plan.as_of, "cutoffs": the_plan.cutoffs},
            counts={**asdict(summary), "recovered_runs": len(recovered)},
            files=files_audit,
            duration_s=duration,
            outcome="ok",
            run=change.run,
        )
        change.finish()
    return RetentionResult(
        dry_run=False,
        as_of=the_plan.as_of,
        cutoffs=the_plan.cutoffs,
        summary=summary,
        run=change.run,
        recovered=recovered,
        duration_s=round(duration, 3),
    )


def _ends_before(hi: datetime | None, cutoff: datetime) -> bool:
    """Whether a file's last started_at (None: no statistics) is before `cutoff`."""
    return hi is not None and hi < cutoff


def _rel(lake: Path, path: str) -> str:
    return str(Path(path).relative_to(lake))
