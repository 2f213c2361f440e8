"""The stream baseline: the least a consumer must do to move calls from Kafka to Parquet.

aiokafka batch consume (getmany), decode with pipeline.codec (batch-wise), one Arrow table per
partition and flush, Parquet (zstd, statistics) written to a temp file, fsynced and renamed. No
validation beyond decoding, no consent, no pseudonymization, no detection, no buckets or zones,
no consumer group (partitions assigned, offsets not committed): the ceiling a Python consumer on
this machine allows, measured in the same run on the same topic as the worker.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import codec
from pipeline.bench.common import BenchError
from pipeline.kafka_access import KafkaAccess

DEVICE = pa.struct(
    [
        ("device_id", pa.string()),
        ("device_type", pa.string()),
        ("os", pa.string()),
        ("app_version", pa.string()),
    ]
)
RAW_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("account_id", pa.string()),
        ("org_id", pa.string()),
        ("carrier_id", pa.string()),
        ("kind", pa.string()),
        ("direction", pa.string()),
        ("caller", pa.string()),
        ("callee", pa.string()),
        ("started_at", pa.int64()),
        ("answered_at", pa.int64()),
        ("ended_at", pa.int64()),
        ("duration_s", pa.int64()),
        ("status", pa.string()),
        ("cell_id", pa.string()),
        ("caller_ip", pa.string()),
        ("device", DEVICE),
        ("recording_uri", pa.string()),
        ("transcript", pa.string()),
        ("attributes", pa.map_(pa.string(), pa.string())),
    ]
)


@dataclass(frozen=True)
class Commit:
    """One durable range: what a flush landed and when (wall clock, seconds)."""

    source: str
    first: int
    last: int
    at: float
    events: int


@dataclass
class _Buffer:
    first: int = -1
    last: int = -1
    since: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class PassthroughResult:
    first_consume: float  # wall clock of the first non-empty fetch
    commits: tuple[Commit, ...]
    events: int


def _write(records: list[dict[str, Any]], path: Path) -> None:
    table = pa.Table.from_pylist(records, schema=RAW_SCHEMA)
    temp = path.with_name("." + path.name + ".tmp")
    pq.write_table(table, temp, compression="zstd", write_statistics=True)
    fd = os.open(temp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


async def _consume(
    access: KafkaAccess,
    topic: str,
    partitions: int,
    expected: int,
    out: Path,
    flush_rows: int,
    flush_seconds: float,
    timeout_s: float,
) -> PassthroughResult:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        **access.aiokafka(),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=50 * 1024 * 1024,
    )
    await consumer.start()
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    buffers: dict[int, _Buffer] = {}
    commits: list[Commit] = []
    first_consume = 0.0
    landed = consumed = 0
    deadline = time.monotonic() + timeout_s

    async def flush(partition: int, buf: _Buffer) -> None:
        nonlocal landed
        if buf.last < buf.first or buf.first < 0:
            return
        _write(buf.records, out / f"p{partition:03d}-o{buf.first:012d}-o{buf.last:012d}.parquet")
        commits.append(Commit(f"p{partition:03d}", buf.first, buf.last, time.time(), len(buf.records)))
        landed += len(buf.records)
        buffers[partition] = _Buffer()

    try:
        while landed < expected:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the passthrough consumer landed {landed} of {expected} events in {timeout_s:.0f}s"
                )
            fetched = await consumer.getmany(timeout_ms=100, max_records=10_000)
            now = time.monotonic()
            for tp, messages in fetched.items():
                if not messages:
                    continue
                if not first_consume:
                    first_consume = time.time()
                decoded = codec.decode_batch(messages, "CallEvent")
                buf = buffers.setdefault(tp.partition, _Buffer())
                if buf.first < 0:
                    buf.first, buf.since = messages[0].offset, now
                buf.last = messages[-1].offset
                buf.records.extend(decoded.records)
                consumed += len(decoded.records)
            end_of_input = consumed >= expected  # the baseline knows N: no flush-timer wait at the end
            for partition, buf in list(buffers.items()):
                if buf.records and (
                    end_of_input or len(buf.records) >= flush_rows or now - buf.since >= flush_seconds
                ):
                    await flush(partition, buf)
    finally:
        await consumer.stop()
    return PassthroughResult(first_consume, tuple(commits), landed)


def run_passthrough(
    access: KafkaAccess,
    topic: str,
    partitions: int,
    expected: int,
    out: Path,
    *,
    flush_rows: int,
    flush_seconds: float,
    timeout_s: float = 900.0,
) -> PassthroughResult:
    """Consume `expected` events of `topic` into Parquet files under `out`; every buffer is flushed
    as soon as the last event is consumed."""
    out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(
        _consume(access, topic, partitions, expected, out, flush_rows, flush_seconds, timeout_s)
    )
