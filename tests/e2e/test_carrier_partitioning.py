"""Consent and privacy requests hold whatever client a carrier produces them with (issue 8).

Carriers with librdkafka clients (confluent-kafka, kcat) key the control streams by account like
everybody else, but librdkafka's default partitioner (consistent_random: CRC32 of the key) puts
an account on another partition than murmur2 (Java client, aiokafka, `callpipe produce`), some
carriers name partitions explicitly, and here the control topics do not even have as many
partitions as calls.raw. Calls come through the project's own murmur2 helpers.

Three workers share calls.raw in one consumer group; once the first half of the calls has
started landing, one is killed with SIGKILL (just after the first calls of the second half, so
it dies holding calls that wait for their control events) and a replacement is started while
the second half is produced. The traffic is produced in rounds of event time: a round's calls first, then the
consent changes, objections, restrictions and erasures stamped inside that round, in time order
(so most of them arrive after calls they govern, several stamped at exactly a call's time), then
an event at the round's end on every control partition. A busy carrier feed is never silent for
long; the test stands in for that with a heartbeat on every control partition, so the worker's
idle rule (CALLPIPE_MAX_IDLE_MS) never lets a call through before the control events stamped
before it were read. The worker logs and `journal.json` (what was produced when, and where) are
kept in the test's tmp dir.

Then, for every call of every account, the lake must show what `decide()` gives for the call's
time against the whole history, and every event must be accounted for exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError
from confluent_kafka import KafkaError, Message, Producer

from infra import security
from infra.topics import TOPICS
from pipeline import codec
from pipeline.carrier.generate import generate_traffic
from pipeline.carrier.produce import partition_for
from pipeline.consent import AccountState, decide, record_consent, record_request
from pipeline.kafka_access import ADMIN, CARRIER, OPERATOR
from pipeline.policy import DEFAULT_POLICY
from schemas.topics import CALLS, CONSENT, DLQ, REQUESTS, STREAM_GROUP
from sinks.stats import read_stats
from tests.support.streamkit import (
    access,
    consume_all,
    publish,
    records_to_messages,
    start_worker,
    stop,
    wait_for_events,
    wait_for_group,
    worker_env,
    zone,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
PARTITIONS = {CALLS: 4, CONSENT: 3, REQUESTS: 2, DLQ: 1}  # worker_env says 4, for calls.raw
RECORD = {CONSENT: "ConsentEvent", REQUESTS: "PrivacyRequest"}
ROUNDS = 20  # of event time; the first half before the kill, the second after
CALLS_LEAD_S = 0.4  # a round's calls reach the workers before the control events stamped among them
HEARTBEAT_S = 0.3  # well inside the worker's 2 s idle rule


@dataclass(frozen=True)
class Control:
    """One consent event or privacy request; `partition` None leaves it to librdkafka."""

    topic: str
    record: dict[str, Any]
    partition: int | None
    fmt: str


@dataclass
class Plan:
    calls: list[dict[str, Any]]
    backlog: list[Control]  # produced before the workers start (loaded whole at start-up)
    rounds: list[tuple[list[dict[str, Any]], list[Control]]]  # (calls, control stamped among them)
    bounds: list[int]  # rounds[k] holds event times bounds[k] <= t < bounds[k + 1]
    control: list[Control] = field(default_factory=list)  # everything, backlog and live


def plan_traffic(seed: int, start: int, span: int) -> Plan:
    """Calls of generate_traffic, and for their accounts a history of consent and requests where
    every change is stamped at the time of one of the account's calls (so it governs that call
    exactly at its boundary) or, for erasures, before the account's first call."""
    traffic = generate_traffic(seed, 6_000, start, span, accounts=300)
    rng = random.Random(seed)
    times: dict[str, list[int]] = defaultdict(list)
    for call in traffic.calls:
        times[call["account_id"]].append(call["started_at"])
    backlog: list[Control] = []
    live: list[Control] = []

    def control(topic: str, record: dict[str, Any], into: list[Control]) -> None:
        account = record["account_id"].encode()
        partition = None
        if rng.random() < 0.3:  # named explicitly, never where murmur2 would put it
            n = PARTITIONS[topic]
            partition = (partition_for(account, n) + rng.randrange(1, n)) % n
        into.append(Control(topic, record, partition, rng.choice(("avro", "json"))))

    def consent(account: str, purpose: str, granted: bool, at: int, into: list[Control]) -> None:
        record = {"account_id": account, "purpose": purpose, "granted": granted, "at": at, "source": "app"}
        control(CONSENT, record, into)

    def request(account: str, kind: str, at: int) -> None:
        record = {"request_id": f"r{rng.getrandbits(64):016x}", "account_id": account, "kind": kind, "at": at}
        control(REQUESTS, record, live)

    for account, ts in sorted(times.items()):

        def during(after: int = -1, ts: list[int] = ts) -> int | None:
            later = [t for t in ts if t > after]
            return rng.choice(later) if later else None

        for purpose, prior in (("recording", 0.6), ("transcription", 0.5)):
            granted = rng.random() < prior
            if granted:
                consent(account, purpose, True, start - rng.randrange(HOUR, 30 * DAY), backlog)
            if rng.random() < 0.35 and (at := during()) is not None:
                consent(account, purpose, not granted, at, live)  # withdrawn, or granted mid-stream
        if rng.random() < 0.15 and (at := during()) is not None:
            consent(account, "analytics", False, at, live)
            if rng.random() < 0.4 and (again := during(at)) is not None:
                consent(account, "analytics", True, again, live)
        if rng.random() < 0.15 and (at := during()) is not None:
            request(account, "object", at)
            if rng.random() < 0.4 and (again := during(at)) is not None:
                consent(account, "analytics", True, again, live)  # a later grant resumes analytics
        if rng.random() < 0.12 and (at := during()) is not None:
            request(account, "restrict", at)
            if rng.random() < 0.5 and (again := during(at)) is not None:
                request(account, "unrestrict", again)
        if rng.random() < 0.05 and (at := during()) is not None:
            request(account, "access", at)
        if rng.random() < 0.06:
            request(account, "erase", min(ts) - rng.randrange(0, 10 * MINUTE))

    bounds = [start + span * k // ROUNDS for k in range(ROUNDS)] + [start + span + 1]

    def round_of(at: int) -> int:
        return max(0, min(ROUNDS - 1, next(k for k in range(ROUNDS) if at < bounds[k + 1])))

    rounds: list[tuple[list[dict[str, Any]], list[Control]]] = [([], []) for _ in range(ROUNDS)]
    for call in traffic.calls:
        rounds[round_of(call["started_at"])][0].append(call)
    for item in live:
        rounds[round_of(item.record["at"])][1].append(item)
    for _calls, items in rounds:  # each control partition in event-time order (what watermarks assume)
        items.sort(key=lambda c: c.record["at"])
    return Plan(traffic.calls, backlog, rounds, bounds, [*backlog, *live])


class ControlFeed:
    """consent.events and privacy.requests as a carrier's librdkafka client produces them: keyed
    by account, partitioned by confluent-kafka's default partitioner unless named. A heartbeat
    thread keeps every control partition moving at the current event-time bound."""

    def __init__(self, bootstrap: str, prefix: str, bound: int) -> None:
        self.prefix = prefix
        # A carrier's librdkafka client: SASL_SSL, SCRAM-SHA-512, the CA (docs/ARCHITECTURE.md, Security).
        self.producer = Producer(
            {**access(CARRIER, bootstrap).librdkafka(), "linger.ms": 5, "enable.idempotence": True}
        )
        self.delivered: list[tuple[Control, int]] = []
        self.failed: list[str] = []
        self.bound = bound
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def send(self, item: Control) -> None:
        value = codec.encode([item.record], RECORD[item.topic], item.fmt)[0]
        extra = {} if item.partition is None else {"partition": item.partition}

        def done(err: KafkaError | None, msg: Message) -> None:
            with self._lock:
                if err is not None:
                    self.failed.append(err.str())
                elif not item.record["account_id"].startswith("clock-"):
                    self.delivered.append((item, msg.partition()))

        self.producer.produce(
            self.prefix + item.topic,
            value=value,
            key=item.record["account_id"].encode(),
            on_delivery=done,
            **extra,
        )
        self.producer.poll(0)

    def tick(self, at: int) -> None:
        """An event at `at` on every control partition (for accounts that make no calls)."""
        for p in range(PARTITIONS[CONSENT]):
            record = {"account_id": f"clock-{p}", "purpose": "analytics", "granted": True, "at": at}
            self.send(Control(CONSENT, {**record, "source": "clock"}, p, "avro"))
        for p in range(PARTITIONS[REQUESTS]):
            record = {"request_id": f"clock-{p}-{at}", "account_id": f"clock-{p}", "kind": "access", "at": at}
            self.send(Control(REQUESTS, record, p, "json"))

    def flush(self) -> None:
        assert self.producer.flush(30) == 0, "control events not delivered within 30s"
        assert self.failed == [], self.failed[:5]

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.tick(self.bound)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()


def create_topics(bootstrap: str, prefix: str) -> None:
    """The four topics with the partition counts above (`callpipe topics create` insists on one
    count for all, as the co-partitioned design did)."""

    async def run() -> None:
        config = {t.name: t.config for t in TOPICS}
        admin = AIOKafkaAdminClient(**access(OPERATOR, bootstrap).aiokafka())
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(prefix + name, n, 1, topic_configs=config[name]) for name, n in PARTITIONS.items()]
            )
            for _ in range(150):
                described = await admin.describe_topics([prefix + name for name in PARTITIONS])
                counts = {d["topic"].removeprefix(prefix): len(d["partitions"]) for d in described}
                if counts == PARTITIONS:
                    return
                await asyncio.sleep(0.2)
            raise AssertionError(f"topics not ready: {counts}")
        finally:
            await admin.close()

    asyncio.run(run())
    security.grant(access(ADMIN, bootstrap), prefix)


