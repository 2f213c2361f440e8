"""The analytics zone per row against per column: CPU per event of today's row path
(`row_pseudonymizer()` per vault row, then `sinks.arrow.analytics_table` of the rows) and of
`pipeline.pseudonymize_columns.analytics_columns` on the vault zone's table.

    python -m pipeline.bench.bench_columns [EVENTS ...]

Measured 1 December (2 shared cores), CPU us per analytics row, memo fresh / warm:
20,000 events: row 11.4 / 6.4, column 6.3 / 2.6; 100,000: row 11.0 / 8.3, column 4.8 / 3.1.

For each EVENTS (default 20,000 and 100,000) the bench's seeded traffic goes through the chain
once, 2,000 events a batch, to give the vault rows that reach analytics, their regions and their
vault table (which the lake writer builds anyway: not counted). Each path then runs over the
batches with one Memo: fresh per run, as a worker starts, and warm, as one that has met the
traffic before (a first pass fills it, untimed). Best CPU time of three runs for each. Both
paths' tables are checked equal before anything is timed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline import collector
from pipeline.bench.canary import KEY, Canary, seeded
from pipeline.chain import process_batch, route_batch
from pipeline.keys import PseudonymKey
from pipeline.memo import Memo
from pipeline.policy import DEFAULT_POLICY, Policy
from pipeline.pseudonymize import row_pseudonymizer
from pipeline.pseudonymize_columns import analytics_columns
from sinks.arrow import analytics_table, vault_table

BATCH = 2_000
RUNS = 3


@dataclass(frozen=True)
class Analytics:
    """One batch's events that reach analytics: their vault rows, table and regions, and the
    analytics rows the chain made of them."""

    vault_rows: list[dict[str, Any]]
    vault: pa.Table
    regions: list[tuple[str, ...]]
    rows: list[dict[str, Any]]


def chain_batch(
    calls: Sequence[dict[str, Any]], canary: Canary, key: PseudonymKey, policy: Policy = DEFAULT_POLICY
) -> Analytics:
    """`process_batch` over `calls`, with each analytics row's regions (`route_batch` gives them)."""
    routed = route_batch([dict(c) for c in calls], canary.states, policy, key, canary.now_ms)
    result = process_batch([dict(c) for c in calls], canary.states, policy, key, canary.now_ms)
    vault_rows = [routed.vault_rows[i] for i in routed.analytics]
    return Analytics(vault_rows, vault_table(vault_rows), routed.regions, result.analytics_rows)


def row_path(batches: Sequence[Analytics], memo: Memo) -> list[pa.Table]:
    pseudonymize = row_pseudonymizer()
    return [
        analytics_table(
            [
                pseudonymize(row, KEY, regions, memo)
                for row, regions in zip(b.vault_rows, b.regions, strict=True)
            ]
        )
        for b in batches
    ]


def column_path(batches: Sequence[Analytics], memo: Memo) -> list[pa.Table]:
    return [analytics_columns(b.vault, b.regions, KEY, memo) for b in batches]


Path = Callable[[Sequence[Analytics], Memo], list[pa.Table]]


def best_of(path: Path, batches: Sequence[Analytics], warm: bool) -> float:
    memo = Memo()
    if warm:
        path(batches, memo)
    best = float("inf")
    for _ in range(RUNS):
        if not warm:
            memo = Memo()
        started = time.process_time()
        path(batches, memo)
        best = min(best, time.process_time() - started)
    return best


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [20_000, 100_000]
    for events in sizes:
        canary = seeded(events)
        calls = canary.traffic.calls
        batches = [chain_batch(calls[i : i + BATCH], canary, KEY) for i in range(0, events, BATCH)]
        rows = sum(len(b.rows) for b in batches)
        collector.tune()  # the batches are long-lived: out of the collector's scans
        for b, table in zip(batches, column_path(batches, Memo()), strict=True):
            if not table.equals(analytics_table(b.rows)):
                raise SystemExit("the column path's table differs from the chain's rows")
        print(
            f"{events} events, {rows} analytics rows, batches of {BATCH}, "
            f"CPU us per analytics row, best of {RUNS}:"
        )
        for memo in ("fresh", "warm"):
            per_row = best_of(row_path, batches, memo == "warm") / rows * 1e6
            per_column = best_of(column_path, batches, memo == "warm") / rows * 1e6
            print(
                f"  memo {memo:5s}  row path {per_row:6.2f}  column path {per_column:6.2f}"
                f"  ({per_row / per_column:.1f}x)"
            )


if __name__ == "__main__":
    main()
