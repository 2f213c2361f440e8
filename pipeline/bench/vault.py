"""What encrypting the vault costs (`callpipe bench vault`): the same vault rows written, read
back and queried as plaintext Parquet and as encrypted Parquet (sinks.crypt: encrypted footer,
personal columns under a column key, AES-GCM), in the same run; ratios encrypted / plain.

- write: every partition file of the rows (day x bucket, as the sink lays them out) through
  `sinks.files.write_table`, without fsync;
- read: every file back whole (`sinks.crypt.read_table`);
- query: a DuckDB aggregate over the zone view (`sinks.read.duckdb_view`: read_parquet for
  plaintext, a decrypting pyarrow dataset for encrypted files).
Each is run `ROUNDS` times alternating plain and encrypted; the fastest round of each counts.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from pipeline.bench.bench_sink import rows
from pipeline.bench.common import table
from sinks import crypt, files
from sinks.arrow import buckets_of, partition, vault_table
from sinks.layout import VAULT, partition_dir
from sinks.read import duckdb_view, zone_files

ROUNDS = 3
QUERY = "SELECT account_id, count(*), sum(duration_s), count(transcript) FROM {view} GROUP BY 1"


def _timed(fn: Callable[[str], None], mode: str) -> float:
    start = time.perf_counter()
    fn(mode)
    return time.perf_counter() - start


def run(quick: bool) -> dict[str, Any]:
    n = 50_000 if quick else 400_000
    vault_rows, _analytics, tokens = rows(n, accounts=max(500, n // 40), days=4)
    parts = partition(vault_table(vault_rows), VAULT, buckets_of(tokens, 8))
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "vault.keys"
        crypt.create_key_file(keys)
        modes = {"plain": None, "encrypted": crypt.from_key_file(keys)}
        lakes = {mode: Path(tmp) / mode for mode in modes}
        seconds: dict[str, dict[str, float]] = {m: {"write": 1e9, "read": 1e9, "query": 1e9} for m in modes}

        def write(mode: str) -> None:
            for part in parts:
                folder = partition_dir(lakes[mode], VAULT, part.dt, part.bucket)
                folder.mkdir(parents=True, exist_ok=True)
                files.write_table(part.table, folder / "bench.parquet", VAULT)

        def read(mode: str) -> None:
            for path in zone_files(lakes[mode], VAULT):
                crypt.read_table(path)

        def query(mode: str) -> None:
            con = duckdb.connect()
            view = duckdb_view(con, lakes[mode], VAULT, "v")
            con.execute(QUERY.format(view=view)).fetchall()

        for _ in range(ROUNDS):
            for mode, crypto in modes.items():
                with crypt.configured(crypto):
                    for step, fn in (("write", write), ("read", read), ("query", query)):
                        seconds[mode][step] = min(seconds[mode][step], _timed(fn, mode))
        size = {m: sum(p.stat().st_size for p in zone_files(lakes[m], VAULT)) for m in modes}
    return {
        "rows": n,
        "files": len(parts),
        "bytes": size,
        "seconds": {m: {k: round(v, 4) for k, v in s.items()} for m, s in seconds.items()},
        "rows_per_s": {m: {k: round(n / v) for k, v in s.items()} for m, s in seconds.items()},
        "ratio": {
            k: round(seconds["encrypted"][k] / seconds["plain"][k], 2) for k in ("write", "read", "query")
        },
    }


def render(figures: dict[str, Any]) -> str:
    out = [f"vault encryption cost: {figures['rows']:,} rows in {figures['files']} files, best of {ROUNDS}"]
    rps = figures["rows_per_s"]
    out.append(
        table(
            ["step", "plain rows/s", "encrypted rows/s", "time ratio (encrypted / plain)"],
            [
                [k, rps["plain"][k], rps["encrypted"][k], figures["ratio"][k]]
                for k in ("write", "read", "query")
            ],
        )
    )
    b = figures["bytes"]
    out.append(f"bytes: plain {b['plain']:,}, encrypted {b['encrypted']:,}")
    return "\n".join(out)
