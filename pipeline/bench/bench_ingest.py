"""`callpipe ingest` alone, without a broker: the ingest phase of `callpipe bench stream`.

    .venv/bin/python pipeline/bench/bench_ingest.py [--events 50000] [--days 1 180] [--profile]

For each span, seeded traffic of `--events` calls spread over that many days, in Avro container
files of 25,000 calls, ingested into a fresh lake; prints events/s and the lake files written, and
with `--profile` the share of the run spent in the chain and in the group flush (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import tempfile
import time
from pathlib import Path

from pipeline.bench.stream import SEED, _ingest
from pipeline.carrier.generate import HOUR_MS, generate_traffic
from pipeline.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--days", type=int, nargs="+", default=[1, 180])
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    settings = Settings.from_env()
    work = Path(tempfile.mkdtemp(prefix="callpipe-bench-ingest-"))
    try:
        for days in args.days:
            span = days * 24 * HOUR_MS
            start = int(time.time() * 1000) - span - 2 * HOUR_MS
            traffic = generate_traffic(SEED, args.events, start, span, accounts=args.accounts)
            profile = cProfile.Profile() if args.profile else None
            if profile is not None:
                profile.enable()
            figures = _ingest(settings, work, traffic, f"{days}d")
            if profile is not None:
                profile.disable()
                stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
                total = sum(t for (_f, _l, _n), (_c, _p, t, _ct, _callers) in stats.items())
                for name in ("process_batch", "land_together", "_read"):
                    cum = max(
                        (ct for (_f, _l, n), (_c, _p, _t, ct, _cl) in stats.items() if n == name), default=0
                    )
                    figures[f"share_{name}"] = round(cum / total, 3) if total else None
            print(json.dumps({"span_days": days, **figures}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from pipeline.bench.common import own_vault_keys

    own_vault_keys()
    main()
