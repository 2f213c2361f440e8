"""The retention plan: what the policy no longer allows the lake to keep at `as_of`, decided before
anything is touched (`jobs.retention` carries it out; docs/ARCHITECTURE.md "Policy").

A row expires when its `started_at` is older than its zone's limit (vault 90 days, analytics 400
by default); a data category with a shorter limit (recording_uri and transcript, 30 days) is
nulled in rows older than that (`pipeline.expiry.CATEGORY_COLUMNS`: which columns, per zone). All
limits are measured back from `as_of`, exactly, to the millisecond. The stream and `callpipe
ingest` apply the same limits when rows land (`pipeline.expiry`), so this removes only what has
aged past them since.

The plan reads only Parquet footers (`parquet_metadata`: row counts, min/max of started_at and
null counts per row group), so untouched files are never opened:
- a day partition whose files all end before the zone's cutoff is dropped whole (one rename);
- a file that ends before the cutoff (in a partition that lives on) is removed;
- a file that straddles the cutoff, or may hold a category value older than its limit, is read
  for exact counts (only started_at and the category columns), and rewritten only if a row
  actually changes. A second run therefore plans nothing: re-running is a no-op.
The outbox's part (what of `<lake>/_outbox/` expires, by which clock) is `jobs.retention_outbox`;
the plan carries its counts. The dead letters' part (which files of `<lake>/_rejects/` expire, at
the shortest of the vault's, recordings' and transcripts' limits) is `jobs.retention_rejects`;
the plan carries the files, and the run removes them with the lake's changes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from jobs import ledger, retention_outbox, retention_rejects
from jobs.replace import pending
from jobs.retention_outbox import OutboxCounts
from pipeline.expiry import CATEGORY_COLUMNS
from pipeline.policy import Policy
from sinks.layout import ANALYTICS, VAULT, table_dir
from sinks.read import footers, scan


@dataclass(frozen=True)
class Cutoffs:
    """Per zone: rows started before `rows` expire; category columns are nulled before theirs."""

    rows: dict[str, datetime]
    categories: dict[str, dict[str, datetime]]  # zone -> column -> cutoff
    outbox: datetime  # files of the outbox (breach lists aside) made before it expire
    rejects: datetime  # files of dead letters whose newest is before it expire


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
        rejects=retention_rejects.cutoff(policy, as_of),
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
    outbox: OutboxCounts = field(default_factory=OutboxCounts)  # what expires in the outbox
    rejects: retention_rejects.Expired = field(default_factory=retention_rejects.Expired)

    @property
    def empty(self) -> bool:
        o = self.outbox
        removed = o.access_exports_removed + o.unfulfilled_exports_removed + o.unledgered_files_removed
        return not (self.drops or self.files or removed or self.rejects.files)

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
            **asdict(self.outbox),
            **asdict(self.rejects.counts()),
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
    # The outbox (`retention_outbox.OutboxCounts`, one field each): counts, never names.
    access_exports_removed: int = 0
    unfulfilled_exports_removed: int = 0
    unledgered_files_removed: int = 0
    unledgered_files_held: int = 0
    unattributed_files_held: int = 0
    breach_lists_kept: int = 0
    # Dead letters under `_rejects/` (`retention_rejects.RejectsCounts`): files, never named on screen.
    dead_letter_files_removed: int = 0
    dead_letters_expired: int = 0
    dead_letter_files_held: int = 0


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
            "rejects": {"dead_letters": cuts.rejects.isoformat()},
        },
        drops=drops,
        files=sorted(actions, key=lambda a: a.path),
        files_total=total,
        pending_journals=len(pending(lake)),
        outbox=retention_outbox.expired(lake, ledger.requests(lake), cuts.outbox).counts(),
        rejects=retention_rejects.expired(lake, cuts.rejects),
    )


def _ends_before(hi: datetime | None, cutoff: datetime) -> bool:
    """Whether a file's last started_at (None: no statistics) is before `cutoff`."""
    return hi is not None and hi < cutoff


def _rel(lake: Path, path: str) -> str:
    return str(Path(path).relative_to(lake))
