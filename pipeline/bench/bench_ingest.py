"""`callpipe ingest` alone, without a broker: the ingest phase of `callpipe bench stream`.

    .venv/bin/python -m pipeline.bench.bench_ingest [--events 50000] [--days 1 180] [--jobs N] [--profile]

For each span, seeded traffic of `--events` calls spread over that many days, in Avro container
files of 25,000 calls, ingested into a fresh lake; prints events/s of wall clock and of this
process's CPU time (the figure to compare on a shared machine: other processes' load does not
enter it), the lake files written, and with `--profile` the share of the run spent in the chain,
in the group flush and in reading the containers (cProfile). The input files are written before
the clock starts.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import pstats
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline import codec, collector
from pipeline.bench.common import INGEST_FILE_EVENTS, SEED
from pipeline.carrier.generate import HOUR_MS, Traffic, generate_traffic
from pipeline.ingest import ingest_files, load_states
from pipeline.keys import PseudonymKey
from pipeline.settings import Settings


def measure(
    settings: Settings, folder: Path, traffic: Traffic, profile: cProfile.Profile | None, jobs: int = 1
) -> dict[str, Any]:
    """`callpipe ingest` of `traffic` (its calls in Avro container files) into a fresh lake, in
    `jobs` processes (as `callpipe ingest --jobs`). CPU time counts the processes' own."""
    folder.mkdir()
    paths = []
    for i in range(0, len(traffic.calls), INGEST_FILE_EVENTS):
        path = folder / f"calls-{i:09d}.avro"
        path.write_bytes(codec.encode_container(traffic.calls[i : i + INGEST_FILE_EVENTS], "CallEvent"))
        paths.append(path)
    consent = folder / "consent.jsonl"
    consent.write_bytes(b"\n".join(codec.to_json(r, "ConsentEvent") for r in traffic.consents))
    requests = folder / "requests.jsonl"
    requests.write_bytes(b"\n".join(codec.to_json(r, "PrivacyRequest") for r in traffic.requests))
    key = PseudonymKey("bench", bytes(range(32)))
    local = dataclasses.replace(settings, lake=folder / "lake")
    if profile is not None:
        profile.enable()
    started, cpu = time.perf_counter(), time.process_time() + _children_cpu()
    states, _ = load_states([consent], [requests])
    collector.freeze()  # as `callpipe ingest` does
    results = ingest_files(paths, local, key, states, int(time.time() * 1000), jobs=jobs)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() + _children_cpu() - cpu
    if profile is not None:
        profile.disable()
    events = sum(r.counts["events_in"] for r in results)
    lake = folder / "lake"
    return {
        "events": events,
        "jobs": jobs,
        "input_files": len(paths),
        "days": len({p.name for p in lake.glob("*/calls/dt=*")}),
        "lake_files": sum(1 for _ in lake.glob("*/calls/dt=*/bucket=*/*.parquet")),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "events_per_s": round(events / seconds),
        "events_per_cpu_s": round(events / cpu_seconds),
    }


def _children_cpu() -> float:
    """CPU seconds of this process's children that have ended (the ingest processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--days", type=int, nargs="+", default=[1, 180])
    parser.add_argument("--profile", action="store_true", help="cProfile shares (one process)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="ingest processes (default: as callpipe ingest)"
    )
    args = parser.parse_args()
    settings = Settings.from_env()
    collector.tune()  # as `callpipe ingest` runs
    jobs = 1 if args.profile else (args.jobs or settings.ingest_processes)
    work = Path(tempfile.mkdtemp(prefix="callpipe-bench-ingest-"))
    try:
        for days in args.days:
            span = days * 24 * HOUR_MS
            start = int(time.time() * 1000) - span - 2 * HOUR_MS
            traffic = generate_traffic(SEED, args.events, start, span, accounts=args.accounts)
            profile = cProfile.Profile() if args.profile else None
            figures = measure(settings, work / f"ingest-{days}d", traffic, profile, jobs)
            if profile is not None:
                stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
                total = sum(t for (_f, _l, _n), (_c, _p, t, _ct, _callers) in stats.items())
                for name in ("process_batch", "land_together", "_read", "load_states"):
                    cum = max(
                        (ct for (_f, _l, n), (_c, _p, _t, ct, _cl) in stats.items() if n == name), default=0
                    )
                    figures[f"share_{name}"] = round(cum / total, 3) if total else None
            print(json.dumps({"span_days": days, **figures}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from pipeline.bench.common import own_vault_keys

    own_vault_keys()
    main()
