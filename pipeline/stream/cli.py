"""`callpipe worker` and `callpipe ingest` (`callpipe demo` is infra/demo.py)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter
from pathlib import Path

from pipeline import collector
from pipeline.errors import CliError
from pipeline.kafka_access import OPERATOR, WORKER
from pipeline.settings import Settings
from pipeline.stream import withhold
from sinks import stats
from sinks.layout import ANALYTICS, VAULT
from sinks.stats import StreamStats


def worker_cmd(args: argparse.Namespace, settings: Settings) -> int:
    if args.processes is not None and args.processes < 0:
        raise CliError("--processes must be 0 (one per core) or more")
    if args.processes is not None:
        settings = dataclasses.replace(settings, worker_jobs=args.processes)
    if args.metrics_port is not None:
        if not 0 <= args.metrics_port <= 65535:
            raise CliError("--metrics-port must be a port number, 0 for none")
        settings = dataclasses.replace(settings, metrics_port=args.metrics_port)
    processes = settings.worker_processes
    port = settings.metrics_port
    settings.kafka(WORKER).aiokafka()  # a missing password file or CA: one line, before the runtime starts
    key = settings.key()  # ...or a missing key, once, not once per process
    if processes > 1:
        from pipeline.stream.supervise import member_argv, metrics_env, supervise

        if port and port + processes - 1 > 65535:
            raise CliError(f"metrics ports {port}..{port + processes - 1}: the last is past 65535")
        return supervise(member_argv(args.prefix), processes, env_of=metrics_env(port))
    from pipeline.stream.app import run_worker
    from pipeline.stream.observe import MetricsPortError, bind

    try:  # bound now: a port in use is one line, not a worker that starts without its metrics
        sock = bind(settings.metrics_host, port) if port else None
    except MetricsPortError as exc:
        raise CliError(str(exc)) from None
    collector.tune()
    run_worker(settings, key, prefix=args.prefix, metrics=sock)
    return 0


def ingest_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.ingest import IngestError, ingest_files, load_states
    from pipeline.stream.runner import Tripped
    from sinks.lake import SourceBusy

    if args.lake is not None:
        settings = dataclasses.replace(settings, lake=args.lake)
    for path in [*args.calls, *args.consent, *args.requests]:
        if not path.is_file():
            raise CliError(f"{path}: no such file")
    key = settings.key()
    collector.tune()
    try:
        states, control = load_states(
            args.consent, args.requests, settings.lake, settings.policy.secret_names
        )
        collector.freeze()  # the consent history lives as long as the run
        totals: Counter[str] = Counter(control)
        started = time.monotonic()
        jobs = args.jobs if args.jobs is not None else settings.ingest_processes
        if jobs < 1:
            raise CliError("--jobs must be at least 1")
        now_ms = int(time.time() * 1000)
        for result in ingest_files(args.calls, settings, key, states, now_ms, jobs=jobs):
            totals.update(result.counts)
            totals["skipped_already_in_lake"] += result.skipped
    except (IngestError, SourceBusy, Tripped) as exc:
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


def dlq_keygen_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.sealed import keygen

    existed = settings.dlq_key_file.exists()
    version = keygen(settings.dlq_key_file, settings.dlq_public_key)
    print(
        f"{'added' if existed else 'created'} operator key version {version}: private "
        f"{settings.dlq_key_file} (mode 0600, the operator's), public {settings.dlq_public_key} "
        "(what workers seal with; restart them to use the new version)"
    )
    return 0


def _suppression(args: argparse.Namespace, settings: Settings) -> withhold.Suppression:
    """The lake's suppression list: `--lake`, else CALLPIPE_LAKE; no lake stops the command."""
    return withhold.load(args.lake if args.lake is not None else settings.lake)


