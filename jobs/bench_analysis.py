"""Benchmark of the analysts' jobs, for `callpipe bench jobs`: anonymize (and the risk measure) in
rows per second over the analytics zone, each as a ratio to a plain DuckDB COPY of the same files
to one Parquet file in the same run, on the same machine.

`run(quick=False)` synthesizes a 10-million-row, 180-day lake with `jobs.synth` (a few minutes);
`quick=True` a 200k-row, 30-day one. Pass `lake=` to measure an existing lake instead.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import duckdb

from jobs import risk
from jobs.anonymize import anonymize
from jobs.anonymize_noise import KEY_PURPOSE, Noise
from jobs.noise import NoiseKey
from pipeline.keys import PseudonymKey
from sinks import layout

BENCH_KEY = PseudonymKey("bench", bytes(range(32)))


def _spec(quick: bool) -> Any:
    from jobs.synth import SynthSpec

    if quick:
        return SynthSpec(rows=200_000, days=30, workers=2)
    return SynthSpec(rows=10_000_000, days=180, workers=2)


def _copy_seconds(con: duckdb.DuckDBPyConnection, lake: Path, out: Path) -> tuple[int, float]:
    files = layout.glob(lake, layout.ANALYTICS).replace("'", "''")
    started = time.perf_counter()
    con.execute(f"COPY (SELECT * FROM read_parquet('{files}')) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
    seconds = time.perf_counter() - started
    row = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()
    return (int(row[0]) if row else 0), seconds


def run(quick: bool, lake: Path | None = None, k: int = 5) -> dict[str, Any]:
    """Measure; returns the figures as plain data (rows, seconds, rows/s, ratios to COPY)."""
    work = Path(tempfile.mkdtemp(prefix="callpipe-bench-analysis-"))
    try:
        synth: dict[str, Any] | None = None
        if lake is None:
            from jobs.synth import build

            lake = work / "lake"
            synth = build(lake, BENCH_KEY, _spec(quick))
        spec_last = datetime.now(UTC) if synth is None else datetime.fromisoformat(synth["spec"]["last_day"])
        as_of = spec_last.replace(tzinfo=UTC) + timedelta(days=1)
        con = duckdb.connect()
        rows, copy_s = _copy_seconds(con, lake, work / "copy.parquet")
        started = time.perf_counter()
        # noise on, as the policy's default: its draws are part of the cost
        noise = Noise(NoiseKey(BENCH_KEY.version, BENCH_KEY.derive(KEY_PURPOSE)), Fraction(1))
        result = anonymize(con, lake, k=k, as_of=as_of, noise=noise)
        anon_s = time.perf_counter() - started
        figures: dict[str, Any] = {
            "rows": rows,
            "copy": {"seconds": round(copy_s, 2), "rows_per_s": round(rows / copy_s)},
            "anonymize": {
                "seconds": round(anon_s, 2),
                "rows_per_s": round(rows / anon_s),
                "ratio_to_copy": round(copy_s / anon_s, 3),
                "aggregates": {
                    a.name: {"groups": a.published_groups, "suppressed_groups": a.suppressed_groups}
                    for a in result.aggregates
                },
            },
        }
        for resolution in (risk.FINE, risk.COARSE):
            started = time.perf_counter()
            u = risk.unicity(con, lake, as_of=as_of, resolution=resolution, sample=1000, seed=0)
            seconds = time.perf_counter() - started
            figures[f"unicity_{resolution.name}"] = {
                "seconds": round(seconds, 2),
                "rows_per_s": round(rows / seconds),
                "ratio_to_copy": round(copy_s / seconds, 3),
                "subjects": u.subjects,
                "share_by_points": {p.points: round(p.share, 4) for p in u.by_points},
            }
        con.close()
        if synth is not None:
            figures["lake"] = {k_: synth[k_] for k_ in ("vault_rows", "analytics_rows", "files", "seconds")}
            figures["lake"]["days"] = synth["spec"]["days"]
        return figures
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # python -m jobs.bench_analysis [--quick] [LAKE]
    from pipeline.settings import Settings
    from sinks import crypt

    crypt.configure_temporary(encrypted=Settings.from_env().vault_encryption)  # no CLI here
    import json
    import sys

    args = [a for a in sys.argv[1:] if a != "--quick"]
    print(json.dumps(run("--quick" in sys.argv, Path(args[0]) if args else None), indent=2))
