"""`callpipe produce` against the real broker: every event produced is read back, decoded, equal."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra import security
from pipeline import cli, codec
from pipeline.carrier import generate
from pipeline.carrier.produce import Shipment, partition_for, plan_messages, publish
from pipeline.codec import Decoded
from pipeline.kafka_access import ADMIN, CARRIER, OPERATOR
from schemas import topics
from tests.support.streamkit import access

pytestmark = pytest.mark.integration

SEED = 21
START = "2026-01-01"
START_MS = 1_767_225_600_000
PARTITIONS = 4
COUNT = 100_000


@pytest.fixture(scope="module")
def hundred_thousand() -> list[dict[str, Any]]:
    accounts = generate.generate_accounts(SEED, generate.DEFAULT_ACCOUNTS)
    return generate.generate_calls(SEED, COUNT, START_MS, generate.DAY_MS, accounts=accounts)


@pytest.fixture
def env(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The broker's address, in the environment `callpipe` reads; test topics are deleted after."""
    monkeypatch.setenv("CALLPIPE_BOOTSTRAP", kafka_bootstrap)
    created.clear()
    yield kafka_bootstrap
    if created:
        asyncio.run(_admin(kafka_bootstrap, lambda admin: admin.delete_topics(list(created))))
        created.clear()


created: list[str] = []


async def _admin(bootstrap: str, action: Any) -> None:
    admin = AIOKafkaAdminClient(**access(OPERATOR, bootstrap).aiokafka())
    await admin.start()
    try:
        await action(admin)
    finally:
        await admin.close()


def _create(bootstrap: str, *topics: str) -> None:
    created.extend(topics)
    asyncio.run(
        _admin(bootstrap, lambda admin: admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics]))
    )
    # `callpipe produce` runs as the carrier: it may write these topics, read none of them.
    for topic in topics:
        security.allow(access(ADMIN, bootstrap), CARRIER, topic, ("WRITE", "DESCRIBE"))


async def _read_all(bootstrap: str, topic: str, record_name: str) -> tuple[Decoded, list[Any]]:
    """Every message on the topic (up to its end offsets at call time), decoded batch-wise."""
    consumer = AIOKafkaConsumer(
        **access(ADMIN, bootstrap).aiokafka(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out = Decoded()
        messages: list[Any] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in parts])

        while await behind():
            batches = await consumer.getmany(timeout_ms=2000, max_records=20_000)
            for msgs in batches.values():
                decoded = codec.decode_batch(msgs, record_name)
                out.records += decoded.records
                out.lineage += decoded.lineage
                out.rejections += decoded.rejections
                messages += msgs
        return out, messages
    finally:
        await consumer.stop()


def _produce(*argv: str) -> None:
    assert cli.main(["produce", *argv]) == 0


@pytest.mark.parametrize(("fmt", "batch_size"), [("avro", 1), ("avro", 500), ("json", 1), ("json", 500)])
def test_100k_events_read_back_equal(
    env: str, topic_prefix: str, fmt: str, batch_size: int, hundred_thousand: list[dict[str, Any]]
) -> None:
    topic = f"{topic_prefix}calls.raw"
    _create(env, topic)
    _produce(
        *("--count", str(COUNT), "--seed", str(SEED), "--start", START, "--topic", topic),
        *("--format", fmt, "--batch-size", str(batch_size)),
    )
    decoded, messages = asyncio.run(_read_all(env, topic, "CallEvent"))
    assert decoded.rejections == []
    assert len(decoded.records) == COUNT
    assert sorted(decoded.records, key=_event_id) == sorted(hundred_thousand, key=_event_id)
    assert len(messages) == (COUNT if batch_size == 1 else len({(m.partition, m.offset) for m in messages}))
    if batch_size > 1:
        assert len(messages) < 2 * COUNT / batch_size + PARTITIONS
    _check_partitioning(decoded, messages, batch_size, hundred_thousand)


def _event_id(rec: dict[str, Any]) -> str:
    return str(rec["event_id"])


def _check_partitioning(
    decoded: Decoded, messages: list[Any], batch_size: int, produced: list[dict[str, Any]]
) -> None:
    keys = {(m.partition, m.offset): m.key for m in messages}
    place = {a: partition_for(a.encode(), PARTITIONS) for a in {r["account_id"] for r in produced}}
    per_partition: dict[int, list[dict[str, Any]]] = {}
    for rec, (partition, offset, _index) in zip(decoded.records, decoded.lineage, strict=True):
        assert partition == place[rec["account_id"]]  # co-partitioned by account_id
        assert keys[(partition, offset)] == (rec["account_id"].encode() if batch_size == 1 else None)
        per_partition.setdefault(partition, []).append(rec)
    for partition, records in per_partition.items():
        expected = [r for r in produced if place[r["account_id"]] == partition]
        assert records == expected  # event order kept within each partition


