"""Consent and subject state that every worker holds whole, whatever the producers' partitioning.

Carriers produce consent.events and privacy.requests with whatever client they have: librdkafka's
default partitioner (CRC32) puts an account on another partition than the Java client's murmur2,
some name partitions explicitly, and the control topics need not have as many partitions as
calls.raw. So no worker may assume that an account's consent sits on "its" partitions: each
worker reads every partition of both control topics from the beginning (Kafka Streams'
GlobalKTable) into one `ControlState`, and waits until it has read up to the end offsets it found
at start-up before it judges any call. Event-time progress is kept per control partition
(`consent.Watermarks`), and calls wait until every active control partition has passed their
time, so a consent change stamped before a call still applies to it, whichever arrives first.

The reader only applies what it can decode; a control message that does not decode is turned
into a dead letter by the one worker whose consumer group owns that control partition
(pipeline/stream/app.py), so it is dead-lettered once, not once per worker.

`ControlState` is pure (no Kafka, no clock); `ControlReader` is its Kafka edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pipeline.codec import decode_value
from pipeline.consent import AccountState, Stream, Watermarks, record_consent, record_request

log = logging.getLogger("callpipe.control")

RECORDS = {Stream.CONSENT: "ConsentEvent", Stream.REQUESTS: "PrivacyRequest"}


class ControlState:
    """Every account's consent and request history, and the event-time progress of every control
    partition. `listeners` are told the account of each applied request (a runner forgets the
    plaintext identifiers it cached for an erased account)."""

    def __init__(self, max_idle_ms: int, now_ms: int) -> None:
        self.accounts: dict[str, AccountState] = {}
        self.watermarks = Watermarks(max_idle_ms, now_ms, wait_at_start=False)  # loaded whole first
        self.counts: Counter[str] = Counter()
        self.listeners: list[Callable[[str, str], None]] = []

    def apply(self, stream: Stream, value: bytes | None, headers: Any, partition: int, now_ms: int) -> int:
        """Apply one control message; returns how many of its records were applied (what does
        not decode is skipped here and dead-lettered by the partition's owner)."""
        decoded = decode_value(value, RECORDS[stream], headers=headers)
        applied = 0
        for rec in decoded.records:
            try:
                account = rec["account_id"]
                prior = self.accounts.get(account)
                if stream is Stream.CONSENT:
                    self.accounts[account] = record_consent(prior, rec)
                else:
                    self.accounts[account] = record_request(prior, rec)
                    for listener in self.listeners:
                        listener(account, str(rec["kind"]))
                self.watermarks.observe(stream, int(rec["at"]), now_ms, partition)
                applied += 1
            except Exception as exc:  # the guard: one bad record must not stop the state
                self.counts["control_errors"] += 1
                log.error(
                    "%s record not applied: partition=%s error=%s", stream, partition, type(exc).__name__
                )
        self.counts[f"{stream.value}_applied"] += applied
        return applied

    def states_for(self, accounts: Iterable[str]) -> Mapping[str, AccountState]:
        found = self.accounts
        return {a: found[a] for a in accounts if a in found}


class ControlReader:
    """Reads every partition of the control topics into a `ControlState` (no consumer group: each
    worker reads all of them). `ready` is set once the reader has reached the end offsets that
    the control topics had when it started."""

    def __init__(
        self,
        topics: Mapping[Stream, str],
        state: ControlState,
        consumer_factory: Callable[[], Any],
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.topics = dict(topics)
        self.state = state
        self._factory = consumer_factory
        self._now_ms = now_ms
        self.ready = asyncio.Event()
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stream_of: dict[str, Stream] = {topic: stream for stream, topic in self.topics.items()}

    async def start(self) -> None:
        from aiokafka import TopicPartition

        self._consumer = self._factory()
        await self._consumer.start()
        tps: list[Any] = []
        for topic in self.topics.values():
            parts = await self._partitions(topic)
            tps += [TopicPartition(topic, p) for p in parts]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        ends = await self._consumer.end_offsets(tps)
        self._task = asyncio.create_task(self._run(tps, dict(ends)))

    async def _partitions(self, topic: str) -> Sequence[int]:
        for _ in range(100):
            parts = self._consumer.partitions_for_topic(topic)
            if parts:
                return sorted(parts)
            await self._consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {topic} does not exist; run `callpipe topics create`")

    async def _run(self, tps: list[Any], ends: dict[Any, int]) -> None:
        pending = {tp for tp, end in ends.items() if end > 0}
        if not pending:
            self.ready.set()
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=200, max_records=5_000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broker outage: aiokafka reconnects, the reader goes on
                log.warning("control reader: %s; retrying", type(exc).__name__)
                await asyncio.sleep(1)
                continue
            now = self._now_ms()
            for tp, messages in batches.items():
                stream = self._stream_of[tp.topic]
                for msg in messages:
                    self.state.apply(stream, msg.value, msg.headers, tp.partition, now)
            for tp in list(pending):
                # position, not the last offset seen: a log may end with transaction markers
                if await self._consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
            if pending:
                continue
            if not self.ready.is_set():
                log.info(
                    "control state loaded: %s accounts from %s control partitions",
                    len(self.state.accounts),
                    len(tps),
                )
                self.ready.set()
            await asyncio.sleep(0)

    @property
    def failed(self) -> BaseException | None:
        """Why the reader stopped, if it did (the worker stops then: state would go stale)."""
        if self._task is None or not self._task.done() or self._task.cancelled():
            return None
        return self._task.exception()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
