"""`callpipe kafka up|down|status` and `callpipe topics create`."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from infra import kafka, security, topics
from pipeline.errors import CliError
from pipeline.kafka_access import OPERATOR, AccessError
from pipeline.sealed import ensure_keys
from pipeline.settings import Settings
from sinks import crypt


def _broker(settings: Settings, plaintext: bool = False) -> kafka.Broker:
    return kafka.broker_for(settings.home, settings.kafka_data_dir, settings.kafka_port, plaintext)


def _users(broker: kafka.Broker, rotate: str | None) -> int:
    if kafka.running_pid(broker) is None:
        raise CliError("kafka users: no broker is running; start it with `callpipe kafka up`")
    admin = broker.admin()
    if rotate:
        path = security.rotate(admin, broker.secrets, rotate)
        if rotate == security.ADMIN:  # the broker's own login and the controller's PLAIN user
            print("kafka users: the admin's new password takes effect for the broker at its next start")
        print(f"kafka users: {rotate} has a new password in {path} (mode 0600); the old one is refused")
        return 0
    known = security.users(admin)
    for user in security.PRINCIPALS:
        mechanisms = ",".join(known.get(user, [])) or "no credential"
        print(f"User:{user:<9} {mechanisms:<14} {security.ROLE_OF[user]}")
    for user in sorted(set(known) - set(security.PRINCIPALS)):
        print(f"User:{user:<9} {','.join(known[user]):<14} (not a callpipe role)")
    return 0


def kafka_cmd(args: argparse.Namespace, settings: Settings) -> int:
    broker = _broker(settings, getattr(args, "plaintext", False))
    try:
        if args.action == "up":
            t0 = time.monotonic()
            if kafka.fetch(broker):
                print(f"fetched Apache Kafka {kafka.KAFKA_VERSION} into {broker.libs}")
            pid, started = kafka.up(broker, wait_s=args.wait)
            took = time.monotonic() - t0
            # a local set-up's dead-letter operator key (pipeline/sealed.py); one that exists stays
            if ensure_keys(settings.dlq_key_file, settings.dlq_public_key) is not None:
                print(f"created the dead-letter operator key {settings.dlq_key_file} (mode 0600)")
            # ...and the vault's master keys: the vault is encrypted by default (sinks/crypt.py)
            if settings.vault_encryption and crypt.ensure_key_file(settings.vault_keys):
                print(f"created the vault key file {settings.vault_keys} (mode 0600)")
            state = f"started in {took:.1f}s" if started else "already running"
            print(f"kafka up: {broker.bootstrap} SASL_SSL (pid {pid}, {state}; log {broker.log_file})")
            if broker.plaintext and started:
                print(
                    f"kafka up: development PLAINTEXT listener at 127.0.0.1:{broker.plaintext_port},"
                    " no authentication (CALLPIPE_KAFKA_SECURITY=plaintext)"
                )
            return 0
        if args.action == "users":
            return _users(broker, args.rotate)
        if args.action == "grant":  # the roles' ACLs on a prefixed topic set (tests, benches)
            n = security.grant(broker.admin(), args.prefix)
            print(f"kafka grant: {n} ACLs for topic set {args.prefix!r}")
            return 0
        if args.action == "down":
            stopped = kafka.down(broker)
            print(
                "kafka down: no broker was running"
                if stopped is None
                else f"kafka down: stopped pid {stopped}"
            )
            return 0
        running = kafka.running_pid(broker)
        if running is None:
            print("kafka down")
            return 3
        answering = kafka.answers(broker.admin())
        print(f"kafka up: {broker.bootstrap} (pid {running}{'' if answering else ', not answering yet'})")
        return 0 if answering else 4
    except (kafka.BrokerError, security.SecurityError, AccessError) as exc:
        raise CliError(str(exc)) from None


def topics_cmd(args: argparse.Namespace, settings: Settings) -> int:
    try:
        access = settings.kafka(OPERATOR)
        outcomes = asyncio.run(topics.create_topics(access, settings.partitions, args.prefix))
    except (topics.TopicError, AccessError) as exc:
        raise CliError(str(exc)) from None
    for o in outcomes:
        print(f"{o.name}: {o.partitions} partitions ({'created' if o.created else 'exists'})")
    return 0


def demo_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from infra.demo import DemoRefused, run_demo

    if args.events < 100:
        raise CliError("--events must be at least 100")
    try:
        return run_demo(
            settings, events=args.events, seed=args.seed, lake=args.lake, keep_broker=args.keep_broker
        )
    except (kafka.BrokerError, topics.TopicError, security.SecurityError, AccessError, DemoRefused) as exc:
        raise CliError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("kafka", help="local Apache Kafka (KRaft) for development and the demo")
    k.add_argument(
        "action",
        choices=["up", "down", "status", "users", "grant"],
        help="users: list the principals and their roles (with --rotate: a new password)",
    )
    k.add_argument("--wait", type=float, default=60.0, help="seconds `up` waits for the broker (default 60)")
    k.add_argument(
        "--plaintext",
        action="store_true",
        help="up: also an unauthenticated PLAINTEXT listener on port+2, for development only",
    )
    k.add_argument("--rotate", metavar="USER", help="users: give USER a new password; the old one is refused")
    k.add_argument("--prefix", default="", help=argparse.SUPPRESS)  # grant: a prefixed topic set
    k.set_defaults(func=kafka_cmd, vault_keys=False)
    t = sub.add_parser(
        "topics", help="declare callpipe's topics (idempotent; see docs/ARCHITECTURE.md, Topics)"
    )
    t.add_argument("action", choices=["create"])
    t.add_argument("--prefix", default="", help=argparse.SUPPRESS)  # tests: isolated topic sets
    t.set_defaults(func=topics_cmd, vault_keys=False)
    d = sub.add_parser("demo", help="the whole story end to end: broker, traffic, worker, lake, queries")
    d.add_argument(
        "--events", type=int, default=20_000, help="events to produce (default 20000, 1%% malformed)"
    )
    d.add_argument("--seed", type=int, default=42)
    d.add_argument(
        "--lake",
        type=Path,
        default=Path("demo-lake"),
        help="lake root, emptied first if the demo made it; another folder is refused (default ./demo-lake)",
    )
    d.add_argument("--keep-broker", action="store_true", help="leave the broker running afterwards")
    d.set_defaults(func=demo_cmd, vault_keys=False)  # the demo sets up its own
