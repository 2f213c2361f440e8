"""`callpipe produce`: seeded synthetic carrier traffic (or a file) to Kafka."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.carrier import generate
from pipeline.carrier.produce import (
    FORMATS,
    TOPIC_OF,
    ProduceError,
    Shipment,
    load_file,
    publish,
    write_files,
)
from pipeline.errors import CliError
from pipeline.kafka_access import CARRIER
from pipeline.settings import Settings


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be 0 (as fast as possible) or more events per second")
    return value


def _share(text: str) -> float:
    value = _rate(text)
    if value >= 1:
        raise argparse.ArgumentTypeError("must be a fraction below 1, e.g. 0.01")
    return value


def _start(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "not an ISO-8601 date or time, e.g. 2026-01-31 or 2026-01-31T08:00Z"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `produce` to `callpipe`."""
    p = sub.add_parser(
        "produce",
        help="publish synthetic carrier traffic (seeded, realistic) or a file of records to Kafka",
        description="Publish seeded synthetic call events (or --from FILE) keyed by account_id. "
        "Batches (--batch-size > 1) hold events of one partition only.",
    )
    p.add_argument("--count", type=_non_negative_int, default=10_000, help="call events to generate (10000)")
    p.add_argument("--rate", type=_rate, default=0.0, help="events per second, 0 = as fast as possible (0)")
    p.add_argument("--seed", type=int, default=1, help="same seed, same events (1)")
    p.add_argument("--format", choices=FORMATS, default="avro", help="avro (Confluent wire format) or json")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="events per Kafka message (1)")
    p.add_argument("--topic", help="target topic (calls.raw; with --from: the topic of the file's records)")
    p.add_argument(
        "--from", dest="from_file", type=Path, metavar="FILE", help="JSON lines / Avro container file"
    )
    p.add_argument("--accounts", type=_positive_int, default=generate.DEFAULT_ACCOUNTS, help="accounts (500)")
    p.add_argument("--start", type=_start, help="window start, ISO-8601 UTC (default: yesterday 00:00 UTC)")
    p.add_argument("--hours", type=_positive_int, default=24, help="window length in whole hours (24)")
    p.add_argument("--consent", action="store_true", help="also publish the accounts' consent events")
    p.add_argument("--consent-topic", default=TOPIC_OF["ConsentEvent"], help="(consent.events)")
    p.add_argument("--requests", action="store_true", help="also publish privacy requests")
    p.add_argument("--requests-topic", default=TOPIC_OF["PrivacyRequest"], help="(privacy.requests)")
    p.add_argument("--bad-share", type=_share, default=0.0, help="extra share of deliberately bad messages")
    p.add_argument("--iso-times", action="store_true", help="JSON timestamps as ISO-8601 instead of epoch ms")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write <topic>.jsonl (json) or <topic>.avro (avro container) files into DIR instead of "
        "publishing: input for `callpipe ingest` and `--from`",
    )
    p.set_defaults(func=run, vault_keys=False)


def build_shipments(args: argparse.Namespace, now: datetime) -> list[Shipment]:
    """The shipments the command line asks for; `now` is the caller's clock (default window: yesterday)."""
    shape = {"fmt": args.format, "batch_size": args.batch_size, "iso_times": args.iso_times}
    if args.from_file is not None:
        try:
            name, records = load_file(args.from_file, args.topic)
        except ProduceError as exc:
            raise CliError(str(exc)) from None
        return [Shipment(args.topic or TOPIC_OF[name], name, records, **shape)]
    start = args.start or (now.astimezone(UTC) - timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    start_ms = int(start.timestamp() * 1000)
    span_ms = args.hours * generate.HOUR_MS
    accounts = generate.generate_accounts(args.seed, args.accounts)
    shipments: list[Shipment] = []
    if args.consent:
        consents = generate.generate_consents(args.seed, accounts, start_ms, span_ms)
        shipments.append(Shipment(args.consent_topic, "ConsentEvent", consents, **shape))
    if args.requests:
        requests = generate.generate_requests(args.seed, accounts, start_ms, span_ms)
        shipments.append(Shipment(args.requests_topic, "PrivacyRequest", requests, **shape))
    calls = generate.generate_calls(args.seed, args.count, start_ms, span_ms, accounts=accounts)
    bad = generate.generate_bad_messages(args.seed, round(args.count * args.bad_share), start_ms)
    shipments.append(Shipment(args.topic or TOPIC_OF["CallEvent"], "CallEvent", calls, bad=bad, **shape))
    return shipments


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.out is not None and args.bad_share:
        raise CliError("--bad-share needs a broker: bad messages are not written to --out files")
    shipments = build_shipments(args, datetime.now(UTC))
    try:
        if args.out is not None:
            summary = write_files(args.out, shipments)
        else:
            summary = asyncio.run(publish(settings.kafka(CARRIER), shipments, rate=args.rate))
    except ProduceError as exc:
        raise CliError(str(exc)) from None
    print(summary.line())
    return 0
