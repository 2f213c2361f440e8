"""The operators' commands: `callpipe jobs retention|export|compact|rebuild-manifests` and
`callpipe policy check` (`jobs erase` is jobs/cli_erase.py).

Each handler reads the clock and builds the DuckDB connection here, at the edge, and passes them
to the job. Human-readable output by default; `--json` prints one JSON document on stdout for
automation. Progress goes to stderr, only on a terminal.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipeline.errors import CliError
from pipeline.settings import Settings

REBUILD_HELP = """\
Rewrite <lake>/_manifest/ (the committed offset ranges a worker resumes from) after it was lost,
from the ranges every file of the vault and analytics zones records in its metadata: without it a
restarted worker reads every partition from offset 0 and lands its rows twice. Run it with every
worker and ingest stopped (it refuses while one holds a source's lock, exit 3) and before they
start again. Vault files are read with the vault keys (CALLPIPE_VAULT_KEY_FILE).

What it cannot recover: ranges that landed no row (all dead-lettered or dropped) or whose rows were
all erased are in no file. Below a source's last recovered offset they stay gaps nothing reads
again (harmless: no row of them is in the lake). After it, a worker reads them again: their dead
letters are sent and counted again, and rows land that the chain lets through now (subjects
erased through privacy.requests stay out; rows removed by `jobs erase --account` alone land
again, and the next `jobs requests` pass erases them again, or run that erase again).
"""


def register(sub: argparse._SubParsersAction, jobs_sub: argparse._SubParsersAction) -> None:
    """Add top-level commands to `sub` and `callpipe jobs` commands to `jobs_sub`."""
    ret = jobs_sub.add_parser(
        "retention",
        help="remove expired partitions and rows, null expired recordings and transcripts, expire what"
        " the outbox holds (breach lists aside) and the dead letters under _rejects/",
    )
    ret.add_argument("--as-of", type=as_of_arg, default=None, help="ISO-8601 time (default: now, UTC)")
    ret.add_argument("--dry-run", action="store_true", help="print the plan and touch nothing")
    ret.add_argument("--json", action="store_true", help="print the result as JSON")
    ret.set_defaults(func=cmd_retention)

    export = jobs_sub.add_parser("export", help="everything the lake holds on one account, as JSON")
    export.add_argument("--account", required=True, metavar="ID", help="the account id")
    export.add_argument(
        "--out", required=True, type=Path, metavar="FILE", help="where to write (mode 0600), outside the lake"
    )
    export.add_argument("--force", action="store_true", help="replace --out if it is an existing file")
    export.add_argument("--json", action="store_true", help="print the summary as JSON")
    export.set_defaults(func=cmd_export)

    compact = jobs_sub.add_parser("compact", help="merge small files of each partition")
    compact.add_argument("--target-mb", type=positive_float, default=128.0, help="target file size (128)")
    compact.add_argument("--dry-run", action="store_true", help="print the merges and touch nothing")
    compact.add_argument("--json", action="store_true", help="print the result as JSON")
    compact.set_defaults(func=cmd_compact)

    rebuild = jobs_sub.add_parser(
        "rebuild-manifests",
        help="rewrite a lost <lake>/_manifest/ from the offset ranges the lake's files record",
        description=REBUILD_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rebuild.add_argument(
        "--dry-run", action="store_true", help="print the ranges it would write, touch nothing"
    )
    rebuild.add_argument("--json", action="store_true", help="print the result as JSON")
    rebuild.set_defaults(func=cmd_rebuild_manifests)

    policy = sub.add_parser("policy", help="the policy file")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, parser_class=type(policy))
    check = policy_sub.add_parser("check", help="validate a policy file; print the effective policy")
    check.add_argument("file", type=Path, help="the policy TOML")
    check.add_argument("--json", action="store_true", help="print the effective policy as JSON")
    check.set_defaults(func=cmd_policy_check, vault_keys=False)


def as_of_arg(text: str) -> datetime:
    """An ISO-8601 time or date; without an offset it is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            "--as-of must be an ISO-8601 time, e.g. 2026-11-28T00:00:00Z"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _lake(settings: Settings) -> Path:
    if not settings.lake.is_dir():
        raise CliError(f"no lake at {settings.lake} (set CALLPIPE_LAKE)")
    return settings.lake


def _connect() -> duckdb.DuckDBPyConnection:
    """The jobs' connection: DuckDB's own progress bar off (the jobs show theirs, on a tty only)."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    return con


def _print_json(doc: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str) + b"\n")
    sys.stdout.flush()


def _busy(exc: Exception) -> Exception:
    return CliError(str(exc), status=3)


def cmd_retention(args: argparse.Namespace, settings: Settings) -> int:
    from jobs import retention
    from jobs.progress import Progress
    from jobs.replace import JobBusy

    lake = _lake(settings)
    as_of = args.as_of or datetime.now(UTC)
    try:
        result = retention.run(
            _connect(),
            lake,
            settings.policy,
            as_of,
            dry_run=args.dry_run,
            progress=Progress("retention: rewriting"),
        )
    except JobBusy as exc:
        raise _busy(exc) from None
    if args.json:
        _print_json(result.as_dict())
        return 0
    s = result.summary
    head = "retention plan (dry run, nothing touched)" if args.dry_run else "retention done"
    print(f"{head} at {result.as_of}")
    for zone, cuts in result.cutoffs.items():
        limits = ", ".join(f"{name} before {t}" for name, t in cuts.items())
        print(f"  {zone}: {limits}")
    if args.dry_run:
        for d in result.partitions:
            print(f"  drop {d['zone']} dt={d['dt']}: {d['files']} files, {d['rows']:,} rows")
        files = result.files
        for f in files[:50]:
            nulled = ", ".join(f"{c} {n:,}" for c, n in f["nulled"].items())
            print(
                f"  {f['action']} {f['path']}: {f['rows_removed']:,} rows removed"
                + (f", nulled: {nulled}" if nulled else "")
            )
        if len(files) > 50:
            print(f"  ... {len(files) - 50} more files (--json lists them all)")
        if result.pending_journals:
            print(f"  note: {result.pending_journals} killed job(s) pending; the next run completes them")
    print(
        f"  partitions dropped {s.partitions_dropped}, files removed {s.files_removed},"
        f" files rewritten {s.files_rewritten} of {s.files_total}"
        f" ({100 * s.files_touched_share:.1f}% touched)"
    )
    for zone, n in s.rows_removed.items():
        print(f"  rows removed from {zone}: {n:,}")
    for column, n in s.values_nulled.items():
        print(f"  values nulled in {column}: {n:,}")
    print(f"  expired access exports removed from the outbox: {s.access_exports_removed:,}")
    print(f"  expired exports of requests never marked fulfilled: {s.unfulfilled_exports_removed:,}")
    print(f"  expired outbox files no request names: {s.unledgered_files_removed:,}")
    if s.unledgered_files_held:
        print(
            f"  outbox files no request names, not yet expired: {s.unledgered_files_held:,}"
            f" ({s.unattributed_files_held:,} tied to no subject: erasure cannot find them; check them)"
        )
    print(f"  breach lists kept (they do not expire): {s.breach_lists_kept:,}")
    print(
        f"  expired dead-letter files removed from _rejects/: {s.dead_letter_files_removed:,}"
        f" ({s.dead_letters_expired:,} dead letters); not yet expired: {s.dead_letter_files_held:,}"
    )
    if not args.dry_run and result.recovered:
        print(f"  completed {len(result.recovered)} killed job(s) first")
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from jobs import export
    from jobs.replace import JobBusy

    lake = _lake(settings)
    try:
        result = export.run(
            _connect(),
            lake,
            settings.key(),
            args.account,
            args.out,
            as_of=datetime.now(UTC),
            force=args.force,
        )
    except JobBusy as exc:
        raise _busy(exc) from None
    except export.ExportRefused as exc:
        raise CliError(str(exc)) from None
    if args.json:
        _print_json(result.as_dict())
        return 0
    print(
        f"exported subject {result.subject} to {result.out}: {result.vault:,} vault rows,"
        f" {result.analytics:,} analytics rows, {result.dead_letters:,} dead letters (the lake's"
        f" _rejects/; calls.dlq not searched: sealed, `dlq inspect` opens it),"
        f" {result.audit:,} audit entries"
    )
    if result.dead_letters_unattributed:
        print(
            f"  dead letters that could not be searched (damaged compressed bytes):"
            f" {result.dead_letters_unattributed:,}; they may hold this subject (check them)"
        )
    if not (result.vault or result.analytics or result.dead_letters):
        from jobs import ledger

        erased = ledger.erasures(ledger.requests(lake)).get(result.subject)
        if erased is not None:
            print(
                f"  nothing held: the subject was erased at {erased['erased_at']} ({erased['erasure']});"
                " an access request is answered with that refusal (`jobs requests`), not this file"
            )
        else:
            print("  nothing held: the lake has no row of this subject (check the account id)")
    return 0


def cmd_compact(args: argparse.Namespace, settings: Settings) -> int:
    from jobs import compact
    from jobs.progress import Progress
    from jobs.replace import JobBusy

    lake = _lake(settings)
    try:
        result = compact.run(
            _connect(),
            lake,
            target_bytes=int(args.target_mb * 1024 * 1024),
            dry_run=args.dry_run,
            progress=Progress("compact: merging"),
        )
    except JobBusy as exc:
        raise _busy(exc) from None
    except compact.CompactionMismatch as exc:
        raise CliError(str(exc), status=1) from None
    if args.json:
        _print_json(result.as_dict())
        return 0
    if args.dry_run:
        print("compaction plan (dry run, nothing touched)")
        for m in result.merges[:50]:
            print(f"  {m['partition']}: {len(m['inputs'])} files ({m['bytes_in']:,} bytes) -> {m['output']}")
    else:
        print("compaction done")
    print(
        f"  {result.files_in} files in {result.partitions} partitions -> {result.files_out} files"
        + ("" if args.dry_run else f"; {result.rows:,} rows, counts and checksums equal")
    )
    return 0


def cmd_rebuild_manifests(args: argparse.Namespace, settings: Settings) -> int:
    from jobs import manifests

    lake = _lake(settings)
    try:
        result = manifests.run(lake, dry_run=args.dry_run)
    except manifests.Busy as exc:
        raise _busy(exc) from None
    if args.json:
        _print_json(result.as_dict())
        return 0
    head = "manifests to write (dry run, nothing touched)" if args.dry_run else "manifests rebuilt"
    read = ", ".join(f"{n} {zone}" for zone, n in result.files_read.items())
    print(f"{head}: {read} files read")
    for s in result.sources:
        ranges = ", ".join(f"{a}..{b}" for a, b in s.written) or "none (all held)"
        print(
            f"  {s.source}: {'would write' if args.dry_run else 'wrote'} {ranges}; resumes at {s.next_offset}"
        )
        if s.gaps:
            gaps = ", ".join(f"{a}..{b}" for a, b in s.gaps)
            print(f"    not in any file (no row landed, or all erased; not read again): {gaps}")
    print(
        f"  {result.ranges_written} ranges of {len(result.sources)} sources"
        f" {'to write' if args.dry_run else 'written'}. Ranges past a source's last file that landed"
        " no row or were erased cannot be seen: a worker reads them again (see --help)"
    )
    return 0


def cmd_policy_check(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from pipeline.policy_check import parse_policy

    policy = parse_policy(args.file)  # PolicyError: every problem with its line, exit 2
    doc = asdict(policy)
    if args.json:
        _print_json(doc)
        return 0
    r = policy.retention
    print(f"{args.file}: policy OK")
    print(
        f"  retention: vault {r.vault_days} d, analytics {r.analytics_days} d, aggregates "
        f"{'kept' if r.aggregates_days is None else f'{r.aggregates_days} d'}, recordings"
        f" {r.recording_days} d, transcripts {r.transcript_days} d, outbox access exports"
        f" {r.outbox_days} d"
    )
    c = policy.consent
    n = policy.noise
    noise = f"noise on, epsilon {n.epsilon:g} per row and build" if n.enabled else "noise off (exact values)"
    print(f"  aggregates: k = {policy.k}, {noise}")
    print(
        f"  consent defaults: recording {c.recording}, transcription {c.transcription},"
        f" analytics {c.analytics}"
    )
    print(f"  secret attribute names: {', '.join(policy.secret_names)}")
    source = "CALLPIPE_KEY_FILE"
    if policy.key.file:
        source = f"file {policy.key.file}"
    elif policy.key.env:
        source = f"variable {policy.key.env}"
    print(f"  pseudonymization key: {source} (version {policy.key.version})")
    return 0
