"""`callpipe worker`, `callpipe ingest` and `callpipe demo`."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter
from pathlib import Path

from pipeline.errors import CliError
from pipeline.settings import Settings


def worker_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.kafka_access import WORKER
    from pipeline.stream.app import run_worker

    settings.kafka(WORKER).aiokafka()  # a missing password file or CA: one line, before the runtime starts
    run_worker(settings, settings.key(), prefix=args.prefix)
    return 0


def ingest_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.ingest import IngestError, ingest_files, load_states
    from sinks.lake import SourceBusy

    if args.lake is not None:
        settings = dataclasses.replace(settings, lake=args.lake)
    for path in [*args.calls, *args.consent, *args.requests]:
        if not path.is_file():
            raise CliError(f"{path}: no such file")
    key = settings.key()
    try:
        states, control = load_states(args.consent, args.requests, settings.lake)
        totals: Counter[str] = Counter(control)
        started = time.monotonic()
        for result in ingest_files(args.calls, settings, key, states, int(time.time() * 1000)):
            totals.update(result.counts)
            totals["skipped_already_in_lake"] += result.skipped
    except (IngestError, SourceBusy) as exc:
        raise CliError(str(exc)) from None
    took = time.monotonic() - started
    events = totals["events_in"]
    print(
        f"ingested {events} events in {took:.1f}s ({events / took if took else 0:.0f}/s) "
        f"into {settings.lake}: "
        f"{totals['vault']} vault rows, {totals['analytics']} analytics rows"
    )
    for name, n in sorted(totals.items()):
        counted = ("dead_letter.", "drop.", "consent_rejected.", "requests_rejected.")
        if name.startswith(counted) or name in ("consent_events", "privacy_requests"):
            print(f"  {name}: {n}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("worker", help="run a stream worker (one member of the consumer group) until stopped")
    w.add_argument("--prefix", default="", help=argparse.SUPPRESS)  # isolated topic sets (tests, demo)
    w.set_defaults(func=worker_cmd)

    i = sub.add_parser("ingest", help="run the same chain over files, without a broker, into the lake")
    i.add_argument("calls", nargs="+", type=Path, metavar="CALLS_FILE", help="JSON lines or Avro container")
    i.add_argument("--lake", type=Path, default=None, help="lake root (default: CALLPIPE_LAKE or ./lake)")
    i.add_argument("--consent", type=Path, action="append", default=[], help="consent events file")
    i.add_argument("--requests", type=Path, action="append", default=[], help="privacy requests file")
    i.set_defaults(func=ingest_cmd)
