"""Compaction: merge the small files of a partition (zone / day / bucket) into files of a target
size. The stream writes a file per flush, so a busy day ends with many small files; fewer, larger
files read faster and keep per-file overheads (footers, Bloom filters) down.

Per partition, files smaller than half the target are packed, in name order, into groups of at
most `target_bytes`; each group of two or more becomes one file, its rows sorted by account,
started_at and event_id (the order every lake file declares). Before the change is committed the
new files are checked against their inputs, per partition in one DuckDB scan of each side: same
row count and same content checksum (an order-independent sum of DuckDB row hashes); and each
new file carries the offset-range lineage of its inputs (the `callpipe.lineage` key-value
metadata of `sinks.lineage`, the union of theirs). The manifest
under `<lake>/_manifest/` is never touched: it records ranges, which compaction does not change.

Files are replaced through the intent journal of `jobs.replace` (killed runs roll back or
forward). A compacted lake has no group left to merge, so re-running is a no-op.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from jobs import audit
from jobs.progress import ProgressFn
from jobs.replace import Change, job_lock, parallel, run_change, write_parquet
from jobs.subject import SUBJECT_COLUMN
from sinks import crypt, lineage
from sinks.layout import ANALYTICS, VAULT, table_dir
from sinks.read import scan

DEFAULT_TARGET_BYTES = 128 * 1024 * 1024
SORT_TAIL = ("started_at", "event_id")

# Rows and an order-independent content checksum per partition folder (the folder of a temp is
# its partition too). {columns} is every data column: the filename column is not content.
CHECKSUM_SQL = """
SELECT regexp_replace(filename, '/[^/]*$', '') AS partition,
       count(*) AS rows,
       sum(hash({columns})) AS checksum
