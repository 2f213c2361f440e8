"""The worker process: Kafka in, lake and dead letters out, around the logic of pipeline/stream/worker.py.

    calls.raw         -> consumer group `callpipe-stream`, raw record batches (getmany)
                         -> StreamWorker -> PartitionRunner per partition -> lake
    consent.events,   -> every partition read whole by each worker (pipeline/stream/control.py)
    privacy.requests     -> ControlState: consent and subject state, event-time watermarks
                      -> also in the consumer group: the owner of a control partition turns what
                         does not decode into dead letters, once for the whole group
    dead letters      -> calls.dlq (too large for it: kept whole in the lake's `_rejects/`)

What faust-streaming still does here, and what it no longer does:
  - its service runtime (`mode.Service` run by `mode.Worker`, the same runtime as `faust worker`)
    runs the process: signal handling, graceful stop on SIGTERM, logging set-up;
  - its consumer and tables were replaced. faust delivered calls one framework event per message
    (the chain cost ~250 us per event in that machinery alone, docs/BENCHMARKS.md), dropped
    messages it had fetched around a rebalance, and its tables are co-partitioned with calls.raw,
    which carriers' mixed clients and partitioners cannot promise. aiokafka's consumer hands a
    batch per partition per poll, the worker seeks each partition to the offset the lake expects,
    and the control state is read whole by every worker.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

import mode
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import ConsumerStoppedError, KafkaError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from pipeline import lograte
from pipeline.codec import decode_value, native_decoding
from pipeline.consent import Stream, record_consent, record_request
from pipeline.errors import EXIT_TRIPPED
from pipeline.kafka_access import WORKER, KafkaAccess
from pipeline.kafka_metadata import topic_partitions
from pipeline.keys import PseudonymKey
from pipeline.reasons import Reason, Rejection, Stage
from pipeline.sealed import OperatorPublicKey, Sealer
from pipeline.secrets_raw import without_secrets
from pipeline.settings import Settings
from pipeline.stream.control import METADATA_MAX_AGE_MS, RECORDS, ControlReader, ControlState, snapshot_path
from pipeline.stream.observe import Liveness, MetricsServer, runtime_view
from pipeline.stream.supervise import siblings_ready
from pipeline.stream.worker import StreamWorker
from schemas.topics import CALLS, CONSENT, DLQ, REQUESTS, STREAM_GROUP

log = logging.getLogger("callpipe.worker")

TAKE_MAX = 20_000  # messages per poll, over all partitions
TICK_S = 0.25
COMMIT_TIMEOUT_S = 10.0
SESSION_TIMEOUT_MS = 10_000  # a worker killed -9 holds its partitions this long
# How soon a member learns that the group is rebalancing (a member joined or left): a member that
# learns late holds partitions another member waits for. At 3 s (the Java client's default), the
# second member of `callpipe worker --processes 2` sat idle ~5 s while the first, which had joined
# a moment before it and took every partition, went on alone; Kafka asks for at most a third of
# the session timeout.
HEARTBEAT_INTERVAL_MS = 1_000
MAX_FETCH = 8 * 1024 * 1024
MAX_REQUEST = 16 * 1024 * 1024  # the producer's own bound; calls.dlq's limit is read at start
DLQ_BATCH = 512 * 1024  # bytes of dead letters per partition batch


async def dlq_limit(access: KafkaAccess, topic: str) -> int:
    """The largest record batch calls.dlq accepts (its max.message.bytes, the broker's default
    when the topic sets none)."""
    admin = AIOKafkaAdminClient(**access.aiokafka())
    await admin.start()
    try:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        for resource in response.resources:
            for entry in resource[4]:
                if entry[0] == "max.message.bytes" and entry[1]:
                    return int(entry[1])
    finally:
        await admin.close()
    return 1024 * 1024


def dead_letter_producer(access: KafkaAccess, limit: int = 1024 * 1024) -> AIOKafkaProducer:
    """The worker's producer (dead letters). Its batches are larger than aiokafka's 16 KiB
    default: every dead letter is its own send, and while a full batch drains each waiting send
    is retried, which made a burst of sealed (larger) dead letters 2-3x slower to acknowledge
    (docs/BENCHMARKS.md, `bench dlq`). A batch stays under half of calls.dlq's limit (`limit`),
    so only a dead letter too large on its own is refused as too large."""
    return AIOKafkaProducer(
        **access.aiokafka(),
        acks="all",
        linger_ms=5,
        max_request_size=MAX_REQUEST,
        max_batch_size=max(16 * 1024, min(DLQ_BATCH, limit // 2)),
    )


def now_ms() -> int:
    return int(time.time() * 1000)


class KafkaBroker:
    """`pipeline.stream.worker.Broker` over an aiokafka consumer and producer."""

    def __init__(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, calls: str, dlq: str, sealer: Sealer
    ) -> None:
        self.consumer = consumer
        self.sealer = sealer
        self.producer = producer
        self.calls = calls
        self.dlq = dlq
        self._sent: list[tuple[asyncio.Future[Any], Rejection, bytes | None, str]] = []
        self._dlq_partitions = 1
        self.max_bytes = 1024 * 1024

    async def start(self, limit: int) -> None:
        """`limit`: calls.dlq's max.message.bytes (`dlq_limit`)."""
        parts = await self.producer.partitions_for(self.dlq)
        self._dlq_partitions = max(1, len(parts))
        self.max_bytes = min(MAX_REQUEST, limit)

    def _tps(self, partitions: Iterable[int]) -> list[TopicPartition]:
        assigned = self.consumer.assignment()
        return [tp for tp in (TopicPartition(self.calls, p) for p in partitions) if tp in assigned]

    def seek(self, partition: int, offset: int) -> None:
        for tp in self._tps([partition]):
            self.consumer.seek(tp, offset)

    def pause(self, partitions: Iterable[int]) -> None:
        self.consumer.pause(*self._tps(partitions))

    def resume(self, partitions: Iterable[int]) -> None:
        self.consumer.resume(*self._tps(partitions))

    def send_dead(self, dead: Rejection, key: bytes | None, topic: str) -> None:
        """The dead letter's value and key sealed for the operator (pipeline/sealed.py); its
        reason, coordinates, format, size and digest in plaintext headers."""
        value, sealed = self.sealer.seal(
            dead.raw, key, topic=topic, partition=dead.partition, offset=dead.offset, index=dead.index
        )
        headers = dead.headers(topic) + sealed
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(None, value, headers)  # an upper bound
        if size > self.max_bytes:  # refused before it is tried: the broker would refuse it whole
            refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            refused.set_exception(MessageSizeTooLargeError(f"dead letter of {size} bytes"))
            self._sent.append((refused, dead, key, topic))
            return
        future = asyncio.ensure_future(
            self.producer.send_and_wait(
                self.dlq,
                value=value,
                headers=headers,
                partition=dead.partition % self._dlq_partitions,
            )
        )
        self._sent.append((future, dead, key, topic))

    async def dead_sent(self) -> list[tuple[Rejection, bytes | None, str, BaseException]]:
        sent, self._sent = self._sent, []
        refused: list[tuple[Rejection, bytes | None, str, BaseException]] = []
        for future, dead, key, topic in sent:
            try:
                await future
            except Exception as exc:
                refused.append((dead, key, topic, exc))
        return refused

    @property
    def unacknowledged(self) -> int:
        """Dead letters sent and not yet acknowledged by the broker."""
        return sum(not future.done() for future, *_ in self._sent)

    def too_large(self, exc: BaseException) -> bool:
        return isinstance(exc, MessageSizeTooLargeError)

    async def commit(self, offsets: Mapping[int, int]) -> None:
        await self.commit_tps({TopicPartition(self.calls, p): o for p, o in offsets.items()})

    async def commit_tps(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Committed offsets are for lag monitoring only (the lake is the truth): a commit that
        fails around a rebalance is dropped, the next flush commits again."""
        assigned = self.consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await asyncio.wait_for(self.consumer.commit(dict(offsets)), COMMIT_TIMEOUT_S)
        except (TimeoutError, KafkaError) as exc:
            log.debug("commit skipped: %s", type(exc).__name__)


class ControlDuty:
    """The control partitions this worker owns in the group: what does not decode (or cannot be
    applied) becomes a dead letter, sent once for the group; offsets committed after it."""

    def __init__(
        self, worker: StreamWorker, broker: KafkaBroker, streams: Mapping[str, Stream], settings: Settings
    ):
        self.worker = worker
        self.broker = broker
        self.streams = dict(streams)
        self.settings = settings
        self.pending: dict[TopicPartition, int] = {}

    def take(self, tp: TopicPartition, messages: list[Any]) -> None:
        stream = self.streams[tp.topic]
        apply = record_consent if stream is Stream.CONSENT else record_request
        for msg in messages:
            decoded = decode_value(msg.value, RECORDS[stream], headers=msg.headers)
            dead = [
                self._mask(Rejection(r.reason, r.stage, tp.partition, msg.offset, r.index, r.raw, r.field))
                for r in decoded.rejections
            ]
            for rec in decoded.records:
                try:
                    apply(None, rec)
                except Exception:  # the same records fail in every worker's ControlState
                    dead.append(
                        Rejection(Reason.INTERNAL, Stage.CONSENT, tp.partition, msg.offset, None, b"")
                    )
            for d in dead:
                self.worker.send_dead(d, msg.key, tp.topic)
            self.pending[tp] = msg.offset + 1

    def _mask(self, dead: Rejection) -> Rejection:
        return without_secrets(dead, self.settings.policy.secret_names)

    async def commit(self) -> None:
        if not self.pending:
            return
        if not await self.worker.dead_letters_durable():
            return  # committed once the broker has taken them
        pending, self.pending = self.pending, {}
        await self.broker.commit_tps(pending)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime

    async def on_partitions_revoked(self, revoked: Any) -> None:
        rt = self.runtime
        rt.life.joined = False
        async with rt.lock:
            await rt.duty.commit()
            await rt.worker.revoked(tp.partition for tp in revoked if tp.topic == rt.calls)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        rt = self.runtime
        async with rt.lock:
            await rt.worker.assigned(tp.partition for tp in assigned if tp.topic == rt.calls)
        rt.life.joined = True  # called after every join, with or without partitions


class WorkerRuntime(mode.Service):
    """One worker process, run by faust's service runtime (`mode.Worker`)."""

    def __init__(
        self,
        settings: Settings,
        key: PseudonymKey,
        *,
        prefix: str = "",
        metrics: socket.socket | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.life, self.started_ms = Liveness(), now_ms()
        self.metrics = MetricsServer(metrics, lambda: runtime_view(self)) if metrics is not None else None
        self.calls = prefix + CALLS
        topics = {Stream.CONSENT: prefix + CONSENT, Stream.REQUESTS: prefix + REQUESTS}
        access = settings.kafka(WORKER)
        self.control = ControlState(settings.max_idle_ms, now_ms())
        self.reader = ControlReader(
            topics,
            self.control,
            lambda: AIOKafkaConsumer(
                **access.aiokafka(),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                max_partition_fetch_bytes=MAX_FETCH,
                metadata_max_age_ms=METADATA_MAX_AGE_MS,  # control partitions added are seen
            ),
            functools.partial(topic_partitions, access),
            snapshot=snapshot_path(settings.home, prefix),
        )
        self._topics = topics
        self._prefix = prefix
        self._key = key
        # only the public half of the operator key: a worker seals dead letters it cannot open
        self._operator = OperatorPublicKey.load(settings.dlq_public_key)
        self.lock = asyncio.Lock()
        self.topics = [self.calls, *topics.values()]

    def _clients(self, limit: int) -> None:
        """aiokafka's clients belong to the running loop: made when the service starts."""
        settings, key, prefix, topics = self.settings, self._key, self._prefix, self._topics
        access = settings.kafka(WORKER)
        self.producer = dead_letter_producer(access, limit)
        self.consumer = AIOKafkaConsumer(
            **access.aiokafka(),
            group_id=prefix + STREAM_GROUP,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            max_partition_fetch_bytes=MAX_FETCH,
        )
        self.broker = KafkaBroker(
            self.consumer, self.producer, self.calls, prefix + DLQ, Sealer(self._operator)
        )
        self.worker = StreamWorker(
            settings=settings,
            key=key,
            control=self.control,
            broker=self.broker,
            topic=self.calls,
            land_behind=True,
        )
        self.duty = ControlDuty(self.worker, self.broker, {t: s for s, t in topics.items()}, settings)

    async def on_start(self) -> None:
        if self.metrics is not None:  # first: /healthz and /readyz answer while the state loads
            await self.metrics.start()
        limit = await dlq_limit(self.settings.kafka(WORKER), self._prefix + DLQ)
        self._clients(limit)
        await self.producer.start()
        await self.broker.start(limit)
        await self.reader.start()
        started = time.monotonic()
        await self.reader.ready.wait()  # no call is judged before the whole control state is read
        log.info("control state ready after %.1fs", time.monotonic() - started)
        if native_decoding():
            log.info("Avro bodies are read by the native decoder (pipeline/native/)")
        else:
            log.warning(
                "the native decoder was not built (no cargo at install): fastavro reads every Avro "
                "body, two to three times slower per event; reinstall with Rust's cargo on PATH"
            )
        await siblings_ready()  # the members of `--processes N` join the group together
        await self.consumer.start()
        self.consumer.subscribe(self.topics, listener=_Listener(self))
        self.life.phase = "running"

    @mode.Service.task
    async def _consume(self) -> None:
        last_tick = time.monotonic()
        while not self.should_stop:
            self.life.turned = time.monotonic()
            failed = self.reader.failed
            if failed is not None:
                log.error("control reader stopped (%s); stopping the worker", type(failed).__name__)
                raise failed
            if self.worker.tripped is not None:  # tripped in a rebalance's landing: stop all the same
                raise self.worker.tripped
            try:
                batches = await self.consumer.getmany(timeout_ms=int(TICK_S * 1000), max_records=TAKE_MAX)
            except ConsumerStoppedError:
                return
            async with self.lock:
                for tp, messages in batches.items():
                    if tp.topic == self.calls:
                        await self.worker.take(tp.partition, messages)
                    else:
                        self.duty.take(tp, messages)
                if time.monotonic() - last_tick >= TICK_S:
                    last_tick = time.monotonic()
                    await self.worker.tick()
                    await self.duty.commit()

    async def on_stop(self) -> None:
        """Land what was taken, then leave the group, so a successor starts where this one ended."""
        self.life.phase = "stopping"
        async with self.lock:
            await self.worker.shutdown()
            await self.duty.commit()
        await self.consumer.stop()
        await self.reader.stop()
        await self.producer.stop()
        if self.metrics is not None:
            await self.metrics.stop()


class _Worker(mode.Worker):
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """mode replaces the root handlers when it sets logging up: rate-limit the new ones, so
        a broker outage logs one line per cause per interval (pipeline/lograte.py)."""
        lograte.install()


def run_worker(
    settings: Settings, key: PseudonymKey, *, prefix: str = "", metrics: socket.socket | None = None
) -> None:
    """`callpipe worker`: run until SIGTERM or SIGINT; `metrics`: the endpoint's bound socket."""
    service = WorkerRuntime(settings, key, prefix=prefix, metrics=metrics)
    try:
        _Worker(service, loglevel=settings.log_level, quiet=True).execute_from_commandline()
    except SystemExit:
        worker = getattr(service, "worker", None)
        if worker is not None and worker.tripped is not None:
            raise SystemExit(EXIT_TRIPPED) from None  # a supervisor must see the stop as a failure
        raise
