"""The stream worker's logic, as an object the Kafka runtime (pipeline/stream/app.py) drives and a test
drives with a fake broker: `assigned`, `take`, `tick`, `revoked`, `shutdown`.

Invariants, whatever the order of calls:
  - The lake is the source of truth for what is consumed. A partition is read from the offset the
    lake says comes next (`PartitionRunner.next_offset`), sought explicitly when the partition is
    opened; Kafka's committed offsets are only written, for lag monitoring, never trusted.
  - Nothing is committed past a message that is neither landed nor dead-lettered: a range is
    landed only after its dead letters are acknowledged by the broker (or, for one too large for
    calls.dlq, kept whole in the lake's restricted `_rejects/` area with a stub in calls.dlq).
  - Every message of an owned partition is checked against the offset the runner expects next
    (pipeline/stream/offsets.py): below it, a replay the runner skips; above it, a gap that is sought
    back once and taken only when a re-read confirms it (retention, compaction, transactions).
  - A partition revoked is not landed at once: the eager rebalance revokes every partition of
    every member, and most come back. Only partitions not assigned again are landed and their
    lake writers released (their new owner waits for the writer's lock meanwhile), so a
    rebalance costs no flush of the partitions a worker keeps.
  - Landing behind (the Kafka runtime): one landing at a time runs in a thread while the loop
    goes on taking, the landing partitions too. Its ranges are staged on the loop right after
    their dead letters are known durable, with no await between (`PartitionRunner.prepare`); the
    thread writes only what was staged, and what is taken meanwhile belongs to the next range. A
    rebalance or a stop waits for the landing (`settle`).
  - A flush that fails on the file system (disk full, I/O error) does not stop the worker: the
    partition's writer is dropped (rows not landed are consumed again), the partition is paused
    and reopened after a back-off; `recover` removes the failed flush's temp files at reopen.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Protocol

from pipeline.codec import MessageLike
from pipeline.consent import EventTimeMerger
from pipeline.keys import PseudonymKey
from pipeline.memo import Memo
from pipeline.reasons import Rejection
from pipeline.settings import Settings
from pipeline.stream.control import ControlState
from pipeline.stream.offsets import OffsetGuard
from pipeline.stream.runner import Landing, PartitionRunner, Tripped
from schemas.topics import CALLS
from sinks.lake import Flushed, SourceBusy, source_name
from sinks.rejects import REJECTS_DIR, write_rejects

log = logging.getLogger("callpipe.worker")

RESEEK_S = 2.0  # a seek back to a gap is repeated if its re-read has not come after this long
SUSPECT_S = 60.0  # gaps this soon after an assignment are held back for a re-read
CHUNK_BYTES = 2 * 1024 * 1024  # message bytes fed to the chain between two yields to the loop
PUMP_EVENTS = 2_000  # events run through the chain between two yields to the loop
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # back-off of a partition whose flush failed on the disk


class Broker(Protocol):
    """What the worker needs of Kafka, for one calls topic."""

    def seek(self, partition: int, offset: int) -> None: ...
    def pause(self, partitions: Iterable[int]) -> None: ...
    def resume(self, partitions: Iterable[int]) -> None: ...
    def send_dead(self, dead: Rejection, key: bytes | None, topic: str) -> None: ...
    async def dead_sent(self) -> list[tuple[Rejection, bytes | None, str, BaseException]]:
        """Wait for every dead letter sent so far; the ones the broker refused, with the error."""
        ...

    def too_large(self, exc: BaseException) -> bool: ...
    async def commit(self, offsets: Mapping[int, int]) -> None: ...


@dataclass
class _Partition:
    runner: PartitionRunner
    guard: OffsetGuard = field(default_factory=OffsetGuard)
    assigned_at: float = 0.0


@dataclass
class _Stalled:
    since: float
    retry_at: float
    failures: int = 0


def _chunks(messages: Sequence[MessageLike]) -> list[Sequence[MessageLike]]:
    """Feed a take in pieces of bounded size: a poll of batch messages can hold hundreds of
    thousands of events, and the loop (heartbeats, the control reader) must run between them.
    A piece ends at the first message that brings it to CHUNK_BYTES."""
    ends = list(accumulate([len(m.value) if m.value else 0 for m in messages]))
    out: list[Sequence[MessageLike]] = []
    start = base = 0
    while start < len(messages):
        i = bisect_left(ends, base + CHUNK_BYTES, lo=start)
        if i >= len(messages):
            out.append(messages[start:])
            break
        out.append(messages[start : i + 1])
        start, base = i + 1, ends[i]
    return out


class _Keys(Mapping[int, bytes | None]):
    """The Kafka keys of a take's messages by offset, for the dead letters among them: built
    only when one is sent (most takes have none)."""

    def __init__(self, messages: Sequence[MessageLike]) -> None:
        self._messages = messages
        self._keys: dict[int, bytes | None] | None = None

    def _built(self) -> dict[int, bytes | None]:
        if self._keys is None:
            self._keys = {m.offset: getattr(m, "key", None) for m in self._messages}
        return self._keys

    def __getitem__(self, offset: int) -> bytes | None:
        return self._built()[offset]

    def __iter__(self) -> Iterator[int]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())


class StreamWorker:
    """The calls partitions a worker owns, their runners, and what may be committed."""

    def __init__(
        self,
        *,
        settings: Settings,
        key: PseudonymKey,
        control: ControlState,
        broker: Broker,
        topic: str,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        mono: Callable[[], float] = time.monotonic,
        land_behind: bool = False,
    ) -> None:
        self.settings = settings
        self.key = key
        self.control = control
        self.broker = broker
        self.topic = topic
        self.now_ms = now_ms
        self.mono = mono
        self.parts: dict[int, _Partition] = {}
        self.owned: set[int] = set()  # assigned now (opened or waiting for the lake writer)
        self.closing: set[int] = set()  # revoked, not yet known to be kept or gone
        self.busy: dict[int, float] = {}  # assigned, lake writer held by the previous owner: since
        self.stalled: dict[int, _Stalled] = {}  # paused after a failed flush
        self.counters: Counter[str] = Counter()
        # what this process landed: the stats of its ranges (those `_stats/` holds), and when
        # each partition last landed one (wall clock ms); read by the metrics at scrape time
        self.landed: Counter[str] = Counter()
        self.last_landed_ms: dict[int, int] = {}
        self._logged: dict[str, float] = {}
        self._retry_dead: list[tuple[Rejection, bytes | None, str]] = []
        self.memo = Memo()  # identifiers -> E.164, facts, tokens; shared by this worker's runners
        self.tripped: Tripped | None = None  # the trip-wire fired: nothing more is landed
        # Landing behind (the Kafka runtime): a due range lands in a thread while the loop goes on
        # taking, its own partition's messages too (they belong to the next range).
        self.land_behind = land_behind
        self._landing: asyncio.Task[None] | None = None
        control.listeners.append(self._on_request)

    def _on_request(self, account: str, kind: str) -> None:
        """An erased account's identifiers must not linger in memory: forget them all."""
        if kind == "erase":
            self.memo.forget()

    # ------------------------------------------------------------ rebalances

    async def revoked(self, partitions: Iterable[int]) -> None:
        """The group takes `partitions` back; they are landed when `assigned` shows they are gone."""
        gone = set(partitions)
        self.owned -= gone
        self.closing |= gone & set(self.parts)
        for p in gone:
            self.busy.pop(p, None)
            self.stalled.pop(p, None)

    async def assigned(self, partitions: Iterable[int]) -> None:
        now = set(partitions)
        lost = self.closing - now
        self.closing = set()
        await self.release(lost)
        mono = self.mono()
        for p in now:
            self.owned.add(p)
            part = self.parts.get(p)
            if part is not None:
                part.assigned_at = mono
                # the consumer restarts at the committed offset; the runner's next is the truth
                self.broker.seek(p, part.runner.expected)
                continue
            self.busy.setdefault(p, mono)
        await self._open_busy()

    async def release(self, partitions: Iterable[int]) -> None:
        """Land what was taken from `partitions` (waiting calls are released: their next owner
        would wait just the same) and let go of their lake writers."""
        await self.settle()
        gone = sorted(p for p in partitions if p in self.parts)
        if self.tripped is None:
            try:
                for p in gone:
                    await self._pump(self.parts[p].runner, drain=True)
            except Tripped:
                pass  # nothing is landed now: the runners are closed below
        await self._flush(gone, force=True, commit=False)
        for p in gone:
            part = self.parts.pop(p)
            part.runner.close()

    async def shutdown(self) -> None:
        """A stopping worker lands what it has taken, so its successor starts where it ended."""
        await self.release(list(self.parts))
        self.owned.clear()
        self.closing.clear()

    def _runner(self, partition: int) -> PartitionRunner:
        return PartitionRunner(
            lake=self.settings.lake,
            source=source_name(self.topic_base, partition),
            partition=partition,
            settings=self.settings,
            key=self.key,
            states_for=self.control.states_for,
            now_ms=self.now_ms(),
            merger=EventTimeMerger(
                self.settings.max_idle_ms, self.now_ms(), watermarks=self.control.watermarks
            ),
            memo=self.memo,
        )

    @property
    def topic_base(self) -> str:
        """The lake names sources after the unprefixed topic (prefixes isolate test topic sets)."""
        return CALLS

    async def _open_busy(self) -> None:
        for p in sorted(self.busy):
            try:
                runner = self._runner(p)
            except SourceBusy:
                self.broker.pause([p])
                if self._once(f"busy{p}", 30):
                    log.warning(
                        "partition %s of %s is busy in the lake; waiting for its writer", p, self.topic
                    )
                continue
            waited = self.mono() - self.busy.pop(p)
            self.parts[p] = _Partition(runner, assigned_at=self.mono())
            self.broker.seek(p, runner.next_offset)
            self.broker.resume([p])
            log.info(
                "partition %s of %s resumes at offset %s (waited %.1fs for the lake)",
                p,
                self.topic,
                runner.next_offset,
                waited,
            )

    # ------------------------------------------------------------ messages

    async def take(self, partition: int, messages: Sequence[MessageLike]) -> None:
        """Messages of one calls partition, in offset order, as one poll returned them."""
        if self.tripped is not None:
            return  # stopping: the next worker reads these again from the lake's next offset
        await self._landed()
        await self._take(partition, messages)

    async def _take(self, partition: int, messages: Sequence[MessageLike]) -> None:
        part = self.parts.get(partition)
        if part is None or partition not in self.owned or partition in self.stalled:
            # fetched before a rebalance or a pause: the next owner (or the reopened runner)
            # reads them again from the lake's next offset
            self.counters["stale_messages"] += len(messages)
            return
        runner = part.runner
        suspect = self.mono() - part.assigned_at < SUSPECT_S
        admitted = part.guard.admit([m.offset for m in messages], runner.expected, suspect=suspect)
        for gap in admitted.real_gaps:
            log.warning(
                "partition %s of %s: offsets %s..%s do not exist (retention, compaction or transactions)",
                partition,
                self.topic,
                gap.expected,
                gap.seen - 1,
            )
        seek = part.guard.seek_due(self.mono(), RESEEK_S)
        if seek is not None:
            log.warning(
                "partition %s of %s: messages arrived past a gap; seeking back to %s",
                partition,
                self.topic,
                seek,
            )
            self.broker.seek(partition, seek)
        if all(admitted.taken):
            taken = messages
        else:
            taken = [m for m, ok in zip(messages, admitted.taken, strict=True) if ok]
            self.counters["gap_held_back"] += len(messages) - len(taken)
        keys = _Keys(taken)
        for chunk in _chunks(taken):
            try:
                fed = runner.feed(chunk, self.now_ms())
            except Tripped as trip:
                self._trip(trip)
                raise
            self._send_all(fed, keys)
            await self._pump(runner, keys)
        await self._land([partition])

    async def tick(self) -> None:
        """Release calls whose control streams have passed, land what is due, retry the stalled."""
        if self.tripped is not None:
            return
        await self._landed()
        for p, part in list(self.parts.items()):
            if p not in self.stalled:
                await self._pump(part.runner)
        await self._land(list(self.parts))
        await self._retry_stalled()
        if self.busy:
            await self._open_busy()
        for p, part in self.parts.items():
            seek = part.guard.seek_due(self.mono(), RESEEK_S)
            if seek is not None and p in self.owned:
                self.broker.seek(p, seek)

    async def _pump(
        self, runner: PartitionRunner, keys: Mapping[int, bytes | None] | None = None, *, drain: bool = False
    ) -> None:
        """Run the chain over what may be released, a bounded piece at a time, yielding to the
        loop between pieces: aiokafka's heartbeats run on this loop, and a worker that holds it
        for longer than the session timeout is thrown out of the group."""
        while True:
            try:
                dead = runner.pump(self.now_ms(), self.mono(), drain=drain, budget=PUMP_EVENTS)
            except Tripped as trip:
                self._trip(trip)
                raise
            self._send_all(dead, keys or {})
            await asyncio.sleep(0)
            if not runner.more:
                return

    def _trip(self, trip: Tripped) -> None:
        """Stop taking: pause every partition and land nothing more. What was taken since the
        last landed range is read again by the restarted (fixed) worker; a partition's committed
        offset never passes its lake."""
        self.tripped = trip
        self.counters["tripped"] += 1
        self.broker.pause(list(self.owned))
        log.error(
            "%s of %s; stopping the worker without landing them: fix the error and restart, "
            "it resumes at the lake's next offset (CALLPIPE_TRIP_INTERNAL_ERRORS sets the threshold)",
            trip,
            self.topic,
        )

    # ------------------------------------------------------------ dead letters

    def _send_all(self, dead: Sequence[Rejection], keys: Mapping[int, bytes | None]) -> None:
        for d in dead:
            self.send_dead(d, keys.get(d.offset), self.topic)

    def send_dead(self, d: Rejection, key: bytes | None, topic: str) -> None:
        self.counters[f"dead_letter.{d.reason.value}"] += 1
        log.warning(
            "dead letter: topic=%s partition=%s offset=%s index=%s stage=%s reason=%s",
            topic,
            d.partition,
            d.offset,
            d.index,
            d.stage.value,
            d.reason.value,
        )
        self.broker.send_dead(d, key, topic)

    async def dead_letters_durable(self) -> bool:
        """Whether every dead letter sent is in calls.dlq or, too large for it, kept whole in the
        lake's `_rejects/` with a stub in calls.dlq. Those the broker did not take for another
        reason (an outage) are sent again on the next call, and the ranges holding them do not
        land meanwhile: nothing is landed or committed past a message not yet dead-lettered."""
        retry, self._retry_dead = self._retry_dead, []
        for d, key, topic in retry:
            self.broker.send_dead(d, key, topic)
        refused = await self.broker.dead_sent()
        stubs = False
        for d, key, topic, exc in refused:
            if self.broker.too_large(exc) and not isinstance(d, _Stub):
                self.counters["dead_letter_kept_in_lake"] += 1
                keep_oversize(self.settings.lake, topic, d)
                self.broker.send_dead(stub_of(d), key, topic)
                stubs = True
            else:
                self._refused(d, key, topic, exc)
        if stubs:
            for d, key, topic, exc in await self.broker.dead_sent():
                self._refused(d, key, topic, exc)
        return not self._retry_dead

    @property
    def dead_to_resend(self) -> int:
        """Dead letters the broker did not take, waiting to be sent again."""
        return len(self._retry_dead)

    def _refused(self, d: Rejection, key: bytes | None, topic: str, exc: BaseException) -> None:
        self.counters["dead_letter_retries"] += 1
        if self._once(f"dlq.{type(exc).__name__}", 10):
            log.error("dead letters not taken by the broker (%s); retrying", type(exc).__name__)
        self._retry_dead.append((d, key, topic))

    # ------------------------------------------------------------ landing

    async def _land(self, partitions: Iterable[int]) -> None:
        """Land the due ranges of `partitions`: at once, or (landing behind) in a task while the
        loop goes on, one landing at a time; a partition due meanwhile lands after it."""
        if not self.land_behind:
            await self._flush(partitions)
            return
        if self._landing is not None:
            if not self._landing.done():
                return  # one landing at a time: a range is prepared only after the last landed
            await self._landed()
        due = self._due(partitions, force=False)
        if not due or self.tripped is not None:
            return
        if not await self.dead_letters_durable():  # a range's dead letters are in Kafka before it lands
            return
        prepared = self._prepare(due)  # at once: what is taken from here on is the next range's
        self._landing = asyncio.create_task(self._write(prepared, commit=True))

    async def _landed(self) -> None:
        """A finished landing behind: its errors raised."""
        task = self._landing
        if task is None or not task.done():
            return
        self._landing = None
        task.result()

    async def settle(self) -> None:
        """Wait for the landing behind, if any, and take what waited for it."""
        while self._landing is not None:
            await asyncio.wait([self._landing])
            await self._landed()

    def _due(self, partitions: Iterable[int], *, force: bool) -> list[int]:
        mono = self.mono()
        return [
            p
            for p in partitions
            if p in self.parts and p not in self.stalled and (force or self.parts[p].runner.due(mono))
        ]

    async def _flush(self, partitions: Iterable[int], *, force: bool = False, commit: bool = True) -> None:
        if self.tripped is not None:
            return  # a tripped runner's handed-over ranges may miss dead letters that were never sent
        due = self._due(partitions, force=force)
        if not due:
            return
        if not await self.dead_letters_durable():  # a range's dead letters are in Kafka before it lands
            return
        await self._write(self._prepare(due), commit=commit)

    def _prepare(self, due: list[int]) -> list[tuple[int, PartitionRunner, Landing | BaseException]]:
        """Stage the due partitions' ranges (or the error that refused it, raised after the
        landing as a failed flush would be)."""
        prepared: list[tuple[int, PartitionRunner, Landing | BaseException]] = []
        for p in due:
            part = self.parts.get(p)
            if part is None:
                continue
            try:
                landing = part.runner.prepare()
            except Exception as exc:
                prepared.append((p, part.runner, exc))
                continue
            if landing is not None:
                prepared.append((p, part.runner, landing))
        return prepared

    async def _write(
        self, prepared: list[tuple[int, PartitionRunner, Landing | BaseException]], *, commit: bool
    ) -> None:
        offsets: dict[int, int] = {}
        began = time.perf_counter()
        # The due partitions land at once, each in a thread (fsync-bound, and Parquet encoding
        # runs without the GIL): partitions due together are durable together, not one after
        # another, and the loop stays free.
        outcomes = await asyncio.gather(
            *(_written(runner, landing) for _p, runner, landing in prepared), return_exceptions=True
        )
        failed: BaseException | None = None
        for (p, runner, landing), flushed in zip(prepared, outcomes, strict=True):
            if isinstance(flushed, OSError):
                self._stall(p, flushed)
                continue
            if isinstance(flushed, BaseException):
                failed = failed or flushed
                continue
            if isinstance(landing, Landing):
                runner.landed(landing)
                self.counters["flushes"] += 1
                self.landed.update(landing.counts)
                self.last_landed_ms[p] = self.now_ms()
                log.info(
                    "landed %s offsets %s..%s: %s vault, %s analytics rows in %s files (%.2fs)",
                    flushed.source,
                    flushed.first,
                    flushed.last,
                    flushed.rows.get("vault", 0),
                    flushed.rows.get("analytics", 0),
                    len(flushed.files),
                    time.perf_counter() - began,
                )
                offsets[p] = runner.next_offset
        if commit and offsets:
            await self.broker.commit({p: o for p, o in offsets.items() if p in self.owned})
        if failed is not None:
            raise failed

    def _stall(self, partition: int, exc: OSError) -> None:
        """A flush failed on the file system: drop the writer, pause, reopen after a back-off."""
        part = self.parts.pop(partition)
        part.runner.close()
        mono = self.mono()
        stalled = self.stalled.get(partition) or _Stalled(since=mono, retry_at=mono)
        stalled.failures += 1
        stalled.retry_at = mono + RETRY_S[min(stalled.failures, len(RETRY_S)) - 1]
        self.stalled[partition] = stalled
        self.counters["flush_failures"] += 1
        self.broker.pause([partition])
        if self._once(f"stall.{exc.errno}", 10):
            log.error(
                "landing partition %s of %s failed (%s, errno %s); paused, retrying in %.0fs",
                partition,
                self.topic,
                type(exc).__name__,
                exc.errno,
                stalled.retry_at - mono,
            )

    async def _retry_stalled(self) -> None:
        mono = self.mono()
        for p, stalled in sorted(self.stalled.items()):
            if mono < stalled.retry_at or p not in self.owned:
                continue
            try:
                runner = self._runner(p)  # recover() removes the failed flush's temp files
            except (SourceBusy, OSError) as exc:
                stalled.failures += 1
                stalled.retry_at = mono + RETRY_S[min(stalled.failures, len(RETRY_S)) - 1]
                if self._once("reopen", 10):
                    log.error("reopening partition %s of %s failed (%s)", p, self.topic, type(exc).__name__)
                continue
            del self.stalled[p]
            self.parts[p] = _Partition(runner, assigned_at=mono)
            self.broker.seek(p, runner.next_offset)
            self.broker.resume([p])
            log.warning(
                "partition %s of %s resumes at offset %s after %.0fs of failed landings",
                p,
                self.topic,
                runner.next_offset,
                mono - stalled.since,
            )

    def _once(self, key: str, every_s: float) -> bool:
        """Whether a repeated warning may be logged now (at most once per `every_s`)."""
        mono = self.mono()
        last = self._logged.get(key)
        if last is not None and mono - last < every_s:
            return False
        self._logged[key] = mono
        return True