def wait_for_members(bootstrap: str, group: str, members: int, timeout_s: float) -> None:
    """wait_for_group, also on a broker so fresh that it has no group coordinator yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return wait_for_group(bootstrap, group, members, max(1.0, deadline - time.monotonic()))
        except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
            assert time.monotonic() < deadline, f"no coordinator for group {group} after {timeout_s}s"
            time.sleep(0.5)


def wait_for_log(log: Path, text: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert proc.poll() is None, f"{log.name}: worker exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{log.name} never logged {text!r}"
        time.sleep(0.2)


def produce_rounds(
    bootstrap: str,
    prefix: str,
    plan: Plan,
    feed: ControlFeed,
    rounds: range,
    journal: list[Any],
    between: Callable[[], None] = lambda: None,
) -> None:
    """`between` runs after the first round's calls, before its control events."""
    for k in rounds:
        calls, items = plan.rounds[k]
        publish(bootstrap, prefix + CALLS, records_to_messages(calls, "CallEvent", PARTITIONS[CALLS]))
        journal.append((time.time(), k, "calls acknowledged"))
        time.sleep(CALLS_LEAD_S)
        if k == rounds[0]:
            between()
        for item in items:
            feed.send(item)
        feed.tick(plan.bounds[k + 1])  # after the round's changes, on every partition
        feed.flush()
        feed.bound = plan.bounds[k + 1]
        journal.append((time.time(), k, "control acknowledged"))


