"""Publishing records to Kafka the way carriers do: keyed by account, single events or batches.

calls.raw, consent.events and privacy.requests are co-partitioned by account_id. A single-event
message is keyed by its account_id (Kafka's default murmur2 partitioner places it). A batch message
holds only events of one partition: records are grouped by the partition the default partitioner
would pick for their account_id and sent to that partition explicitly, so a batch never mixes
subjects of different workers. Batch messages carry no key (they hold many accounts).

`plan_messages` is pure (records -> messages); `publish` is the aiokafka edge; `load_file` reads
a JSON-lines / JSON-array / Avro-container file of CallEvents, ConsentEvents or PrivacyRequests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from pipeline import codec
from pipeline.carrier.generate import BadMessage
from pipeline.kafka_access import KafkaAccess
from pipeline.kafka_metadata import topic_partitions
from schemas.topics import TOPIC_OF

RECORD_OF = {topic: name for name, topic in TOPIC_OF.items()}
FORMATS = ("avro", "json")


class ProduceError(Exception):
    """An expected failure with one clear line for the user (no record values in it)."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One Kafka message to send. partition None: the default partitioner places it by key."""

    value: bytes
    key: bytes | None
    partition: int | None
    headers: tuple[tuple[str, bytes], ...]
    events: int  # good events inside (0 for a deliberately bad message)


@dataclass(frozen=True)
class Shipment:
    """Records of one kind to publish to one topic, plus deliberately bad messages mixed in."""

    topic: str
    record_name: str
    records: Sequence[dict[str, Any]]
    fmt: str = "avro"
    batch_size: int = 1
    iso_times: bool = False
    bad: Sequence[BadMessage] = ()


@dataclass
class Summary:
    topics: dict[str, list[int]] = field(default_factory=dict)  # topic -> [events, messages, bad]
    seconds: float = 0.0
    to_files: bool = False

    @property
    def events(self) -> int:
        return sum(v[0] for v in self.topics.values())

    @property
    def messages(self) -> int:
        return sum(v[1] for v in self.topics.values())

    def line(self) -> str:
        if self.to_files:
            parts = [f"{e} events to {t}" for t, (e, _m, _b) in self.topics.items()]
            verb = "wrote"
        else:
            parts = [
                f"{e} events in {m} messages to {t}" + (f" (+{b} bad)" if b else "")
                for t, (e, m, b) in self.topics.items()
            ]
            verb = "produced"
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        return f"{verb} {'; '.join(parts)} in {self.seconds:.2f} s ({rate:,.0f} events/s)"


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as in the Java client) picks for key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def plan_messages(
    records: Sequence[dict[str, Any]],
    record_name: str,
    fmt: str,
    batch_size: int,
    partitions: int,
    *,
    iso_times: bool = False,
) -> list[Outgoing]:
    """Records -> messages, in record order; batches group records of one partition."""
    if fmt not in FORMATS:
        raise ValueError("format must be avro or json")
    header = (codec.format_header(fmt, batch_size),)
    if batch_size == 1:
        values = codec.encode(records, record_name, fmt, 1, iso_times=iso_times)
        return [
            Outgoing(v, r["account_id"].encode(), None, header, 1)
            for v, r in zip(values, records, strict=True)
        ]
    cache: dict[str, int] = {}
    pending: dict[int, list[dict[str, Any]]] = {}
    out: list[Outgoing] = []

    def flush(p: int) -> None:
        chunk = pending.pop(p)
        value = codec.encode(chunk, record_name, fmt, len(chunk), iso_times=iso_times)[0]
        out.append(Outgoing(value, None, p, header, len(chunk)))

    for rec in records:
        account = rec["account_id"]
        p = cache.get(account)
        if p is None:
            p = cache[account] = partition_for(account.encode(), partitions)
        pending.setdefault(p, []).append(rec)
        if len(pending[p]) >= batch_size:
            flush(p)
    for p in sorted(pending):
        flush(p)
    return out


