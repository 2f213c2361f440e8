"""The broker side of the stream benchmark: probe, fresh prefixed topics, preload, paced producer,
clean-up. Nothing is started here: the broker is the one CALLPIPE_BOOTSTRAP names."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.bench.common import BenchError
from pipeline.kafka_access import ADMIN, OPERATOR, KafkaAccess
from pipeline.settings import Settings


async def _probe(access: KafkaAccess, timeout_s: float) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**access.aiokafka(), request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    finally:
        await admin.close()


def probe(access: KafkaAccess, timeout_s: float = 10.0) -> None:
    """Raise BenchError (one line) when no broker answers `access`."""
    import logging

    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        asyncio.run(_probe(access, timeout_s))
    except Exception as exc:
        raise BenchError(
            f"no Kafka broker answers at {access.bootstrap} to {access.user} over {access.security}"
            f" ({type(exc).__name__}); "
            "set CALLPIPE_BOOTSTRAP or start one with `callpipe kafka up`"
        ) from None
    finally:
        quiet.setLevel(level)


def make_topics(settings: Settings, prefix: str) -> None:
    """Fresh topics as the operator; the roles' ACLs on them from the admin (the broker's owner)."""
    from infra.security import grant
    from infra.topics import create_topics

    asyncio.run(create_topics(settings.kafka(OPERATOR), settings.partitions, prefix))
    if settings.kafka_security == "sasl_ssl":
        grant(settings.kafka(ADMIN), prefix)


async def _delete(access: KafkaAccess, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**access.aiokafka(), request_timeout_ms=15_000)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def delete_topics(access: KafkaAccess, prefix: str) -> None:
    """Remove the benchmark's topics (and faust's changelogs under the same prefix); best effort."""
    with contextlib.suppress(Exception):
        asyncio.run(_delete(access, prefix))


@dataclass(frozen=True)
class Sent:
    """Single-event messages of one send: base offset and each message's produce time (ms)."""

    partition: int
    base_offset: int
    produced_ms: tuple[int, ...]


Message = tuple[bytes | None, bytes, int]  # key, value, partition


async def _paced(
    access: KafkaAccess,
    topic: str,
    messages: Sequence[Message],
    headers: list[tuple[str, bytes]],
    rate: float,
    seconds: float,
    on_tick: Callable[[float], None],
) -> list[Sent]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**access.aiokafka(), linger_ms=0, acks=1, max_batch_size=1 << 20)
    await producer.start()
    pending: list[tuple[int, Any, list[int]]] = []
    try:
        started = time.perf_counter()
        sent = 0
        i = 0
        while True:
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
            on_tick(elapsed)
            due = int(elapsed * rate) - sent
            batches: dict[int, tuple[Any, list[int]]] = {}
            for _ in range(max(0, due)):
                key, value, partition = messages[i % len(messages)]
                i += 1
                now_ms = int(time.time() * 1000)
                batch, stamps = batches.get(partition) or batches.setdefault(
                    partition, (producer.create_batch(), [])
                )
                if batch.append(key=key, value=value, timestamp=now_ms, headers=headers) is None:
                    pending.append(
                        (partition, await producer.send_batch(batch, topic, partition=partition), stamps)
                    )
                    batch, stamps = batches[partition] = (producer.create_batch(), [])
                    batch.append(key=key, value=value, timestamp=now_ms, headers=headers)
                stamps.append(now_ms)
            for partition, (batch, stamps) in batches.items():
                pending.append(
                    (partition, await producer.send_batch(batch, topic, partition=partition), stamps)
                )
            sent += max(0, due)
            await asyncio.sleep(0.01)
        out = []
        for partition, future, stamps in pending:
            meta = await future
            out.append(Sent(partition, meta.offset, tuple(stamps)))
        return out
    finally:
        await producer.stop()


def produce_paced(
    access: KafkaAccess,
    topic: str,
    messages: Sequence[Message],
    headers: list[tuple[str, bytes]],
    *,
    rate: float,
    seconds: float,
    on_tick: Callable[[float], None],
) -> list[Sent]:
    """Send single-event messages at `rate` per second for `seconds`, each stamped with its send
    time (the Kafka record timestamp); `on_tick(elapsed)` is called about every 10 ms."""
    return asyncio.run(_paced(access, topic, messages, headers, rate, seconds, on_tick))
