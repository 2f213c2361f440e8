"""Throughput of one partition's way to the lake in-process: decode, chain, lake (PartitionRunner).

    .venv/bin/python tests/canary/bench_runner.py [EVENTS] [EVENTS_PER_MESSAGE] [--profile]

Generates EVENTS seeded calls (pipeline.carrier.generate) with their accounts' consents and
privacy requests, encodes them as Avro messages (Confluent wire format) of EVENTS_PER_MESSAGE
events, and feeds them to a fresh PartitionRunner (its own Memo, so identifiers start unseen)
over a temporary lake, 2,000 events per pump, then flushes. Runs once to warm up, then prints
events per second of CPU time; with --profile, cProfile's top entries instead. No broker: the
Kafka side is `callpipe bench stream`'s.
"""

from __future__ import annotations

import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import codec
from pipeline.carrier.generate import generate_traffic
from pipeline.consent import AccountState, record_consent, record_request
from pipeline.keys import PseudonymKey
from pipeline.settings import Settings
from pipeline.stream.runner import PartitionRunner

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
KEY = PseudonymKey("v1", b"b" * 32)


@dataclass
class Message:
    value: bytes
    partition: int
    offset: int
    headers: Any = None


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    events = int(args[0]) if args else 20_000
    size = int(args[1]) if len(args) > 1 else 1
    traffic = generate_traffic(7, events, START_MS)
    states: dict[str, AccountState] = {}
    for c in traffic.consents:
        states[c["account_id"]] = record_consent(states.get(c["account_id"]), c)
    for r in traffic.requests:
        states[r["account_id"]] = record_request(states.get(r["account_id"]), r)
    messages = [
        Message(v, 0, i) for i, v in enumerate(codec.encode(traffic.calls, "CallEvent", "avro", size))
    ]
    now = START_MS + 2 * 86_400_000
    step = max(1, 2_000 // size)

    def run() -> None:
        lake = Path(tempfile.mkdtemp(prefix="callpipe-bench-runner-"))
        try:
            runner = PartitionRunner(
                lake=lake,
                source="calls.raw",
                partition=0,
                settings=Settings.from_env(),
                key=KEY,
                states_for=lambda accounts: {a: states[a] for a in accounts if a in states},
                now_ms=now,
            )
            for i in range(0, len(messages), step):
                runner.feed(messages[i : i + step], now)
                runner.pump(now, time.monotonic(), drain=True)
            runner.flush()
            runner.close()
        finally:
            shutil.rmtree(lake, ignore_errors=True)

    run()
    if "--profile" in sys.argv:
        profile = cProfile.Profile()
        profile.runcall(run)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
        return
    cpu = time.process_time()
    run()
    rate = events / (time.process_time() - cpu)
    print(f"{events} events in {size}-event messages: {rate:,.0f} events/s of CPU time")


if __name__ == "__main__":
    main()
