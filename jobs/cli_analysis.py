"""The analysts' commands: `callpipe jobs anonymize`, `callpipe jobs report`, `callpipe query`."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from jobs.cli_ops import as_of_arg
from pipeline.errors import CliError
from pipeline.settings import Settings

if TYPE_CHECKING:
    from jobs.anonymize_noise import Noise


def register(sub: argparse._SubParsersAction, jobs_sub: argparse._SubParsersAction) -> None:
    """Add top-level commands to `sub` and `callpipe jobs` commands to `jobs_sub`."""
    anon = jobs_sub.add_parser(
        "anonymize", help="build the k-anonymous aggregates zone from analytics (re-runnable)"
    )
    anon.add_argument("--as-of", type=as_of_arg, default=None, help="ISO-8601 time (default: now, UTC)")
    anon.add_argument("--json", action="store_true", help="print the result as JSON")
    anon.set_defaults(func=cmd_anonymize)

    rep = jobs_sub.add_parser("report", help="volume, retention, stream counters, job history and risk")
    rep.add_argument("--as-of", type=as_of_arg, default=None, help="ISO-8601 time (default: now, UTC)")
    rep.add_argument(
        "--html", type=Path, default=None, metavar="FILE", help="also write a self-contained HTML file"
    )
    rep.add_argument("--json", action="store_true", help="print the report data as JSON")
    rep.add_argument("--sample", type=int, default=1000, help="subjects sampled for unicity (default 1000)")
    rep.add_argument("--seed", type=int, default=0, help="seed of the unicity draw (default 0)")
    rep.set_defaults(func=cmd_report)

    query = sub.add_parser("query", help="DuckDB SQL over the analytics and aggregates zones (read-only)")
    query.add_argument(
        "sql", help="one SELECT; views: analytics_calls, one per aggregate, vault_calls with --vault"
    )
    query.add_argument(
        "--vault",
        action="store_true",
        help="also expose the restricted vault as vault_calls (audited: needs the vault key file and the"
        " pseudonymization key, which keys the query's digest in the audit trail)",
    )
    fmt = query.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print rows as a JSON array of objects")
    fmt.add_argument("--csv", action="store_true", help="print rows as CSV")
    query.set_defaults(func=cmd_query, vault_keys=lambda a: a.vault)  # analysts hold no vault key


def _lake(settings: Settings) -> Path:
    if not settings.lake.is_dir():
        raise CliError(f"no lake at {settings.lake} (set CALLPIPE_LAKE)")
    return settings.lake


def noise_of(settings: Settings) -> Noise | None:
    """The aggregates' noise as the policy sets it, under a secret derived from the
    pseudonymization key (the key `jobs anonymize` needs only when noise is on)."""
    from jobs.anonymize_noise import KEY_PURPOSE, Noise
    from jobs.noise import NoiseKey, as_fraction

    if not settings.policy.noise.enabled:
        return None
    key = settings.key()
    return Noise(NoiseKey(key.version, key.derive(KEY_PURPOSE)), as_fraction(settings.policy.noise.epsilon))


def cmd_anonymize(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.anonymize import AggregateResult, anonymize
    from jobs.replace import JobBusy

    lake = _lake(settings)
    as_of = args.as_of or datetime.now(UTC)
    noise = noise_of(settings)

    def progress(r: AggregateResult) -> None:
        if not args.json:
            print(
                f"{r.name}: {r.published_groups:,} groups published (min subjects {r.min_subjects}),"
                f" {r.suppressed_groups:,} groups / {r.suppressed_calls:,} calls suppressed below k,"
                f" {r.carried_groups:,} carried over, {r.expired_groups:,} past retention -> {r.path}",
                flush=True,
            )
            if r.noise is not None:
                bars = r.noise["values"]
                assert isinstance(bars, dict)
                print(
                    f"  noisy values (discrete Laplace, epsilon {r.noise['epsilon_per_row']} per row):"
                    + ",".join(f" {c} ±{v['ci95']:,}" for c, v in bars.items())
                    + f" (95%); bounds clamped away {r.clamped_calls:,} calls, {r.clamped_duration_s:,} s",
                    flush=True,
                )

    con = duckdb.connect()
    try:
        result = anonymize(
            con,
            lake,
            k=settings.policy.k,
            as_of=as_of,
            noise=noise,
            keep_days=settings.policy.retention.aggregates_days,
            progress=progress,
        )
    except JobBusy as exc:
        raise CliError(str(exc), status=3) from None  # as the operators' jobs
    finally:
        con.close()
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        eps = settings.policy.noise.epsilon
        shown = "noise off (exact values)" if noise is None else f"noise epsilon = {eps:g} per row"
        print(
            f"anonymize: k = {result.k}, {shown}, {result.source_rows:,} analytics rows,"
            f" {result.duration_s:.2f} s"
        )
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from jobs import report, report_html

    lake = _lake(settings)
    if args.sample < 1:
        raise CliError("--sample must be at least 1")
    as_of = args.as_of or datetime.now(UTC)
    con = duckdb.connect()
    try:
        data = report.collect(con, lake, settings.policy, as_of=as_of, sample=args.sample, seed=args.seed)
    finally:
        con.close()
    if args.html is not None:
        args.html.write_text(report_html.render(data), encoding="utf-8")
    if args.json:
        print(json.dumps(data, default=str))
    else:
        sys.stdout.write(report.render_text(data))
        if args.html is not None:
            print(f"HTML report written to {args.html}")
    return 0


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    from jobs import query, replace

    lake = _lake(settings)
    if replace.pending(lake):
        print(
            "callpipe: warning: a killed job left a change unfinished; results may show it half applied"
            " until the next job run completes it",
            file=sys.stderr,
        )
    try:
        result = query.run(lake, args.sql, vault=args.vault, key=settings.key() if args.vault else None)
    except query.QueryError as exc:
        hint = " (the vault needs --vault)" if "vault_calls" in str(exc) and not args.vault else ""
        raise CliError(f"{exc}{hint}") from None
    if args.json:
        print(query.to_json(result))
    elif args.csv:
        sys.stdout.write(query.to_csv(result))
    else:
        print(query.to_table(result))
    return 0