def write_journal(path: Path, plan: Plan, feed: ControlFeed, journal: list[Any]) -> None:
    """What was produced when, for reading a failure beside the worker logs."""
    partition = {id(c): p for c, p in feed.delivered}
    doc = {
        "bounds": plan.bounds,
        "journal": journal,
        "calls": [
            {k: c[k] for k in ("event_id", "account_id", "started_at")} | {"round": k}
            for k, (calls, _) in enumerate(plan.rounds)
            for c in calls
        ],
        "control": [
            {"topic": c.topic, "record": c.record, "named": c.partition, "partition": partition.get(id(c))}
            | {"round": next((k for k, (_, its) in enumerate(plan.rounds) if c in its), -1)}
            for c in plan.control
        ],
    }
    path.write_text(json.dumps(doc, indent=0))


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("carriers")
    prefix = f"cp{random.randrange(1 << 30):x}."
    create_topics(kafka_bootstrap, prefix)
    start = int(time.time() * 1000) - 3 * HOUR
    plan = plan_traffic(8, start, 2 * HOUR)
    feed = ControlFeed(kafka_bootstrap, prefix, plan.bounds[0])
    for item in plan.backlog:
        feed.send(item)
    feed.flush()

    lake = tmp / "lake"
    journal: list[Any] = []
    env = worker_env(tmp, kafka_bootstrap)
    logs = [tmp / f"worker{i}.log" for i in range(4)]
    workers = [start_worker(prefix, lake, env, log) for log in logs[:3]]
    try:
        wait_for_members(kafka_bootstrap, prefix + STREAM_GROUP, 3, timeout_s=120)
        feed.start()
        time.sleep(1)  # the heartbeat reaches every worker before the first call
        half = ROUNDS // 2
        produce_rounds(kafka_bootstrap, prefix, plan, feed, range(half), journal)
        victim = workers[1]
        wait_for_log(logs[1], "landed calls.raw", 60, victim)

        def kill_and_replace() -> None:
            """While the victim holds calls of the round that wait for their control events."""
            stop(victim, signal.SIGKILL)
            journal.append((time.time(), half, "worker1 killed"))
            workers.append(start_worker(prefix, lake, env, logs[3]))

        produce_rounds(kafka_bootstrap, prefix, plan, feed, range(half, ROUNDS), journal, kill_and_replace)
        feed.bound = plan.bounds[-1] + HOUR
        wait_for_events(lake, len(plan.calls), 150)
        feed.close()
        time.sleep(2)  # a range landed twice (a replay after the kill) would show in the checks below
        for proc in (workers[0], workers[2], workers[3]):
            assert proc.poll() is None, f"a worker exited with {proc.returncode}; logs in {tmp}"
    finally:
        feed.close()
        for proc in workers:
            stop(proc)
        write_journal(tmp / "journal.json", plan, feed, journal)
    return {
        "plan": plan,
        "feed": feed,
        "lake": lake,
        "stats": read_stats(lake),
        "logs": logs,
        "dlq": consume_all(kafka_bootstrap, prefix + DLQ),
        "victim_rc": victim.returncode,
        "tmp": tmp,
    }


