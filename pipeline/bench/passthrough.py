"""The stream baseline: the least a consumer must do to move calls from Kafka to Parquet.

aiokafka batch consume (getmany) or confluent-kafka's (librdkafka) `consume`, the faster of the
two in each run counting as the baseline; decode with pipeline.codec (batch-wise), one Arrow table per
partition and flush, Parquet (zstd, statistics) written to a temp file, fsynced and renamed. No
validation beyond decoding, no consent, no pseudonymization, no detection, no buckets or zones,
no consumer group (partitions assigned, offsets not committed): the ceiling a Python consumer on
this machine allows, measured in the same run on the same topic as the worker.

With `columns=True` the same consumer decodes the Avro messages straight into Arrow columns
(`pipeline.native_rows`, as the worker does since 2 December) and writes those: the ceiling
with callpipe's fastest decoder, measured beside the baseline above (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import codec
from pipeline.bench.common import BenchError
from pipeline.kafka_access import KafkaAccess
from pipeline.native_rows import RowColumns, row_columns

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
    columns: RowColumns | None = None  # `columns=True`: the events decoded straight into columns

    @property
    def events(self) -> int:
        return len(self.records) + (len(self.columns) if self.columns is not None else 0)


@dataclass(frozen=True)
class PassthroughResult:
    first_consume: float  # wall clock of the first non-empty fetch
    commits: tuple[Commit, ...]
    events: int


def _table(buf: _Buffer) -> pa.Table:
    """The buffer's events as one table: the decoded dicts converted, or the columns (with the
    dicts of any message they did not take, converted to their schema)."""
    if buf.columns is None:
        return pa.Table.from_pylist(buf.records, schema=RAW_SCHEMA)
    table = buf.columns.take(len(buf.columns))
    if buf.records:
        table = pa.concat_tables([table, pa.Table.from_pylist(buf.records, schema=table.schema)])
    return table


def _write(table: pa.Table, path: Path) -> None:
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


class _Sink:
    """What both clients' loops share: decode batch-wise, buffer per partition, flush by rows or
    age (and everything at once when the last event is in)."""

    def __init__(
        self, out: Path, expected: int, flush_rows: int, flush_seconds: float, columns: bool = False
    ) -> None:
        self.out, self.expected, self.columns = out, expected, columns
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.buffers: dict[int, _Buffer] = {}
        self.commits: list[Commit] = []
        self.first_consume = 0.0
        self.landed = self.consumed = 0

    def take(self, partition: int, messages: list[Any], now: float) -> None:
        if not messages:
            return
        if not self.first_consume:
            self.first_consume = time.time()
        buf = self.buffers.setdefault(partition, _Buffer())
        if buf.first < 0:
            buf.first, buf.since = messages[0].offset, now
        buf.last = messages[-1].offset
        before = buf.events
        if self.columns:
            if buf.columns is None:
                buf.columns = row_columns("CallEvent")
                if buf.columns is None:
                    raise BenchError("the native decoder is not built: no columns to decode into")
            cols = buf.columns
            messages = [
                m
                for m in messages
                if cols.append_message(m.value, m.headers) is None  # as the worker takes them
            ]
        buf.records.extend(codec.decode_batch(messages, "CallEvent").records)
        self.consumed += buf.events - before

    def flush_due(self, now: float) -> None:
        end_of_input = self.consumed >= self.expected  # the baseline knows N: no flush-timer wait
        for partition, buf in list(self.buffers.items()):
            events = buf.events
            if events and (
                end_of_input or events >= self.flush_rows or now - buf.since >= self.flush_seconds
            ):
                name = f"p{partition:03d}-o{buf.first:012d}-o{buf.last:012d}.parquet"
                _write(_table(buf), self.out / name)
                self.commits.append(Commit(f"p{partition:03d}", buf.first, buf.last, time.time(), events))
                self.landed += events
                self.buffers[partition] = _Buffer(columns=buf.columns)

    def check(self, deadline: float, timeout_s: float) -> None:
        if time.monotonic() > deadline:
            raise BenchError(
                f"the passthrough consumer landed {self.landed} of {self.expected} events in {timeout_s:.0f}s"
            )

    def result(self) -> PassthroughResult:
        return PassthroughResult(self.first_consume, tuple(self.commits), self.landed)


async def _consume_aiokafka(
    access: KafkaAccess, topic: str, partitions: Sequence[int], sink: _Sink, timeout_s: float
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
    consumer.assign([TopicPartition(topic, p) for p in partitions])
    deadline = time.monotonic() + timeout_s
    try:
        while sink.landed < sink.expected:
            sink.check(deadline, timeout_s)
            fetched = await consumer.getmany(timeout_ms=100, max_records=10_000)
            now = time.monotonic()
            for tp, messages in fetched.items():
                sink.take(tp.partition, messages, now)
            sink.flush_due(now)
    finally:
        await consumer.stop()
    return sink.result()


@dataclass(frozen=True, slots=True)
class _Message:
    """A librdkafka message as pipeline.codec reads one (aiokafka's records have these fields)."""

    value: bytes | None
    partition: int
    offset: int
    headers: Any


def _consume_confluent(
    access: KafkaAccess, topic: str, partitions: Sequence[int], sink: _Sink, timeout_s: float
) -> PassthroughResult:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            **access.librdkafka(),
            "group.id": topic + ".passthrough",  # required; nothing is committed, no group joined
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    deadline = time.monotonic() + timeout_s
    try:
        while sink.landed < sink.expected:
            sink.check(deadline, timeout_s)
            fetched: dict[int, list[_Message]] = {}
            for m in consumer.consume(num_messages=10_000, timeout=0.1):
                p, offset = m.partition(), m.offset()
                if m.error() is None and p is not None and offset is not None:
                    fetched.setdefault(p, []).append(_Message(m.value(), p, offset, m.headers()))
            now = time.monotonic()
            for partition, messages in fetched.items():
                sink.take(partition, messages, now)
            sink.flush_due(now)
    finally:
        consumer.close()
    return sink.result()


CLIENTS = ("aiokafka", "confluent-kafka")


def run_passthrough(
    access: KafkaAccess,
    topic: str,
    partitions: int | Sequence[int],
    expected: int,
    out: Path,
    *,
    flush_rows: int,
    flush_seconds: float,
    timeout_s: float = 900.0,
    client: str = "aiokafka",
    columns: bool = False,
) -> PassthroughResult:
    """Consume `expected` events of `topic` (its first `partitions` partitions, or those listed)
    into Parquet files under `out` with `client` (one of CLIENTS); every buffer is flushed as
    soon as the last event is consumed. `columns`: decode the Avro messages straight into Arrow
    columns (`pipeline.native_rows`, as the worker does) instead of dicts converted at flush."""
    out.mkdir(parents=True, exist_ok=True)
    sink = _Sink(out, expected, flush_rows, flush_seconds, columns)
    chosen = range(partitions) if isinstance(partitions, int) else partitions
    if client == "confluent-kafka":
        return _consume_confluent(access, topic, chosen, sink, timeout_s)
    return asyncio.run(_consume_aiokafka(access, topic, chosen, sink, timeout_s))


def run_passthrough_processes(
    access: KafkaAccess,
    topic: str,
    expected_by_partition: Mapping[int, int],
    out: Path,
    processes: int,
    *,
    flush_rows: int,
    flush_seconds: float,
    timeout_s: float = 900.0,
    client: str = "aiokafka",
) -> PassthroughResult:
    """`run_passthrough` in `processes` processes at once, process i consuming the partitions p
    with p % processes == i (`expected_by_partition` gives each partition's events): the baseline
    of a worker of as many processes, on the same cores. One result: the first consume of any
    process, every process's commits."""
    shares = [sorted(p for p in expected_by_partition if p % processes == i) for i in range(processes)]
    shares = [share for share in shares if share]
    # fresh interpreters (spawn): the bench process may hold client threads a fork would copy
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(shares), mp_context=context) as pool:
        futures = [
            pool.submit(
                run_passthrough,
                access,
                topic,
                share,
                sum(expected_by_partition[p] for p in share),
                out / f"process-{i}",
                flush_rows=flush_rows,
                flush_seconds=flush_seconds,
                timeout_s=timeout_s,
                client=client,
            )
            for i, share in enumerate(shares)
        ]
        results = [f.result() for f in futures]
    starts = [r.first_consume for r in results if r.first_consume]
    return PassthroughResult(
        min(starts) if starts else 0.0,
        tuple(c for r in results for c in r.commits),
        sum(r.events for r in results),
    )
