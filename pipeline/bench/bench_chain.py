"""Throughput of the pure chain (`process_batch`) on generated carrier traffic.

    .venv/bin/python -m pipeline.bench.bench_chain [EVENTS] [BATCH ...]

Generates EVENTS seeded calls with their accounts' consents and privacy requests
(pipeline.carrier.generate), then, for each BATCH size (default 1, 20 and 500), runs process_batch
over them twice with one Memo, as a worker keeps it: the first pass meets every identifier for
the first time (numbers parsed, tokens computed), the second finds them remembered. Prints events
per second of CPU time (the machine may be shared) for each pass. Timing only; the correctness
of the rows is the unit tests' job (tests/unit/test_chain_reference.py).
"""

from __future__ import annotations

import sys
import time
from collections import Counter

from pipeline.bench.canary import KEY, seeded
from pipeline.chain import process_batch
from pipeline.memo import Memo
from pipeline.policy import DEFAULT_POLICY


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    sizes = [int(a) for a in sys.argv[2:]] or [1, 20, 500]
    canary = seeded(events)
    traffic, states, now = canary.traffic, canary.states, canary.now_ms
    with_text = sum(c["transcript"] is not None for c in traffic.calls)
    print(f"{events} events ({with_text} with a transcript), {len(states)} accounts with history")
    for size in sizes:
        memo = Memo()
        for name in ("identifiers unseen", "identifiers remembered"):
            out: Counter[str] = Counter()
            cpu = time.process_time()
            for i in range(0, events, size):
                result = process_batch(
                    traffic.calls[i : i + size], states, DEFAULT_POLICY, KEY, now, memo=memo
                )
                out["vault"] += len(result.vault_rows)
                out["analytics"] += len(result.analytics_rows)
                out["rejected"] += len(result.rejections)
                out["erased"] += len(result.erased)
            cpu = time.process_time() - cpu
            print(
                f"batch {size:>4}, {name}: {events / cpu:,.0f} events/s of CPU time, "
                f"{cpu / events * 1e6:.1f} us per event ({dict(out)})"
            )


if __name__ == "__main__":
    main()