def states_of(control: list[Control]) -> dict[str, AccountState]:
    states: dict[str, AccountState] = {}
    for item in control:
        account = item.record["account_id"]
        apply = record_consent if item.topic == CONSENT else record_request
        states[account] = apply(states.get(account), item.record)
    return states


def test_the_traffic_crosses_partitions_and_arrives_after_the_calls(run: dict[str, Any]) -> None:
    """What makes the run worth anything: control events that no co-partitioned worker would
    see beside their calls, and calls whose outcome depends on control produced after them."""
    plan: Plan = run["plan"]
    delivered = run["feed"].delivered
    assert len(delivered) == len(plan.control)  # each once (the clock aside)
    by_librdkafka = [(c, p) for c, p in delivered if c.partition is None]
    moved = [
        c
        for c, p in by_librdkafka
        if p != partition_for(c.record["account_id"].encode(), PARTITIONS[c.topic])
    ]
    assert len(moved) > len(by_librdkafka) // 4, "librdkafka's partitioner agreed with murmur2"
    assert any(c.partition is not None for c, _ in delivered)
    assert {c.topic for c, _ in delivered} == {CONSENT, REQUESTS}

    full = states_of(plan.control)
    known = list(plan.backlog)
    late = 0
    for calls, items in plan.rounds:  # what the workers could know when a round's calls arrived
        then = states_of(known)
        for call in calls:
            account, at = call["account_id"], call["started_at"]
            policy = DEFAULT_POLICY.consent
            late += decide(then.get(account), at, policy) != decide(full.get(account), at, policy)
        known += items
    assert late > 0, "no call depends on a control event produced after it"


