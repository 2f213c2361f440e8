"""privacy.requests for the jobs: read by `callpipe jobs requests`, without a consumer group, and
written by `callpipe jobs erase --account ID`, which tells the stream workers of a direct erasure.

The ledger, not Kafka, remembers how far it has read (`jobs.ledger.read_position`). A pass
assigns itself every partition of the topic, takes the end offsets at its start, seeks each
partition to the recorded position (or the earliest offset still kept, if retention has passed
it) and reads up to those end offsets: requests produced during the pass wait for the next one.
Messages that are not PrivacyRequests are counted, never quoted (the stream worker sends them to
the dead-letter topic).

`announcer` publishes one PrivacyRequest the way carriers do (Confluent Avro, keyed by account
id: pipeline/carrier/produce.py), acknowledged by every in-sync replica before it returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from jobs.requests_intake import Batch, Reader
from pipeline import codec
from pipeline.carrier.produce import ProduceError, Shipment, publish
from pipeline.kafka_access import AccessError, KafkaAccess
from pipeline.kafka_metadata import topic_partitions
from schemas.topics import REQUESTS

TOPIC = REQUESTS


class TopicUnavailable(RuntimeError):
    """The broker or the topic cannot be reached (the message names the topic, nothing else)."""


async def _read(access: KafkaAccess, topic: str, position: dict[int, int], timeout_s: float) -> Batch:
    try:
        connect = access.aiokafka()
    except AccessError as exc:
        raise TopicUnavailable(str(exc)) from None
    consumer = AIOKafkaConsumer(
        **connect, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        await consumer.start()
    except Exception as exc:
        raise TopicUnavailable(f"cannot reach the broker to read {topic} ({type(exc).__name__})") from None
    try:
        # Read fresh at every pass: a partition added since the last pass is read from its start.
        partitions = (await topic_partitions(access, [topic])).get(topic)
        if not partitions:
            raise TopicUnavailable(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        begin = await consumer.beginning_offsets(tps)
        todo = {}
        for tp in tps:
            start = max(position.get(tp.partition, 0), begin[tp])
            if start < end[tp]:
                consumer.seek(tp, start)
                todo[tp] = end[tp]
        messages = []
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise TopicUnavailable(f"timed out reading {topic} up to its end offsets")
            got = await consumer.getmany(*todo, timeout_ms=500)
            for tp, batch in got.items():
                messages += [m for m in batch if m.offset < todo.get(tp, -1)]
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
                    consumer.pause(tp)
        decoded = codec.decode_batch(messages, "PrivacyRequest")
        new_position = {tp.partition: max(position.get(tp.partition, 0), end[tp]) for tp in tps}
        return Batch(
            records=decoded.records,
            source="topic",
            topic=topic,
            position=new_position,
            rejected=len({(r.partition, r.offset) for r in decoded.rejections}),
        )
    finally:
        await consumer.stop()


def reader(access: KafkaAccess, topic: str = TOPIC, timeout_s: float = 120.0) -> Reader:
    """A `jobs.requests.Reader` over the topic."""

    def read(position: dict[int, int]) -> Batch:
        return asyncio.run(_read(access, topic, position, timeout_s))

    return read


Announcer = Callable[[dict[str, Any]], None]  # one PrivacyRequest -> published, or TopicUnavailable


def announcer(access: KafkaAccess, topic: str = TOPIC, timeout_s: float = 20.0) -> Announcer:
    """Publish one PrivacyRequest to the topic; raises `TopicUnavailable` (naming the topic and the
    exception type, never a value) when the broker or the topic cannot take it."""

    def announce(request: dict[str, Any]) -> None:
        shipment = Shipment(topic=topic, record_name="PrivacyRequest", records=[request])
        try:
            asyncio.run(publish(access, [shipment], timeout_s=timeout_s))
        except AccessError as exc:
            raise TopicUnavailable(str(exc)) from None
        except ProduceError as exc:
            raise TopicUnavailable(f"cannot publish to {topic}: {exc}") from None

    return announce
