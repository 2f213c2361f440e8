"""`callpipe bench stream|detect|jobs|control|vault|dlq [--quick] [--json]`: measured figures, as
a table or one JSON object. The benchmark code lives in the `pipeline.bench` package, imported only
when this runs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline import collector
from pipeline.errors import CliError
from pipeline.settings import Settings

WHAT = ("stream", "detect", "jobs", "control", "vault", "dlq")


def bench_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.bench.common import BenchError

    collector.tune()  # as the worker and ingest run, and so the baselines beside them
    try:
        figures, text = _measure(args.what, settings, args.quick, getattr(args, "tls_cost", False))
    except BenchError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(figures, default=str))
    else:
        print(text)
    sys.stdout.flush()
    return 0


def _measure(
    what: str, settings: Settings, quick: bool, tls_cost: bool = False
) -> tuple[dict[str, Any], str]:
    if what == "stream":
        from pipeline.bench import stream

        if tls_cost:
            figures = stream.run_tls_cost(settings, quick)
            return figures, stream.render_tls_cost(figures)

        figures = stream.run(settings, quick)
        return figures, stream.render(figures)
    if what == "dlq":
        from pipeline.bench import dlq

        figures = dlq.run(settings, quick)
        return figures, dlq.render(figures)
    if what == "detect":
        from pipeline.bench import detect

        figures = detect.run(quick)
        return figures, detect.render(figures)
    if what == "vault":
        from pipeline.bench import vault

        figures = vault.run(quick)
        return figures, vault.render(figures)
    if what == "control":
        from pipeline.bench import control

        figures = control.run(settings, quick)
        return figures, control.render(figures)
    from pipeline.bench import batch as jobs

    figures = jobs.run(quick)
    return figures, jobs.render(figures)


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "bench",
        help="measure the stream, the detector, the jobs or vault encryption against same-run baselines",
        description="Benchmarks: ratios against baselines measured in the same run, absolute figures "
        "beside them. stream and dlq need the broker at CALLPIPE_BOOTSTRAP; detect needs the bench extra "
        "(pip install 'callpipe[bench]').",
    )
    b.add_argument(
        "what",
        choices=WHAT,
        help="stream, detect, jobs, control (the consent state at 1M accounts), vault (encryption cost)"
        " or dlq (sealing dead letters)",
    )
    b.add_argument("--quick", action="store_true", help="small inputs: each finishes in a few minutes")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    b.add_argument(
        "--tls-cost",
        action="store_true",
        help="stream: the worker and the passthrough over the PLAINTEXT listener, then over SASL_SSL,"
        " same run (needs the broker started with `callpipe kafka up --plaintext`)",
    )
    b.set_defaults(func=bench_cmd)