FROM {source}
GROUP BY partition
"""


class CompactionMismatch(RuntimeError):
    """A merged file does not hold exactly the rows of its inputs; nothing was changed."""


@dataclass(frozen=True)
class Merge:
    zone: str
    partition: str  # relative to the lake
    inputs: list[str]  # file names inside the partition
    bytes_in: int
    output: str  # file name of the merged file


def merged_name(inputs: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(inputs)).encode()).hexdigest()[:16]
    return f"compacted-{digest}.parquet"


def plan(lake: Path, target_bytes: int = DEFAULT_TARGET_BYTES) -> list[Merge]:
    """The merges compaction would do (reads file sizes only)."""
    merges = []
    small = target_bytes // 2
    for zone in (VAULT, ANALYTICS):
        for part in sorted(table_dir(lake, zone).glob("dt=*/bucket=*")):
            files = sorted((p for p in part.glob("*.parquet")), key=lambda p: p.name)
            sized = [(p, p.stat().st_size) for p in files]
            group: list[tuple[Path, int]] = []
            groups = []
            for path, size in sized:
                if size >= small:
                    continue
                if group and sum(s for _p, s in group) + size > target_bytes:
                    groups.append(group)
                    group = []
                group.append((path, size))
            groups.append(group)
            for g in groups:
                if len(g) < 2:
                    continue
                names = [p.name for p, _s in g]
                merges.append(
                    Merge(zone, str(part.relative_to(lake)), names, sum(s for _p, s in g), merged_name(names))
                )
    return merges


def checksums(
    con: duckdb.DuckDBPyConnection, files: list[Path], names: list[str], *, decrypt: bool = False
) -> dict[str, tuple[int, int]]:
    """Partition folder -> (rows, checksum of the columns `names`) over `files`, in one DuckDB scan
    (through pyarrow when `decrypt`, so plaintext inputs and their encrypted merge hash alike)."""
    if not files:
        return {}
    columns = ", ".join('"' + n.replace('"', '""') + '"' for n in names)
    source, params = scan(con, files, union_by_name=True, decrypt=decrypt or None)
    rows = con.execute(CHECKSUM_SQL.format(columns=columns, source=source), params).fetchall()
    return {str(part): (int(n), int(h)) for part, n, h in rows}


def _merge(merge: Merge, lake: Path) -> pa.Table:
    part = lake / merge.partition
    sources = [part / name for name in merge.inputs]
    table = pa.concat_tables([crypt.read_table(p) for p in sources], promote_options="default")
    order = [(SUBJECT_COLUMN[merge.zone], "ascending"), *((c, "ascending") for c in SORT_TAIL)]
    table = table.sort_by(order)
    return lineage.carry_lineage(table.replace_schema_metadata(None), sources)


def run(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    *,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Compact every partition; returns what was merged and the checks' figures."""
    if dry_run:
        merges = plan(lake, target_bytes)
        return {"dry_run": True, "merges": [asdict(m) for m in merges], **_summary(merges)}
    started = time.monotonic()
    with job_lock(lake) as recovered:
        merges = plan(lake, target_bytes)
        change = Change(lake, "compact")
        temps = []
        for m in merges:
            temps.append((m, change.temp_for(lake / m.partition / m.output)))
            for name in m.inputs:
                change.remove(lake / m.partition / name)
        files_audit: list[dict[str, Any]] = []
        checked = {"rows": 0, "checksums_equal": 0}

        def merge(item: tuple[Merge, Path]) -> list[dict[str, Any]]:
            m, tmp = item
            sources = [lake / m.partition / n for n in m.inputs]
            table = _merge(m, lake)
            write_parquet(table, tmp, m.zone)
            if lineage.read_lineage(tmp) != lineage.combined_lineage(sources):
                raise CompactionMismatch(f"{m.partition}: merged file lost offset-range lineage")
            added = {
                "path": f"{m.partition}/{m.output}",
                "sha256": audit.sha256_file(tmp),
                "action": "added",
                "rows": table.num_rows,
            }
            removed = [
                {"path": f"{m.partition}/{n}", "sha256": audit.sha256_file(p), "action": "removed"}
                for n, p in zip(m.inputs, sources, strict=True)
            ]
            return [added, *removed]

        def write() -> None:
            for entries in parallel(merge, temps, progress):
                files_audit.extend(entries)
            # the check: per partition, the merged files hold the rows of their inputs, no more, no less
            for zone in (VAULT, ANALYTICS):
                mine = [(m, tmp) for m, tmp in temps if m.zone == zone]
                if not mine:
                    continue
                names = crypt.read_schema(mine[0][1]).names  # a merged file's schema: the union
                decrypt = zone == VAULT and crypt.active() is not None
                inputs = [lake / m.partition / n for m, _tmp in mine for n in m.inputs]
                before = checksums(con, inputs, names, decrypt=decrypt)
                after = checksums(con, [tmp for _m, tmp in mine], names, decrypt=decrypt)
                if before != after:
                    wrong = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
                    raise CompactionMismatch(
                        f"merged rows differ from their inputs in {len(wrong)} partitions"
                    )
                checked["rows"] += sum(n for n, _h in after.values())
                checked["checksums_equal"] += len(after)
            change.info = {"params": {"target_bytes": target_bytes}, "counts": checked, "files": files_audit}

        run_change(change, write)
        counts = {**_summary(merges), **checked, "recovered_runs": len(recovered)}
        duration = time.monotonic() - started
        audit.record(
            lake,
            job="compact",
            params={"target_bytes": target_bytes},
            counts=counts,
            files=files_audit,
            duration_s=duration,
            outcome="ok",
            run=change.run,
        )
        change.finish()
    return {"dry_run": False, "run": change.run, **counts, "duration_s": round(duration, 3)}


def _summary(merges: list[Merge]) -> dict[str, Any]:
    return {
        "partitions": len({m.partition for m in merges}),
        "files_in": sum(len(m.inputs) for m in merges),
        "files_out": len(merges),
        "bytes_in": sum(m.bytes_in for m in merges),
    }