async def _written(runner: PartitionRunner, landing: Landing | BaseException) -> Flushed:
    """A prepared range written in a thread (a preparation that failed raises its error)."""
    if isinstance(landing, BaseException):
        raise landing
    return await asyncio.to_thread(runner.write, landing)


# ---------------------------------------------------------------- oversize dead letters


def keep_oversize(lake: Path, topic: str, d: Rejection) -> None:
    """A dead letter too large for calls.dlq, kept whole in the lake's restricted area (mode
    0600, covered by erase and export like every file under `_rejects/`). `topic` may carry a
    test prefix; the source is named after the topic itself, like the lake's other sources."""
    source = source_name(".".join(topic.split(".")[-2:]), d.partition)
    index = d.index if d.index is not None else 0
    write_rejects(lake, f"{source}-i{index:06d}", d.offset, d.offset, [d])


def stub_of(d: Rejection) -> Rejection:
    """What calls.dlq holds of an oversize dead letter: no bytes, its size and SHA-256 in headers."""
    digest = hashlib.sha256(d.raw).hexdigest()
    return _Stub(
        d.reason, d.stage, d.partition, d.offset, d.index, b"", d.field, size=len(d.raw), sha256=digest
    )


@dataclass(frozen=True, slots=True)
class _Stub(Rejection):
    size: int = 0
    sha256: str = ""

    def headers(self, topic: str) -> list[tuple[str, bytes]]:
        return [
            *Rejection.headers(self, topic),
            ("callpipe.kept", REJECTS_DIR.encode()),
            ("callpipe.size", str(self.size).encode()),
            ("callpipe.sha256", self.sha256.encode()),
        ]
