"""`callpipe worker` and `callpipe ingest` (`callpipe demo` is infra/demo.py)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter
from pathlib import Path

from pipeline.errors import CliError
from pipeline.settings import Settings
from sinks import stats
from sinks.layout import ANALYTICS, VAULT
from sinks.stats import StreamStats


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
    ran = StreamStats.from_counts(totals)
    events = ran.events_in
    print(
        f"ingested {events} events in {took:.1f}s ({events / took if took else 0:.0f}/s) "
        f"into {settings.lake}: "
        f"{ran.written.get(VAULT, 0)} vault rows, {ran.written.get(ANALYTICS, 0)} analytics rows"
    )
    outcomes = {
        **{stats.dead_letter(reason): n for reason, n in ran.dead_letters.items()},
        **{stats.drop(reason): n for reason, n in ran.drops.items()},
        **ran.control,
    }
    for name, n in sorted(outcomes.items()):
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
