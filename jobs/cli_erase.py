"""`callpipe jobs erase --account ID`: an operator's direct erasure of one subject (jobs/erase_direct.py).

The handler reads the clock and who runs it (`jobs.audit.login`) here, at the edge, and passes them
to the job with the DuckDB connection. Human-readable output by default; `--json` prints one JSON
document on stdout: the erasure's counts, and the request ledger's record of it.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from jobs.cli_ops import _busy, _connect, _lake, _print_json
from pipeline.errors import CliError
from pipeline.kafka_access import OPERATOR
from pipeline.settings import Settings
from schemas.topics import DLQ, REQUESTS

# The exit status of a run that erased everything it could find but could not search every dead
# letter of `_rejects/` (`dead_letters_unattributed`): done and recorded, yet not verified. Apart
# from 0 (verified), 1 (rows remain), 2 (usage, settings, broker) and 3 (another job holds the lake).
EXIT_NOT_VERIFIED = 5

# Erasure counts the dead letters kept in the lake (_rejects/) only; calls.dlq is a Kafka log.
DLQ_NOTE = (
    f"{DLQ}: not counted (a Kafka log erase cannot rewrite): the subject's dead letters there stay"
    " sealed to the operator key until the topic's retention expires them (3 days as `topics"
    " create` makes it), and `dlq inspect`/`dlq replay` withhold them"
)

ERASE_HELP = """\
Remove one account from the vault and analytics zones, its dead letters and its access exports in
the outbox, verify that nothing is left, and audit the run (the subject by token only).

The erasure is recorded in the request ledger (<lake>/_requests/) as an erase request of source
"operator" made and fulfilled now, with who ran it and the counts removed, under one id per
subject (op-erase-...): `jobs requests --status` and `jobs report` show it, an access or rectify
request of the subject is refused as "subject_erased" with the erasure's time, and rows of the
subject that land later are erased by the next `jobs requests` pass. Running it again is safe:
a run killed midway is finished, and rows landed since are erased and recorded (docs/ARCHITECTURE.md
"Privacy semantics").