def test_consents_requests_and_bad_messages_land_co_partitioned(env: str, topic_prefix: str) -> None:
    calls, consents, requests = (
        f"{topic_prefix}{t}" for t in (topics.CALLS, topics.CONSENT, topics.REQUESTS)
    )
    _create(env, calls, consents, requests)
    _produce(
        *("--count", "2000", "--seed", "5", "--start", START, "--accounts", "300", "--bad-share", "0.01"),
        *(
            "--topic",
            calls,
            "--consent",
            "--consent-topic",
            consents,
            "--requests",
            "--requests-topic",
            requests,
        ),
        *("--format", "json", "--batch-size", "20"),
    )
    traffic = generate.generate_traffic(5, 2000, START_MS, accounts=300)
    for topic, name, expected in (
        (consents, "ConsentEvent", traffic.consents),
        (requests, "PrivacyRequest", traffic.requests),
    ):
        decoded, _messages = asyncio.run(_read_all(env, topic, name))
        assert decoded.rejections == []
        assert sorted(map(repr, decoded.records)) == sorted(map(repr, expected))
        for rec, lineage in zip(decoded.records, decoded.lineage, strict=True):
            assert lineage.partition == partition_for(rec["account_id"].encode(), PARTITIONS)
    decoded, _messages = asyncio.run(_read_all(env, calls, "CallEvent"))
    bad = generate.generate_bad_messages(5, 20, START_MS)
    assert len(decoded.records) == 2000
    assert sorted(r.reason for r in decoded.rejections) == sorted(b.reason for b in bad)


def test_a_file_is_published_to_the_topic_of_its_records(env: str, topic_prefix: str, tmp_path: Path) -> None:
    topic = f"{topic_prefix}consent.events"
    _create(env, topic)
    consents = generate.generate_consents(8, generate.generate_accounts(8, 100), START_MS)
    path = tmp_path / "consents.avro"
    path.write_bytes(codec.encode_container(consents, "ConsentEvent"))
    _produce("--from", str(path), "--topic", topic)
    decoded, messages = asyncio.run(_read_all(env, topic, "ConsentEvent"))
    assert sorted(map(repr, decoded.records)) == sorted(map(repr, consents))
    assert {m.key for m in messages} == {c["account_id"].encode() for c in consents}


@pytest.mark.parametrize(
    ("bootstrap", "topic", "needle"),
    [
        ("127.0.0.1:1", topics.CALLS, "cannot reach Kafka at 127.0.0.1:1"),
        (None, "no-such-topic-for-callpipe", "topic no-such-topic-for-callpipe does not exist"),
    ],
)
def test_unreachable_broker_or_missing_topic_is_one_line(
    env: str,
    bootstrap: str | None,
    topic: str,
    needle: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if bootstrap:
        monkeypatch.setenv("CALLPIPE_BOOTSTRAP", bootstrap)
    assert cli.main(["produce", "--count", "10", "--topic", topic]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_shipments_to_one_topic_are_summed_in_the_summary(env: str, topic_prefix: str) -> None:
    """The demo sends its calls in two shipments (Avro with bad messages mixed in, then JSON):
    the line it prints must count both, as the lake does."""
    topic = f"{topic_prefix}{topics.CALLS}"
    _create(env, topic)
    calls = generate.generate_calls(
        9, 300, START_MS, generate.DAY_MS, accounts=generate.generate_accounts(9, 50)
    )
    bad = generate.generate_bad_messages(9, 4, START_MS)
    summary = asyncio.run(
        publish(
            access(CARRIER, env),
            [
                Shipment(topic, "CallEvent", calls[:100], bad=bad),
                Shipment(topic, "CallEvent", calls[100:], fmt="json", batch_size=50),
            ],
        )
    )
    batches = plan_messages(calls[100:], "CallEvent", "json", 50, PARTITIONS)  # a batch per partition
    assert summary.topics == {topic: [300, 100 + len(bad) + len(batches), len(bad)]}
    decoded, _messages = asyncio.run(_read_all(env, topic, "CallEvent"))
    assert len(decoded.records) == summary.events == 300
