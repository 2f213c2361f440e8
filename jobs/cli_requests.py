"""`callpipe jobs requests` (the request ledger: intake, fulfilment, deadlines) and
`callpipe jobs breach` (whom exposed files or a time window touched).

Exit status of `jobs requests` (with or without --status): 0, or 4 when an open request is past
its deadline, so a scheduler can alert; 3 when another job holds the lake; 2 for a bad setup.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs.cli_erase import EXIT_NOT_VERIFIED
from jobs.cli_ops import _busy, _connect, _lake, _print_json, as_of_arg
from pipeline.errors import CliError
from pipeline.kafka_access import OPERATOR
from pipeline.reasons import Rejection
from pipeline.settings import Settings

OVERDUE_STATUS = 4


def register(jobs_sub: argparse._SubParsersAction) -> None:
    req = jobs_sub.add_parser(
        "requests",
        help="record and fulfil data-subject requests (erase, access, rectify, ...) and purge what"
        " consent withdrawals in consent.events cover",
        description="One idempotent pass. Exit status: 0 done; 4 a request is past its deadline; 5 an"
        " erasure or a recording/transcription withdrawal this pass fulfilled is not verified (dead"
        " letters it could not search, as `jobs erase` exits 5; it wins over 4); 2 usage, settings"
        " or broker; 3 another job holds the lake.",
    )
    req.add_argument("--status", action="store_true", help="only list open requests and deadlines")
    req.add_argument(
        "--file", type=Path, action="append", default=[], metavar="FILE", help="PrivacyRequests from a file"
    )
    req.add_argument(
        "--no-topic",
        action="store_true",
        help="do not read privacy.requests nor consent.events (no withdrawals recorded or re-checked)",
    )
    req.add_argument("--prefix", default="", help="the topic set's name prefix (the demo prints its own)")
    req.add_argument("--as-of", type=as_of_arg, default=None, help="ISO-8601 time (default: now, UTC)")
    req.add_argument("--json", action="store_true", help="print the result as JSON")
    req.set_defaults(func=cmd_requests)

    breach = jobs_sub.add_parser("breach", help="which subjects and data categories exposed files held")
    breach.add_argument("--zone", required=True, choices=("vault", "analytics"))
    breach.add_argument("--files", nargs="+", type=Path, metavar="FILE", help="the exposed lake files")
    breach.add_argument("--since", type=as_of_arg, help="start of the exposure window (ISO-8601)")
    breach.add_argument("--until", type=as_of_arg, help="end of the exposure window (exclusive)")
    breach.add_argument("--out", type=Path, metavar="FILE", help="also write the summary here (0600)")
    breach.add_argument("--json", action="store_true", help="print the result as JSON")
    breach.set_defaults(func=cmd_breach)


def _print_status(status: dict[str, Any]) -> None:
    from jobs import ledger

    totals = ", ".join(f"{k} {v}" for k, v in sorted(status["totals"].items())) or "none"
    print(f"requests as of {status['as_of']}: {totals}")
    if not status["open"]:
        print(
            "  no open requests in the ledger (requests still unread in privacy.requests count after a pass)"
        )
    for r in status["open"]:
        flag = {"overdue": "  OVERDUE", "due soon": "  due soon"}.get(r["due"], "")
        print(
            f"  {r['request']} {ledger.kind_of(r)} {r['status']}, {r['age_days']:.1f} days old,"
            f" deadline {r['deadline']}{flag}"
        )
    if status["overdue"]:
        print(f"  {status['overdue']} request(s) past their deadline")


def _position(rejection: Rejection) -> str:
    """Where in a requests file a bad record is: its line (JSON lines), else its record (Avro)."""
    if rejection.offset >= 0:
        return f"line {rejection.offset + 1}"
    return "the file" if rejection.index is None else f"record {rejection.index + 1}"


def cmd_requests(args: argparse.Namespace, settings: Settings) -> int:
    from jobs import ledger

    lake = _lake(settings)
    now = args.as_of or datetime.now(UTC)
    warn = settings.policy.requests.warn_days
    if args.status:
        status = ledger.status(lake, now, warn)
        if args.json:
            _print_json(status)
        else:
            _print_status(status)
        return OVERDUE_STATUS if status["overdue"] else 0

    from jobs import requests
    from jobs.replace import JobBusy
    from pipeline.ingest import IngestError, _read

    batches = []
    for path in args.file:
        try:
            decoded = _read(path, "PrivacyRequest")
        except IngestError as exc:
            raise CliError(str(exc)) from None
        if decoded.rejections:  # the whole file is refused: a request half-taken is worse than none
            where = ", ".join(f"{_position(r)} ({r.reason.value})" for r in decoded.rejections[:10])
            more = "" if len(decoded.rejections) <= 10 else f" and {len(decoded.rejections) - 10} more"
            raise CliError(
                f"{path}: {len(decoded.rejections)} record(s) are not valid PrivacyRequests: {where}{more};"
                " nothing of the file was taken (the format: README, data-subject requests)"
            )
        batches.append(requests.Batch(records=decoded.records, source="file"))
    topic = consent = None
    if not args.no_topic:
        from jobs import consent_topic, requests_topic

        topic = requests_topic.reader(settings.kafka(OPERATOR), args.prefix + requests_topic.TOPIC)
        consent = consent_topic.reader(settings.kafka(OPERATOR), settings.home, args.prefix)
    try:
        result = requests.run(
            _connect(),
            lake,
            settings.key(),
            buckets=settings.buckets,
            deadlines=settings.policy.requests,
            now=now,
            topic=topic,
            files=batches,
            consent=consent,
            consent_defaults=settings.policy.consent,
        )
    except JobBusy as exc:
        raise _busy(exc) from None
    except Exception as exc:
        from jobs.requests_topic import TopicUnavailable

        if isinstance(exc, TopicUnavailable):
            raise CliError(
                f"{exc}; `--no-topic` answers the --file requests without the broker (and no withdrawals)"
            ) from None
        raise
    status = ledger.status(lake, now, warn)
    result["status"] = status
    if args.json:
        _print_json(result)
    else:
        handled = ", ".join(f"{k} {v}" for k, v in sorted(result["handled"].items())) or "nothing to do"
        print(f"requests: {result['received']} received; {handled}")
        if result["withdrawals_received"]:
            print(f"  {result['withdrawals_received']} consent withdrawal(s) read from consent.events")
        if result["reused_ids"]:
            print(
                f"  {result['reused_ids']} request(s) came with an id another request holds: recorded"
                " under the id and a digest of what they ask (the ledger's reused_id keeps the producer's)"
            )
        if result["refused_reasons"]:
            why = ", ".join(f"{k} {v}" for k, v in sorted(result["refused_reasons"].items()))
            print(f"  refused: {why} (the reasons: README, data-subject requests)")
        if result["enforced"]:
            print(f"  erasure re-applied to {result['enforced']} subject(s) whose rows landed late")
        if result["withdrawals_enforced"]:
            print(
                f"  {result['withdrawals_enforced']} withdrawal(s) re-applied to calls from before them"
                " that landed late"
            )
        if result["rejected_messages"]:
            print(f"  {result['rejected_messages']} message(s) on the topic were not PrivacyRequests")
        _print_status(status)
    if result["erasures_not_verified"]:
        print(
            f"callpipe: {result['erasures_not_verified']} erasure(s) or withdrawal(s) not verified:"
            f" dead letters could not be searched (exit {EXIT_NOT_VERIFIED}; the ledger's"
            " dead_letters_unattributed)",
            file=sys.stderr,
        )
        return EXIT_NOT_VERIFIED
    return OVERDUE_STATUS if status["overdue"] else 0


def cmd_breach(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from jobs import breach
    from jobs.intake import write_private

    lake = _lake(settings)
    if (args.files is None) == (args.since is None and args.until is None):
        raise CliError("give --files, or --since and --until")
    try:
        result = breach.scope(
            _connect(),
            lake,
            settings.key(),
            args.zone,
            files=args.files,
            since=args.since,
            until=args.until,
            now=datetime.now(UTC),
            buckets=settings.buckets,
        )
    except breach.BreachScopeError as exc:
        raise CliError(str(exc)) from None
    if args.out is not None:
        write_private(args.out, orjson.dumps(result, option=orjson.OPT_INDENT_2))
    if args.json:
        _print_json(result)
        return 0
    print(f"breach scope ({args.zone}): {result['subjects']} subjects, {result['rows']:,} rows exposed")
    for category, countries in result["categories"].items():
        cells = ", ".join(f"{c} {v['subjects']} subjects/{v['rows']:,} rows" for c, v in countries.items())
        print(f"  {category}: {cells}")
    print(f"  subjects to notify: {lake / '_outbox' / result['outbox']} (restricted)")
    return 0