Before it touches the lake it publishes the erase request to privacy.requests as the operator
principal (the same id, keyed by account id like carriers' requests), so running stream workers
drop the subject's later events instead of landing them; a broker out of reach stops it with
nothing changed. --no-topic erases and records without telling the stream (its workers keep
landing the subject's new events until the next `jobs requests` pass erases them).

Exit status: 0 erased and verified; 5 erased and recorded, but not verified: some dead letters in
<lake>/_rejects/ could not be searched (damaged compressed bytes), so whether they are the
subject's is unknown (counted as dead_letters_unattributed; they expire with `jobs retention`);
1 rows of the subject remain after erasure; 2 a usage, settings or broker error, nothing erased;
3 another job holds the lake. A dry run exits 0.
"""


def register(jobs_sub: argparse._SubParsersAction) -> None:
    erase = jobs_sub.add_parser(
        "erase",
        help="remove one account from the vault and analytics zones, recorded in the request ledger",
        description=ERASE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    erase.add_argument("--account", required=True, metavar="ID", help="the account id to erase")
    erase.add_argument(
        "--dry-run", action="store_true", help="print the files it would rewrite, touch nothing"
    )
    erase.add_argument(
        "--no-topic",
        action="store_true",
        help="do not publish the erasure to privacy.requests (running workers are not told)",
    )
    erase.add_argument("--prefix", default="", help="the topic set's name prefix (the demo prints its own)")
    erase.add_argument("--json", action="store_true", help="print the result as JSON")
    erase.set_defaults(func=cmd_erase)


def cmd_erase(args: argparse.Namespace, settings: Settings) -> int:
    from jobs import audit, erase, erase_direct
    from jobs.progress import Progress
    from jobs.replace import JobBusy

    lake = _lake(settings)
    if args.dry_run:
        preview = erase.plan(_connect(), lake, settings.key(), args.account, buckets=settings.buckets)
        if args.json:
            _print_json(preview)
            return 0
        print(f"erase plan for subject {preview['subject']} (dry run, nothing touched)")
        for path in preview["files"]:
            print(f"  rewrite {path}")
        rows = preview["rows_removed"]
        print(
            f"  {rows['vault']:,} vault rows, {rows['analytics']:,} analytics rows,"
            f" {preview['dead_letters_removed']:,} dead letters,"
            f" {preview['access_exports_removed']} access exports; {preview['files_rewritten']} of"
            f" {preview['files_total']} files ({100 * preview['files_touched_share']:.2f}%)"
        )
        if preview["outbox_files_unattributed"]:
            print(f"  outbox files tied to no subject, not searched: {preview['outbox_files_unattributed']}")
        if preview["dead_letters_unattributed"]:
            print(f"  dead letters that cannot be searched: {preview['dead_letters_unattributed']}")
        print(f"  {DLQ_NOTE}")
        return 0
    announce = None
    if not args.no_topic:
        from jobs import requests_topic

        topic = args.prefix + requests_topic.TOPIC
        announce = requests_topic.announcer(settings.kafka(OPERATOR), topic)
    try:
        recorded = erase_direct.run(
            _connect(),
            lake,
            settings.key(),
            args.account,
            buckets=settings.buckets,
            deadlines=settings.policy.requests,
            now=datetime.now(UTC),
            by=audit.login(),
            progress=Progress("erase: rewriting"),
            announce=announce,
        )
    except JobBusy as exc:
        raise _busy(exc) from None
    except erase.ErasureIncomplete as exc:
        raise CliError(str(exc), status=1) from None
    except Exception as exc:
        from jobs.requests_topic import TopicUnavailable

        if isinstance(exc, TopicUnavailable):
            raise CliError(
                f"{exc}; nothing was erased. `--no-topic` erases the lake and records the ledger"
                " without telling the stream workers"
            ) from None
        raise
    result = recorded.erasure
    status = EXIT_NOT_VERIFIED if result.dead_letters_unattributed else 0
    if status:
        print(
            f"callpipe: erasure not verified: {result.dead_letters_unattributed} dead letter(s) could"
            f" not be searched (exit {status}); everything found was erased and recorded",
            file=sys.stderr,
        )
    if args.json:
        _print_json(recorded.as_dict())
        return status
    removed = result.rows_removed
    print(
        f"erased subject {result.subject}: {removed['vault']:,} vault rows,"
        f" {removed['analytics']:,} analytics rows"
    )
    print(
        f"  files rewritten {result.files_rewritten} of {result.files_total}"
        f" ({100 * result.files_touched_share:.2f}% of files touched);"
        f" probed {result.files_probed}, Bloom/statistics said maybe {result.files_maybe}"
    )
    if result.dead_letters_removed:
        print(f"  dead letters removed: {result.dead_letters_removed:,}")
    print(f"  {DLQ_NOTE}")
    if result.access_exports_removed:
        print(f"  access exports removed from the outbox: {result.access_exports_removed}")
    if result.outbox_files_unattributed:
        print(
            f"  outbox files tied to no subject, not searched: {result.outbox_files_unattributed}"
            " (they expire with `jobs retention`; check them)"
        )
    if result.dead_letters_unattributed:
        print(
            f"  dead letters that could not be searched (damaged compressed bytes):"
            f" {result.dead_letters_unattributed} (whose they are is unknown; they expire with"
            " `jobs retention`; check them)"
        )
        print(
            "  verified: no rows of the subject remain in any bucket; not verified for the"
            f" {result.dead_letters_unattributed} dead letters that could not be searched"
        )
    else:
        print("  verified: no rows of the subject remain in any bucket")
    if recorded.published:
        print(
            f"  {args.prefix}{REQUESTS}: erase request published; running stream workers drop"
            " the subject's later events"
        )
    else:
        print(
            f"  {REQUESTS}: not told (--no-topic); running stream workers keep landing the"
            " subject's new events until the next `jobs requests` pass erases them"
        )
    said = {
        "fulfilled": "erase request recorded and fulfilled",
        "enforced": "erasure re-applied (rows landed since)",
        "none": "already recorded; nothing more to remove",
    }[recorded.recorded]
    print(f"  request ledger: {recorded.request} (source operator): {said}; erased at {recorded.erased_at}")
    if recorded.open_requests:
        print(
            f"  {recorded.open_requests} open request(s) of the subject: the next `jobs requests` pass"
            " answers them (access and rectify: refused, subject erased)"
        )
    return status
