"""`callpipe bench dlq`: what sealing dead letters costs (docs/BENCHMARKS.md).

The same hostile messages (pipeline.carrier.generate.generate_bad_messages: truncated JSON and
Avro, unknown schema ids, wrong types, missing fields, unknown enums, all full of personal data)
are dead-lettered through the worker's own path (`pipeline.stream.app.KafkaBroker.send_dead`,
then `dead_sent`, acknowledged by the broker) into one calls.dlq, in alternating rounds: sealed
to an operator key, and in plaintext as before sealing existed. The figure is the ratio of the
two rates in the same run, beside the seal's own cost per message measured without the broker.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from pipeline.bench import kafka
from pipeline.bench.common import BenchError, table
from pipeline.carrier.generate import generate_bad_messages
from pipeline.kafka_access import OPERATOR, WORKER, KafkaAccess
from pipeline.reasons import Rejection, Stage
from pipeline.sealed import OperatorPublicKey, Sealer, keygen
from pipeline.settings import Settings
from pipeline.stream.app import KafkaBroker, dead_letter_producer, dlq_limit
from schemas.topics import CALLS, DLQ

ROUNDS = 3
CHUNK = 2_000  # dead letters sent between two waits for their acknowledgements


class _Plain:
    """Dead letters as they were before sealing: the original bytes and key as they came."""

    def seal(self, raw: bytes, key: bytes | None, **_coords: Any) -> tuple[bytes, list[tuple[str, bytes]]]:
        return raw, []


async def _round(access: KafkaAccess, topic: str, sealer: Any, dead: list[Rejection]) -> float:
    limit = await dlq_limit(access, topic)
    producer = dead_letter_producer(access, limit)
    consumer = AIOKafkaConsumer(**access.aiokafka())  # not started: send_dead does not use it
    await producer.start()
    try:
        broker = KafkaBroker(consumer, producer, CALLS, topic, sealer)
        await broker.start(limit)
        started = time.perf_counter()
        refused = []
        for i, d in enumerate(dead, 1):
            broker.send_dead(d, b"A0001", CALLS)
            if i % CHUNK == 0:  # the worker waits for its dead letters at every flush
                refused += await broker.dead_sent()
        refused += await broker.dead_sent()
        took = time.perf_counter() - started
        if refused:
            raise BenchError(
                f"the broker refused {len(refused)} dead letters ({type(refused[0][3]).__name__})"
            )
        return took
    finally:
        await producer.stop()
        await consumer.stop()


def run(settings: Settings, quick: bool) -> dict[str, Any]:
    access = settings.kafka(WORKER)
    kafka.probe(settings.kafka(OPERATOR))
    n = 2_000 if quick else 20_000
    bad = generate_bad_messages(41, n)
    dead = [Rejection(b.reason, Stage.DECODE, i % 4, i, None, b.value) for i, b in enumerate(bad)]
    dead = [d for d in dead if d.raw]  # an empty message has nothing to seal
    with tempfile.TemporaryDirectory(prefix="callpipe-bench-dlq-") as tmp:
        keygen(Path(tmp) / "op.key", Path(tmp) / "op.pub")
        public = OperatorPublicKey.load(Path(tmp) / "op.pub")
    prefix = f"benchdlq{uuid.uuid4().hex[:8]}."
    kafka.make_topics(settings, prefix)
    try:
        plain: list[float] = []
        sealed: list[float] = []
        for _ in range(ROUNDS):
            plain.append(asyncio.run(_round(access, prefix + DLQ, _Plain(), dead)))
            sealed.append(asyncio.run(_round(access, prefix + DLQ, Sealer(public), dead)))
    finally:
        kafka.delete_topics(settings.kafka(OPERATOR), prefix)
    sealer = Sealer(public)
    started = time.perf_counter()
    for d in dead:
        sealer.seal(d.raw, b"A0001", topic=CALLS, partition=d.partition, offset=d.offset, index=None)
    seal_s = time.perf_counter() - started
    best_plain, best_sealed = min(plain), min(sealed)
    size = sum(len(d.raw) for d in dead) / len(dead)
    return {
        "bench": "dlq",
        "quick": quick,
        "dead_letters": len(dead),
        "mean_bytes": round(size),
        "plain_per_s": round(len(dead) / best_plain),
        "sealed_per_s": round(len(dead) / best_sealed),
        "sealed_over_plain": round(best_plain / best_sealed, 3),
        "seal_us_per_message": round(seal_s / len(dead) * 1e6, 1),
        "data_keys": sealer.data_keys,
        "rounds": ROUNDS,
    }


def render(f: dict[str, Any]) -> str:
    rows = [
        ["plaintext (before sealing)", f["plain_per_s"], "1.000"],
        ["sealed to the operator key", f["sealed_per_s"], f"{f['sealed_over_plain']:.3f}"],
    ]
    return (
        f"dead letters to calls.dlq through the worker's path, acknowledged: {f['dead_letters']} hostile "
        f"messages of {f['mean_bytes']} bytes on average, best of {f['rounds']} alternating rounds\n"
        + table(["dead letters", "per s", "rate vs plaintext"], rows)
        + f"\nsealing alone: {f['seal_us_per_message']} us per message ({f['data_keys']} data keys)"
    )
