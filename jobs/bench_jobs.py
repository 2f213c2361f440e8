"""Throughput of retention and erase, each as a ratio to a plain DuckDB COPY of the same data in
the same run (what `callpipe bench jobs` reports).

On a synthetic lake (`jobs.synth`; 10 million calls over 180 days, or 500 thousand over 60 days
with `quick`; one file per partition, as compaction leaves it), measured on copies of the lake so
every job starts from the same state:
- copy: `COPY (SELECT * FROM <zone view>) TO ... (FORMAT parquet)` per zone (`sinks.read.duckdb_view`), the
  baseline: DuckDB reading and writing every row once, without fsync or any selection;
- retention at the day after the last day (vault and categories expire, partitions drop, files
  straddling a limit are rewritten);
- erase of one typical subject, active on the number of days closest to 35 (bucket, statistics
  and Bloom filters pick the files);
- compact, on a second lake: the last 14 days at the same daily volume with 8 files per
  partition (fresh stream output), merged into one file each and checked by count, checksum and
  lineage; its ratio is to a COPY of that lake;
- enforcement (`jobs.bench_enforce`): a `jobs requests` pass with nothing new to do on a lake
  with N subjects erased before and `_rejects/` of 50 (quick) or 200 dead-letter files, as a
  ratio to the same pass with one erased subject (N if the cost were linear), and per subject.
rows/s is the lake's rows (both zones) over the wall time; `ratio` is the job's rows/s over the
copy's. Retention and erase rewrite only what they must, so a ratio above 1 means skipping work
paid off; `rewritten_rows_per_s` is the rows of the files a job actually rewrote, over its time.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from jobs import bench_enforce, compact, erase_direct, retention
from jobs.synth import SynthSpec, build
from pipeline.keys import PseudonymKey
from pipeline.policy import DEFAULT_POLICY
from sinks.layout import ANALYTICS, VAULT
from sinks.read import duckdb_view

BENCH_KEY = PseudonymKey("bench", bytes(range(32)))
TYPICAL_DAYS = 35  # a typical subject is on ~35 of 180 days (docs/ARCHITECTURE.md "Lake layout")

TYPICAL_SQL = """
SELECT account_id, count(DISTINCT started_at::DATE) AS days, count(*) AS calls
FROM {source}
GROUP BY account_id
ORDER BY abs(days - $days), account_id
LIMIT 1
"""


def typical_subject(
    con: duckdb.DuckDBPyConnection, lake: Path, days: int = TYPICAL_DAYS
) -> tuple[str, int, int]:
    """(account id, days, calls) of the vault subject whose active days are closest to `days`."""
    view = duckdb_view(con, lake, VAULT, "bench_vault")  # decrypts an encrypted vault (sinks.read)
    row = con.execute(TYPICAL_SQL.format(source=view), {"days": days}).fetchone()
    assert row is not None
    return str(row[0]), int(row[1]), int(row[2])


FRESH_DAYS = 14
FRESH_FILES = 8


def spec(quick: bool) -> SynthSpec:
    """The lake retention and erase run on: one file per partition, as compaction leaves the days
    they work on (retention acts on data 30 days old and more)."""
    return SynthSpec(rows=500_000, days=60) if quick else SynthSpec(rows=10_000_000, days=180)


def fresh_spec(quick: bool) -> SynthSpec:
    """The lake compaction runs on: the last two weeks at the same daily volume, before compaction,
    with eight files per partition (a stream writes one per flush)."""
    main = spec(quick)
    rows = round(main.rows * FRESH_DAYS / main.days)
    return SynthSpec(rows=rows, days=FRESH_DAYS, files_per_partition=FRESH_FILES, seed=main.seed + 1)


def _lake_rows(con: duckdb.DuckDBPyConnection, lake: Path) -> dict[str, int]:
    out = {}
    for zone in (VAULT, ANALYTICS):
        row = con.execute(f"SELECT count(*) FROM {duckdb_view(con, lake, zone, f'bench_{zone}')}").fetchone()
        out[zone] = int(row[0]) if row else 0
    return out


def _copy(con: duckdb.DuckDBPyConnection, lake: Path, out: Path) -> float:
    started = time.monotonic()
    for zone in (VAULT, ANALYTICS):
        target = out / f"{zone}.parquet"
        view = duckdb_view(con, lake, zone, f"bench_{zone}")
        con.execute(f"COPY (SELECT * FROM {view}) TO '{target}' (FORMAT parquet)")
    return time.monotonic() - started


def _rewritten_rows(result_files: int, lake_rows: int, lake_files: int) -> int:
    """Rows of the rewritten files, estimated from the lake's average file size in rows."""
    return round(result_files * lake_rows / lake_files) if lake_files else 0


