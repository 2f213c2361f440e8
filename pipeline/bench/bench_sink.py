"""Sink throughput: rows -> Arrow -> Parquet in the lake, and how well DuckDB prunes by account.

    .venv/bin/python pipeline/bench/bench_sink.py [--rows 100000] [--accounts 5000] [--days 2]

Prints rows/s of each stage (conversion, partitioning, one whole LakeWriter flush with fsyncs)
and, over a lake of several flushes, the row groups DuckDB scans for one account: by the vault's
account_id (bloom filter + statistics) against a column without a bloom filter.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

from pipeline.keys import Domain, PseudonymKey
from pipeline.settings import Settings
from sinks.arrow import analytics_table, buckets_of, partition, vault_table
from sinks.lake import LakeWriter
from sinks.layout import ANALYTICS, VAULT
from sinks.read import duckdb_view, zone_files

KEY = PseudonymKey("v1", b"bench-key-0123456789abcdef012345")
T0 = 1_764_374_400_000
WORDS = (
    "thanks",
    "for",
    "calling",
    "about",
    "your",
    "order",
    "the",
    "invoice",
    "was",
    "sent",
    "on",
    "monday",
)


def rows(
    n: int, accounts: int, days: int, seed: int = 7
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    rnd = random.Random(seed)
    vault, analytics, tokens = [], [], []
    token_of = {f"acct-{a:06d}": KEY.token(Domain.ACCOUNT, f"acct-{a:06d}") for a in range(accounts)}
    for i in range(n):
        account = f"acct-{rnd.randrange(accounts):06d}"
        started = T0 + rnd.randrange(days * 86_400_000)
        answered = rnd.random() < 0.7
        lineage = {"source_partition": 3, "source_offset": i, "source_index": 0}
        device = None
        if rnd.random() < 0.4:
            device = {
                "device_id": f"dev-{rnd.randrange(10**9)}",
                "device_type": "phone",
                "os": "Android 14",
                "app_version": "5.2.1",
            }
        text = " ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(10, 60))) if answered else None
        vault.append(
            {
                "event_id": f"ev-{i:09d}",
                "account_id": account,
                "org_id": f"org-{rnd.randrange(300)}",
                "carrier_id": f"carrier-{rnd.randrange(5)}",
                "kind": "voice",
                "direction": "inbound",
                "caller": f"+4477009{rnd.randrange(10**5):05d}",
                "callee": f"+4420794{rnd.randrange(10**5):05d}",
                "started_at": started,
                "answered_at": started + 4000 if answered else None,
                "ended_at": started + 64000,
                "duration_s": 60 if answered else 0,
                "status": "answered" if answered else "no_answer",
                "cell_id": f"234-15-{rnd.randrange(999)}-{i}",
                "caller_ip": f"198.51.100.{rnd.randrange(256)}" if device else None,
                "device": device,
                "recording_uri": f"s3://rec/{i}.wav" if answered else None,
                "transcript": text,
                "attributes": {"plan": "gold", "trunk": str(rnd.randrange(40))},
                **lineage,
            }
        )
        analytics.append(
            {
                "event_id": f"ev-{i:09d}",
                "account_token": token_of[account],
                "org_token": KEY.token(Domain.ORG, "o"),
                "carrier_id": "carrier-1",
                "kind": "voice",
                "direction": "inbound",
                "caller_token": KEY.token(Domain.PHONE, str(i)),
                "caller_country": 44,
                "caller_type": "mobile",
                "callee_token": KEY.token(Domain.PHONE, str(i + 1)),
                "callee_country": 44,
                "callee_type": "fixed_line",
                "started_at": started,
                "answered_at": None,
                "ended_at": started + 64000,
                "duration_s": 60,
                "status": "answered",
                "cell_area": "234-15-7",
                "caller_ip_prefix": "198.51.100.0/24",
                "device_token": None,
                "device_type": "phone",
                "device_os": "Android 14",
                "device_app_version": "5.2.1",
                "has_recording": answered,
                "transcript": text,
                "attributes": {"plan": "gold"},
                "key_version": "v1",
                **lineage,
            }
        )
        tokens.append(token_of[account])
    return vault, analytics, tokens


def timed(label: str, n: int, fn: Any) -> Any:
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    print(f"{label:<44} {n:>8} rows {seconds:8.3f} s {n / seconds:>12,.0f} rows/s")
    return result


def scanned(lake: Path, column: str, value: str) -> tuple[int, int]:
    con = duckdb.connect()
    duckdb_view(con, lake, VAULT)
    profile = lake.parent / "profile.json"
    con.execute("PRAGMA enable_profiling = 'json'")
    con.execute(f"PRAGMA profiling_output = '{profile}'")
    con.execute(f"SELECT count(*) FROM vault WHERE {column} = ?", [value]).fetchall()
    con.execute("PRAGMA disable_profiling")
    node = json.loads(profile.read_text())["operator"][0]
    while node.get("type") != "TABLE_SCAN":
        node = node["children"][0]
    return node["row_groups_scanned"], node["total_row_groups_to_scan"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--buckets", type=int, default=8)
    args = parser.parse_args()
    n = args.rows
    vault, analytics, tokens = rows(n, args.accounts, args.days)

    vt = timed("rows -> Arrow (vault)", n, lambda: vault_table(vault))
    at = timed("rows -> Arrow (analytics)", n, lambda: analytics_table(analytics))
    timed("partition + sort (vault)", n, lambda: partition(vt, VAULT, buckets_of(tokens, args.buckets)))
    timed(
        "partition + sort (analytics)",
        n,
        lambda: partition(at, ANALYTICS, buckets_of(at["account_token"], args.buckets)),
    )

    with tempfile.TemporaryDirectory() as tmp:
        lake = Path(tmp) / "lake"
        settings = Settings(buckets=args.buckets, flush_rows=10**9, flush_seconds=1e9)
        writer = LakeWriter.open(lake, "calls.raw-p003", settings)
        writer.add(vault=vault, analytics=analytics, vault_tokens=tokens, through=n - 1, now=0.0)
        flushed = timed("LakeWriter.flush: both zones, fsynced", 2 * n, writer.flush)
        size = sum(p.stat().st_size for p in flushed.files)
        print(f"  {len(flushed.files)} files, {size / 1e6:.1f} MB, {size / (2 * n):.0f} bytes/row")

    # Point lookups: 20 flushes into one partition, 4 rows per account on average over the lake,
    # so an account is in a few files and every file's min/max spans nearly all accounts.
    vault, _, tokens = rows(n, n // 4, 1, seed=11)
    with tempfile.TemporaryDirectory() as tmp:
        lake = Path(tmp) / "lake"
        writer = LakeWriter.open(
            lake, "calls.raw-p003", Settings(buckets=1, flush_rows=10**9, flush_seconds=1e9)
        )
        step = n // 20
        for k in range(0, n, step):
            sl = slice(k, k + step)
            writer.add(vault=vault[sl], vault_tokens=tokens[sl], through=min(k + step, n) - 1, now=0.0)
            writer.flush()
        files = zone_files(lake, VAULT)
        some = vault[n // 2]
        holding = sum(
            1
            for k in range(0, n, step)
            if any(r["account_id"] == some["account_id"] for r in vault[k : k + step])
        )
        print(f"point lookups over {len(files)} vault files of one partition (row groups scanned, total):")
        found = scanned(lake, "account_id", some["account_id"])
        print(f"  account_id in {holding} files  (bloom + stats) {found}")
        absent = some["account_id"] + "x"  # inside every file's min/max, in no file
        print(f"  account_id in no file (bloom + stats) {scanned(lake, 'account_id', absent)}")
        print(f"  caller in 1 file  (stats only)        {scanned(lake, 'caller', some['caller'])}")


if __name__ == "__main__":
    from pipeline.bench.common import own_vault_keys

    own_vault_keys()
    main()
