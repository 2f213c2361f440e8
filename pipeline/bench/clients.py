"""`python -m pipeline.bench.clients [N]`: the raw consume rate of the Kafka clients the worker can
use, same run, same topic, as the worker principal over the broker's listener (SASL_SSL by default).

N single-event-sized messages (~400 bytes) go to a fresh prefixed calls topic; then each client
reads all of them from the beginning (partitions assigned, no group), touching every value, in
turns (aiokafka, confluent-kafka, confluent-kafka's AIOConsumer, then again): rate = messages /
(last message - first message). Nothing is decoded: this is the client's own cost, the ceiling
under the worker's and the passthrough's (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

from pipeline.bench import kafka
from pipeline.kafka_access import CARRIER, OPERATOR, WORKER, KafkaAccess
from pipeline.settings import Settings
from schemas.topics import CALLS

VALUE_BYTES = 400
TAKE = 20_000


def _produce(access: KafkaAccess, topic: str, partitions: int, n: int) -> None:
    from confluent_kafka import Producer

    producer = Producer({**access.librdkafka(), "linger.ms": 20, "batch.size": 1 << 20, "acks": "all"})
    value = os.urandom(VALUE_BYTES // 2).hex().encode()
    for i in range(n):
        while True:
            try:
                producer.produce(topic, value=value, key=str(i).encode(), partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("messages left unsent")


async def _aiokafka(access: KafkaAccess, topic: str, partitions: int, n: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        **access.aiokafka(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        seen = size = 0
        first = 0.0
        while seen < n:
            batches = await consumer.getmany(timeout_ms=250, max_records=TAKE)
            for messages in batches.values():
                if not first and messages:
                    first = time.perf_counter()
                seen += len(messages)
                size += sum(len(m.value or b"") for m in messages)
        return n / (time.perf_counter() - first)
    finally:
        await consumer.stop()


def _config(access: KafkaAccess, topic: str) -> dict[str, Any]:
    return {
        **access.librdkafka(),
        "group.id": topic + ".probe",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
    }


def _confluent(access: KafkaAccess, topic: str, partitions: int, n: int) -> float:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(_config(access, topic))
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        seen = size = 0
        first = 0.0
        while seen < n:
            messages = consumer.consume(num_messages=TAKE, timeout=0.25)
            if not first and messages:
                first = time.perf_counter()
            for m in messages:
                if m.error() is None:
                    seen += 1
                    size += len(m.value() or b"")
        return n / (time.perf_counter() - first)
    finally:
        consumer.close()


async def _aio(access: KafkaAccess, topic: str, partitions: int, n: int) -> float:
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition
    from confluent_kafka.aio import AIOConsumer

    consumer = AIOConsumer(_config(access, topic), max_workers=2)
    try:
        await consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        seen = size = 0
        first = 0.0
        while seen < n:
            messages = await consumer.consume(num_messages=TAKE, timeout=0.25)
            if not first and messages:
                first = time.perf_counter()
            for m in messages:
                if m.error() is None:
                    seen += 1
                    size += len(m.value() or b"")
        return n / (time.perf_counter() - first)
    finally:
        await consumer.close()


def run(settings: Settings, n: int, rounds: int = 2) -> dict[str, Any]:
    kafka.probe(settings.kafka(OPERATOR))
    prefix = f"cpclients{uuid.uuid4().hex[:8]}."
    topic = prefix + CALLS
    try:
        kafka.make_topics(settings, prefix)
        _produce(settings.kafka(CARRIER), topic, settings.partitions, n)
        access = settings.kafka(WORKER)
        figures: dict[str, list[int]] = {"aiokafka_getmany": [], "confluent_consume": [], "confluent_aio": []}
        for _ in range(rounds):
            figures["aiokafka_getmany"].append(
                round(asyncio.run(_aiokafka(access, topic, settings.partitions, n)))
            )
            figures["confluent_consume"].append(round(_confluent(access, topic, settings.partitions, n)))
            figures["confluent_aio"].append(round(asyncio.run(_aio(access, topic, settings.partitions, n))))
        best = {k: max(v) for k, v in figures.items()}
        return {
            "bench": "clients",
            "messages": n,
            "value_bytes": VALUE_BYTES,
            "partitions": settings.partitions,
            "security": settings.kafka_security,
            "messages_per_s": figures,
            "confluent_over_aiokafka": round(best["confluent_consume"] / best["aiokafka_getmany"], 2),
            "aio_over_aiokafka": round(best["confluent_aio"] / best["aiokafka_getmany"], 2),
        }
    finally:
        kafka.delete_topics(settings.kafka(OPERATOR), prefix)


if __name__ == "__main__":
    print(json.dumps(run(Settings.from_env(), int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)))