def run(quick: bool, lake: Path | None = None, workdir: Path | None = None) -> dict[str, Any]:
    """Build (or reuse `lake`, built with `BENCH_KEY`'s secret), then time copy, retention, erase."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        built: dict[str, Any] = {}
        if lake is None:
            lake = root / "lake"
            built = build(lake, BENCH_KEY, spec(quick))
        con = duckdb.connect()
        con.execute("SET enable_progress_bar = false")
        rows = _lake_rows(con, lake)
        total_rows = sum(rows.values())
        files = len(list(lake.glob("*/calls/dt=*/bucket=*/*.parquet")))
        (root / "copy").mkdir()
        copy_s = _copy(con, lake, root / "copy")
        shutil.rmtree(root / "copy")
        copy_rps = total_rows / copy_s

        last = max(p.name for p in (lake / VAULT / "calls").glob("dt=*"))[3:]
        as_of = datetime.fromisoformat(last).replace(tzinfo=UTC) + timedelta(days=1)
        work = root / "work"
        shutil.copytree(lake, work)
        started = time.monotonic()
        ret = retention.run(con, work, DEFAULT_POLICY, as_of)
        retention_s = time.monotonic() - started
        shutil.rmtree(work)

        shutil.copytree(lake, work)
        buckets = len({p.name for p in (lake / VAULT / "calls").glob("dt=*/bucket=*")})
        subject, subject_days, subject_calls = typical_subject(con, lake)
        started = time.monotonic()
        era = erase_direct.run(
            con,
            work,
            BENCH_KEY,
            subject,
            buckets=buckets,
            deadlines=DEFAULT_POLICY.requests,
            now=as_of,
            by="bench",
        ).erasure
        erase_s = time.monotonic() - started
        shutil.rmtree(work)

        fresh = root / "fresh"
        build(fresh, BENCH_KEY, fresh_spec(quick))
        fresh_rows = sum(_lake_rows(con, fresh).values())
        (root / "copy").mkdir()
        fresh_copy_s = _copy(con, fresh, root / "copy")
        shutil.rmtree(root / "copy")
        started = time.monotonic()
        com = compact.run(con, fresh)
        compact_s = time.monotonic() - started
    enforcement = bench_enforce.run(*bench_enforce.sizes(quick), workdir=workdir)

    def job(seconds: float, files_rewritten: int, extra: dict[str, Any]) -> dict[str, Any]:
        rps = total_rows / seconds
        return {
            "seconds": round(seconds, 2),
            "rows_per_s": round(rps),
            "ratio_to_copy": round(rps / copy_rps, 3),
            "files_rewritten": files_rewritten,
            "rewritten_rows_per_s": round(_rewritten_rows(files_rewritten, total_rows, files) / seconds),
            **extra,
        }

    s = ret.summary
    compact_rps = fresh_rows / compact_s
    fresh_copy_rps = fresh_rows / fresh_copy_s
    return {
        "quick": quick,
        "lake": {"rows": rows, "files": files, **({"build_s": built["seconds"]} if built else {})},
        "copy": {"seconds": round(copy_s, 2), "rows_per_s": round(copy_rps)},
        "retention": job(
            retention_s,
            s.files_rewritten,
            {
                "partitions_dropped": s.partitions_dropped,
                "rows_removed": s.rows_removed,
                "values_nulled": s.values_nulled,
            },
        ),
        "erase": job(
            erase_s,
            era.files_rewritten,
            {
                "files_touched_share": era.files_touched_share,
                "rows_removed": era.rows_removed,
                "subject_days": subject_days,
                "subject_calls": subject_calls,
            },
        ),
        "compact": {
            "lake": f"last {FRESH_DAYS} days, {FRESH_FILES} files per partition, {fresh_rows:,} rows",
            "copy_seconds": round(fresh_copy_s, 2),
            "seconds": round(compact_s, 2),
            "rows_per_s": round(compact_rps),
            "ratio_to_copy": round(compact_rps / fresh_copy_rps, 3),
            "files_in": com.files_in,
            "files_out": com.files_out,
            "rows_checked": com.rows,
        },
        "enforcement": enforcement,
    }


if __name__ == "__main__":
    from pipeline.settings import Settings
    from sinks import crypt

    crypt.configure_temporary(encrypted=Settings.from_env().vault_encryption)  # no CLI here
    import sys

    import orjson

    reuse = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    result = run(quick=len(sys.argv) > 1 and sys.argv[1] == "quick", lake=reuse)
    sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
