"""Reading privacy.requests for `callpipe jobs requests`, without a consumer group.

The ledger, not Kafka, remembers how far it has read (`jobs.ledger.read_position`). A pass
assigns itself every partition of the topic, takes the end offsets at its start, seeks each
partition to the recorded position (or the earliest offset still kept, if retention has passed
it) and reads up to those end offsets: requests produced during the pass wait for the next one.
Messages that are not PrivacyRequests are counted, never quoted (the stream worker sends them to
the dead-letter topic).
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from jobs.requests import Batch, Reader
from pipeline import codec
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
