"""Throughput of one partition's way to the lake in-process: decode, chain, lake (PartitionRunner).

    python -m pipeline.bench.bench_runner [EVENTS] [EVENTS_PER_MESSAGE] [--profile [--self] | --stages]

Generates EVENTS seeded calls (pipeline.carrier.generate) with their accounts' consents and
privacy requests, encodes them as Avro messages (Confluent wire format) of EVENTS_PER_MESSAGE
events, and feeds them to a fresh PartitionRunner (its own Memo, so identifiers start unseen)
over a temporary lake, 2,000 events per pump, then flushes. Runs once to warm up, then twice
more: with CPython's default garbage collector and as the worker sets it (pipeline/collector.py),
printing events per second of CPU time and the share of time the collector took; with
--profile, cProfile's top entries instead (by cumulative time; with --self, by own time); with
--stages, CPU microseconds per event of the runner's three steps (three runs, the worker's
collector): `feed` (decoding, the event-time merger), `pump` (validation, consent, routing, both
zones' tables) and `flush` (partitioning, sorting and Parquet, its writer threads included).
No broker: the Kafka side is `callpipe bench stream`'s.
"""

from __future__ import annotations

import cProfile
import gc
import pstats
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import codec, collector
from pipeline.bench.canary import KEY, seeded
from pipeline.bench.common import own_vault_keys
from pipeline.settings import Settings
from pipeline.stream.runner import PartitionRunner


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
    canary = seeded(events)
    traffic, states, now = canary.traffic, canary.states, canary.now_ms
    messages = [
        Message(v, 0, i) for i, v in enumerate(codec.encode(traffic.calls, "CallEvent", "avro", size))
    ]
    step = max(1, 2_000 // size)
    own_vault_keys()  # the vault encrypted, as a worker writes it by default

    stages = {"feed": 0.0, "pump": 0.0, "flush": 0.0}

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
            clock = time.process_time  # every thread's: the flush writes on two
            for i in range(0, len(messages), step):
                t0 = clock()
                runner.feed(messages[i : i + step], now)
                t1 = clock()
                runner.pump(now, time.monotonic(), drain=True)
                stages["feed"] += t1 - t0
                stages["pump"] += clock() - t1
            t0 = clock()
            runner.flush()
            stages["flush"] += clock() - t0
            runner.close()
        finally:
            shutil.rmtree(lake, ignore_errors=True)

    run()
    if "--stages" in sys.argv:
        collector.tune()
        stages.update(dict.fromkeys(stages, 0.0))
        rounds = 3
        for _ in range(rounds):
            run()
        per_event = {name: spent / rounds / events * 1e6 for name, spent in stages.items()}
        print(f"{events} events in {size}-event messages, CPU us per event (mean of {rounds} runs):")
        for name, us in per_event.items():
            print(f"  {name:<6} {us:6.1f}")
        print(f"  {'total':<6} {sum(per_event.values()):6.1f}")
        return
    if "--profile" in sys.argv:
        collector.tune()
        profile = cProfile.Profile()
        profile.runcall(run)
        pstats.Stats(profile).sort_stats("tottime" if "--self" in sys.argv else "cumulative").print_stats(40)
        return
    for name in ("CPython's default", "the worker's (pipeline/collector.py)"):
        if name.startswith("the worker"):
            collector.tune()
        spent = [0.0, 0.0]

        def timed(phase: str, _info: dict[str, int], spent: list[float] = spent) -> None:
            now = time.perf_counter()
            if phase == "start":
                spent[1] = now
            else:
                spent[0] += now - spent[1]

        gc.callbacks.append(timed)
        cpu, wall = time.process_time(), time.perf_counter()
        run()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        gc.callbacks.remove(timed)
        print(
            f"{events} events in {size}-event messages, garbage collector {name}: "
            f"{events / cpu:,.0f} events/s of CPU time, {spent[0] / wall:.0%} of the time collecting"
        )


if __name__ == "__main__":
    main()