def mix_in_bad(good: list[Outgoing], bad: Sequence[BadMessage]) -> list[Outgoing]:
    """Spread deliberately bad messages evenly through the good ones (deterministic)."""
    if not bad:
        return good
    out = list(good)
    for i, b in reversed(list(enumerate(bad))):
        key = b.account_id.encode() if b.account_id else None
        out.insert((i + 1) * len(good) // (len(bad) + 1), Outgoing(b.value, key, None, (), 0))
    return out


def sniff_record_name(obj: Any) -> str | None:
    """Which record a JSON object is, from its identifying field."""
    if not isinstance(obj, dict):
        return None
    if "event_id" in obj:
        return "CallEvent"
    if "request_id" in obj:
        return "PrivacyRequest"
    if "purpose" in obj:
        return "ConsentEvent"
    return None


def load_file(path: Path, topic: str | None) -> tuple[str, list[dict[str, Any]]]:
    """Read a file of records; returns (record name, records). Raises ProduceError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProduceError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    name = _file_record_name(data, path)
    if name is None and topic in RECORD_OF:
        name = RECORD_OF[topic]
    if name is None:
        raise ProduceError(f"{path}: not a file of CallEvents, ConsentEvents or PrivacyRequests")
    if topic in RECORD_OF and RECORD_OF[topic] != name:
        raise ProduceError(f"{path} holds {name} records, which do not belong on {topic}")
    limits = codec.Limits(
        max_message_bytes=max(len(data), 1), max_event_bytes=codec.DEFAULT_LIMITS.max_event_bytes
    )
    fmt = None if data.lstrip()[:1] in (b"[", b"") or data.startswith(b"Obj\x01") else codec.Format.JSONL
    headers = [(codec.FORMAT_HEADER, fmt.value.encode())] if fmt else None
    out = codec.decode_value(data, name, headers=headers, limits=limits)
    if out.rejections:
        first = out.rejections[0]
        where = f"record {first.index + 1}" if first.index is not None else "the file"
        raise ProduceError(
            f"{path}: {len(out.rejections)} invalid {name} record(s); first: {where}: {first.reason.value}"
        )
    return name, out.records


def _file_record_name(data: bytes, path: Path) -> str | None:
    if data.startswith(b"Obj\x01"):
        import io

        import fastavro

        try:
            schema = fastavro.reader(io.BytesIO(data)).writer_schema
        except Exception:
            raise ProduceError(f"{path}: not a readable Avro container file") from None
        full = str(schema.get("name", "") if isinstance(schema, dict) else "")
        short = full.rsplit(".", 1)[-1]
        return short if short in TOPIC_OF else None
    stripped = data.lstrip()
    if stripped[:1] == b"[":
        try:
            first: Any = (orjson.loads(data) or [None])[0]
        except orjson.JSONDecodeError:
            return None
    else:
        line = stripped.split(b"\n", 1)[0]
        try:
            first = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
    return sniff_record_name(first)


def write_files(folder: Path, shipments: Sequence[Shipment]) -> Summary:
    """Write each shipment's records to <folder>/<topic>.jsonl (json) or .avro (Avro container)."""
    started = time.perf_counter()
    summary = Summary(to_files=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for shipment in shipments:
            if shipment.fmt == "json":
                path = folder / f"{shipment.topic}.jsonl"
                lines = [
                    codec.to_json(r, shipment.record_name, iso_times=shipment.iso_times)
                    for r in shipment.records
                ]
                path.write_bytes(b"".join(line + b"\n" for line in lines))
            else:
                path = folder / f"{shipment.topic}.avro"
                path.write_bytes(codec.encode_container(shipment.records, shipment.record_name))
            summary.topics[str(path)] = [len(shipment.records), 1, 0]
    except OSError as exc:
        raise ProduceError(f"cannot write to {folder}: {exc.strerror or type(exc).__name__}") from None
    summary.seconds = time.perf_counter() - started
    return summary


async def publish(
    access: KafkaAccess, shipments: Sequence[Shipment], *, rate: float = 0.0, timeout_s: float = 20.0
) -> Summary:
    """Send the shipments in order (rate: events/s over all shipments, 0 = as fast as possible)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError, MessageSizeTooLargeError

    bootstrap = access.bootstrap
    producer = AIOKafkaProducer(
        **access.aiokafka(),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
        max_request_size=1024 * 1024,
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        await asyncio.wait_for(producer.start(), timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        await producer.stop()
        raise ProduceError(f"cannot reach Kafka at {bootstrap} ({type(exc).__name__})") from None
    summary = Summary()
    try:
        found = await asyncio.wait_for(topic_partitions(access, {s.topic for s in shipments}), timeout_s)
        started = time.perf_counter()
        plans = []
        for shipment in shipments:
            parts = found.get(shipment.topic)
            if not parts:
                raise ProduceError(f"topic {shipment.topic} does not exist (run `callpipe topics create`)")
            msgs = plan_messages(
                shipment.records,
                shipment.record_name,
                shipment.fmt,
                shipment.batch_size,
                len(parts),
                iso_times=shipment.iso_times,
            )
            plans.append((shipment.topic, mix_in_bad(msgs, shipment.bad), len(shipment.bad)))
        sent_events = 0
        for topic, msgs, bad in plans:
            partitions = sorted(found[topic])
            sent_events = await _send(producer, topic, msgs, partitions, rate, started, sent_events)
            # several shipments may go to one topic (the demo's Avro and JSON halves): add them up
            held = summary.topics.setdefault(topic, [0, 0, 0])
            for i, n in enumerate((sum(m.events for m in msgs), len(msgs), bad)):
                held[i] += n
        summary.seconds = time.perf_counter() - started
    except MessageSizeTooLargeError:
        raise ProduceError("a message is larger than Kafka accepts; lower --batch-size") from None
    except (KafkaError, TimeoutError) as exc:
        raise ProduceError(f"publishing to Kafka at {bootstrap} failed ({type(exc).__name__})") from None
    finally:
        await producer.stop()
    return summary


async def _send(
    producer: Any,
    topic: str,
    msgs: Sequence[Outgoing],
    partitions: list[int],
    rate: float,
    started: float,
    sent_events: int,
) -> int:
    """Append messages to one open record batch per partition; a full batch is sent as a whole.

    Cheaper than one producer.send() per message; keyed messages land where the default
    partitioner would put them. With a rate, open batches are sent before each pause.
    """
    from aiokafka.errors import MessageSizeTooLargeError

    open_batches: dict[int, Any] = {}
    placed: dict[bytes, int] = {}  # key -> partition (murmur2 in pure Python is slow)
    futures = []

    async def ship(p: int) -> None:
        batch = open_batches.pop(p)
        futures.append(await producer.send_batch(batch, topic, partition=p))

    for msg in msgs:
        if rate > 0:
            ahead = started + sent_events / rate - time.perf_counter()
            if ahead > 0:
                for waiting in list(open_batches):
                    await ship(waiting)
                await asyncio.sleep(ahead)
        if msg.partition is not None:
            p = msg.partition
        elif msg.key is not None:
            p = placed.get(msg.key, -1)
            if p < 0:
                p = placed[msg.key] = partitions[partition_for(msg.key, len(partitions))]
        else:
            p = partitions[0]
        headers = list(msg.headers)
        batch = open_batches.get(p)
        if batch is None:
            batch = open_batches[p] = producer.create_batch()
        if batch.append(key=msg.key, value=msg.value, timestamp=None, headers=headers) is None:
            await ship(p)
            batch = open_batches[p] = producer.create_batch()
            if batch.append(key=msg.key, value=msg.value, timestamp=None, headers=headers) is None:
                raise MessageSizeTooLargeError()
        sent_events += msg.events
    for waiting in list(open_batches):
        await ship(waiting)
    for fut in futures:
        await fut  # raises the first delivery error, if any
    return sent_events