def dlq_inspect_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.sealed import OperatorKeys
    from pipeline.stream.dlq import export, inspect
    from pipeline.stream.dlq_show import shown, triage

    if not settings.dlq_key_file.exists():
        raise CliError(
            f"no operator key at {settings.dlq_key_file}: dead letters are sealed; set "
            "CALLPIPE_DLQ_KEY_FILE to the operator key file"
        )
    keys = OperatorKeys.load(settings.dlq_key_file)
    suppression = _suppression(args, settings)  # before the read: no lake, nothing opened
    seen = inspect(
        settings.kafka(OPERATOR),
        keys,
        suppression,
        prefix=args.prefix,
        partition=args.partition,
        offset=args.offset,
        count=args.count,
    )
    letters = seen.letters
    if args.out is not None:
        export(letters, args.out)
        print(f"exported {len(letters)} dead letters to {args.out} (<p>-<offset>.json and .value, mode 0600)")
        print(
            f"  {args.out} holds the messages in plaintext, personal data included: delete it once"
            " replayed (an erasure does not reach it; replay withholds erased subjects' letters)"
        )
        print(withhold.withheld_line(seen.withheld))
        return 0
    for letter in letters:
        print(triage(letter.describe(), letter.raw))
        print(f"  {shown(letter.raw)}")
    print(f"{len(letters)} dead letters")
    print(withhold.withheld_line(seen.withheld))
    return 0


def dlq_replay_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.stream.dlq import replay

    suppression = _suppression(args, settings)
    done = replay(settings.kafka(OPERATOR), args.folder, suppression, prefix=args.prefix)
    print(
        f"replayed {len(done.replayed)} dead letters; skipped {len(done.already)} replayed before"
        + (f", {len(done.missing_value)} without a .value file" if done.missing_value else "")
    )
    print(withhold.withheld_line(len(done.withheld)))
    return 0


_LAKE_HELP = (
    "the lake whose suppression list withholds erased subjects' dead letters "
    "(default: CALLPIPE_LAKE, else ./lake; required: without it the command stops)"
)


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("dlq", help="open, export and replay sealed dead letters (the operator's repair loop)")
    dsub = d.add_subparsers(dest="dlq_command", required=True)
    kg = dsub.add_parser("keygen", help="create the operator key, or add a new version of it (rotation)")
    kg.set_defaults(func=dlq_keygen_cmd, vault_keys=False)
    ins = dsub.add_parser("inspect", help="read calls.dlq, open it with the operator key, print or export")
    ins.add_argument("--partition", type=int, default=None, help="only this calls.dlq partition")
    ins.add_argument("--offset", type=int, default=None, help="start at this offset (default: the start)")
    ins.add_argument("--count", type=int, default=None, help="at most this many dead letters")
    ins.add_argument("--out", type=Path, default=None, help="export to this folder for repair")
    ins.add_argument("--prefix", default="", help="the topic set's name prefix (the demo prints its own)")
    ins.add_argument("--lake", type=Path, default=None, help=_LAKE_HELP)
    ins.set_defaults(func=dlq_inspect_cmd, vault_keys=False)
    rep = dsub.add_parser("replay", help="produce the repaired messages of an export folder, once each")
    rep.add_argument("folder", type=Path, help="a folder written by `callpipe dlq inspect --out`")
    rep.add_argument("--prefix", default="", help="the topic set's name prefix (as given to inspect)")
    rep.add_argument("--lake", type=Path, default=None, help=_LAKE_HELP)
    rep.set_defaults(func=dlq_replay_cmd, vault_keys=False)

    w = sub.add_parser("worker", help="run a stream worker (one member of the consumer group) until stopped")
    w.add_argument("--prefix", default="", help="the topic set's name prefix (the demo prints its own)")
    w.add_argument(
        "--processes",
        type=int,
        default=None,
        help="members of the consumer group this command runs, one process each, to use more "
        "than one core (default: CALLPIPE_WORKER_PROCESSES, else 1; 0: one per core)",
    )
    w.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics (Prometheus), /healthz and /readyz on this port of CALLPIPE_METRICS_HOST "
        "(127.0.0.1); with --processes N, member i on port+i (default: CALLPIPE_METRICS_PORT, "
        "else 0: none)",
    )
    w.set_defaults(func=worker_cmd)

    i = sub.add_parser("ingest", help="run the same chain over files, without a broker, into the lake")
    i.add_argument("calls", nargs="+", type=Path, metavar="CALLS_FILE", help="JSON lines or Avro container")
    i.add_argument("--lake", type=Path, default=None, help="lake root (default: CALLPIPE_LAKE or ./lake)")
    i.add_argument("--consent", type=Path, action="append", default=[], help="consent events file")
    i.add_argument("--requests", type=Path, action="append", default=[], help="privacy requests file")
    i.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="processes sharing the calls files (default: CALLPIPE_INGEST_JOBS, else one per core)",
    )
    i.set_defaults(func=ingest_cmd)