def test_every_event_is_accounted_for_once(run: dict[str, Any]) -> None:
    stats, lake = run["stats"], run["lake"]
    calls = run["plan"].calls
    vault = zone(lake, "vault")
    dead = stats.dead
    assert stats.events_in == len(calls)
    assert stats.events_in == len(vault) + dead + stats.drops.get("erased", 0)
    assert dead == 0  # every call and every control event was valid
    assert run["dlq"] == []
    for name in ("vault", "analytics"):
        ids = Counter(r["event_id"] for r in zone(lake, name))
        assert [i for i, n in ids.items() if n > 1] == [], f"duplicates in {name}"
    assert len(vault) == stats.written["vault"]


def test_every_rule_holds_for_every_call_of_every_account(run: dict[str, Any]) -> None:
    """decide() at the call's time against the whole history: erased accounts are absent,
    restricted and objected calls stay in the vault, recordings and transcripts only with
    consent, in both zones."""
    plan: Plan = run["plan"]
    states = states_of(plan.control)
    vault = {r["event_id"]: r for r in zone(run["lake"], "vault")}
    analytics = {r["event_id"]: r for r in zone(run["lake"], "analytics")}
    wrong: list[str] = []
    seen: Counter[str] = Counter()

    def check(call: dict[str, Any], what: str, expected: object, got: object) -> None:
        if expected != got:
            row = vault.get(call["event_id"]) or {}
            at = f"p{row.get('source_partition')}@{row.get('source_offset')}" if row else "not landed"
            wrong.append(
                f"{call['event_id']} {call['account_id']} ({at}) {what}: expected {expected}, got {got}"
            )

    for call in plan.calls:
        d = decide(states.get(call["account_id"]), call["started_at"], DEFAULT_POLICY.consent)
        row, public = vault.get(call["event_id"]), analytics.get(call["event_id"])
        check(call, "in vault", not d.erased, row is not None)
        check(call, "in analytics", not d.erased and d.analytics and not d.restricted, public is not None)
        if d.erased:
            seen["erased"] += 1
            continue
        seen["restricted" if d.restricted else "objected" if not d.analytics else "analytics"] += 1
        recorded = call["recording_uri"] is not None
        transcribed = call["transcript"] is not None
        if recorded:
            seen["recording_kept" if d.recording else "recording_dropped"] += 1
        if transcribed:
            seen["transcript_kept" if d.transcription else "transcript_dropped"] += 1
        if row is not None:
            check(call, "vault recording", recorded and d.recording, row["recording_uri"] is not None)
            check(call, "vault transcript", transcribed and d.transcription, row["transcript"] is not None)
        if public is not None:
            check(call, "analytics has_recording", recorded and d.recording, public["has_recording"])
            check(
                call,
                "analytics transcript",
                transcribed and d.transcription,
                public["transcript"] is not None,
            )
    evidence = f"worker logs and journal.json in {run['tmp']}"
    assert wrong == [], f"{len(wrong)} wrong ({evidence}): " + "; ".join(wrong[:20])
    for rule in (
        "erased",
        "restricted",
        "objected",
        "analytics",
        "recording_kept",
        "recording_dropped",
        "transcript_kept",
        "transcript_dropped",
    ):
        assert seen[rule] > 0, f"the traffic never exercised {rule}"


def test_three_workers_shared_the_calls_and_one_was_killed_mid_stream(run: dict[str, Any]) -> None:
    assert run["victim_rc"] == -signal.SIGKILL
    for log in run["logs"][:3]:
        assert "landed calls.raw" in log.read_text(), f"{log.name} took no part before the kill"
    assert "control state ready" in run["logs"][3].read_text(), "the replacement never got ready"
