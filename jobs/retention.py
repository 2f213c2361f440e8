"""`callpipe jobs retention`: delete what the policy no longer allows the lake to keep
(docs/ARCHITECTURE.md "Policy").

`jobs.retention_plan` decides, from Parquet footers, which day partitions to drop, which files to
remove and which to rewrite (expired rows removed, category values older than their limit nulled);
`run` carries the plan out through the intent journal of `jobs.replace`, so a killed run leaves
the old or the new lake and the next run completes it, then audits it. Re-running is a no-op.

The outbox `<lake>/_outbox/` expires too, after the lake (a run killed in between removes it next
time): every file but the breach lists, `retention.outbox.days` after its clock
(`jobs.retention_outbox`: the request ledger's fulfilment time for an answered access export, when
work began for one never marked fulfilled, the file's own time for what no request names), counted
apart, never named; what no subject can be tied to is counted as held for the operator.

The dead letters kept in the lake (`<lake>/_rejects/`) expire with the lake's changes, in the same
journal: a file once all of its dead letters are older than the shortest of the vault's,
recordings' and transcripts' limits (`jobs.retention_rejects`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from jobs import audit, ledger, retention_outbox
from jobs.progress import ProgressFn
from jobs.replace import Change, job_lock, parallel, run_change, write_parquet
from jobs.retention_plan import FileAction, RetentionSummary, cutoffs, plan
from pipeline.policy import Policy
from sinks import crypt
from sinks.layout import table_dir


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
                files_audit.append(audit.file_removed(lake, lake / f.path, rows=f.rows))
            else:
                rewrites.append((f, change.temp_for(lake / f.path)))
        for path in the_plan.rejects.files:
            change.remove(path)
            files_audit.append(audit.file_removed(lake, path))

        def rewrite(item: tuple[FileAction, Path]) -> dict[str, Any]:
            f, tmp = item
            src = lake / f.path
            new = apply_limits(crypt.read_table(src), cuts.rows[f.zone], cuts.categories[f.zone])
            write_parquet(new, tmp, f.zone)
            return audit.file_replaced(lake, src, tmp, new.num_rows)

        def write() -> None:
            files_audit.extend(parallel(rewrite, rewrites, progress))
            change.info = {
                "params": {"as_of": the_plan.as_of},
                "counts": asdict(the_plan.summary()),
                "files": files_audit,
            }

        run_change(change, write)
        # The outbox after the lake: a run killed in between removes it next time (idempotent).
        expired = retention_outbox.expired(lake, ledger.requests(lake), cuts.outbox)
        summary = replace(the_plan.summary(), **asdict(retention_outbox.remove(lake, expired)))
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
