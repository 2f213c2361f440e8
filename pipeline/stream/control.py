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

Reading the control topics from the beginning grows with their history (a million accounts'
consent is minutes of reading), so the reader keeps a snapshot of the state beside the positions
it was read up to (`ControlSnapshot`, a 0600 file under CALLPIPE_HOME/state written every
SNAPSHOT_EVERY_S and at stop, in the manner of Kafka Streams' checkpoint of a global store). A
restart loads it and reads only what came after, once it has proved the topics are the same logs:
the record at each partition's snapshot position must still be there with the same fingerprint.
Anything else (another broker, a re-created topic, records removed by retention, a torn file or
one of an unknown version) falls back to reading every partition from the beginning. Each
account's state is saved as it is held, packed (pipeline/consent.py), in base64; a version-1
file, which kept the histories as lists, is still read and packed to the same state.

`ControlState` is pure (no Kafka, no clock); `ControlReader` is its Kafka edge.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import hashlib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.codec import decode_value
from pipeline.consent import (
    AccountState,
    Stream,
    Watermarks,
    account_state,
    is_state,
    record_consent,
    record_request,
)
from sinks import stats
from sinks.files import fsync_dir, write_synced

log = logging.getLogger("callpipe.control")

RECORDS = {Stream.CONSENT: "ConsentEvent", Stream.REQUESTS: "PrivacyRequest"}


class ControlState:
    """Every account's consent and request history, and the event-time progress of every control
    partition. `listeners` are told the account of each applied request (a runner forgets the
    plaintext identifiers it cached for an erased account). `counts`, per stream, the records
    applied (`consent_applied`), rejected by reason (`consent_rejected.bad_time`, the names of
    `sinks.stats.rejected`) and failed to apply (`consent_errors`): the worker's metrics."""

    def __init__(self, max_idle_ms: int, now_ms: int) -> None:
        self.accounts: dict[str, AccountState] = {}
        self.watermarks = Watermarks(max_idle_ms, now_ms, wait_at_start=False)  # loaded whole first
        self.counts: Counter[str] = Counter()
        self.listeners: list[Callable[[str, str], None]] = []

    def apply(self, stream: Stream, value: bytes | None, headers: Any, partition: int, now_ms: int) -> int:
        """Apply one control message; returns how many of its records were applied (what does
        not decode is skipped here and dead-lettered by the partition's owner)."""
        decoded = decode_value(value, RECORDS[stream], headers=headers)
        for rejection in decoded.rejections:  # counted here, dead-lettered by the partition's owner
            self.counts[stats.rejected(stream.value, rejection.reason.value)] += 1
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
                self.counts[f"{stream.value}_errors"] += 1
                log.error(
                    "%s record not applied: partition=%s error=%s", stream, partition, type(exc).__name__
                )
        self.counts[f"{stream.value}_applied"] += applied
        return applied

    def states_for(self, accounts: Iterable[str]) -> Mapping[str, AccountState]:
        found = self.accounts
        return {a: found[a] for a in accounts if a in found}


SNAPSHOT_VERSION = 2  # 1 kept histories as lists ([at, purpose, granted], [at, kind, id]); still read
SNAPSHOT_EVERY_S = 60.0
# How often the control consumer refreshes its metadata (aiokafka's metadata_max_age_ms, on the
# connection it has): a partition added to a control topic is seen within this. Set by whoever
# makes the consumer (`consumer_factory`); aiokafka's default is 5 minutes.
METADATA_MAX_AGE_MS = 10_000
SNAPSHOT_MIN_APPLIED = 1_000  # fewer new records than this are cheaper to re-read than to snapshot


def fingerprint(timestamp: int, key: bytes | None, value: bytes | None) -> str:
    """What identifies a control record in its log (a digest: the snapshot quotes no contents)."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(timestamp.to_bytes(8, "big", signed=True))
    for part in (key, value):
        digest.update(b"\x00" if part is None else b"\x01" + len(part).to_bytes(4, "big") + part)
    return digest.hexdigest()


@dataclass
class ControlSnapshot:
    """The control state as read up to `positions`: per (topic, partition), the offset after the
    last record applied and that record's fingerprint."""

    topics: dict[str, str]  # stream -> topic name
    positions: dict[tuple[str, int], tuple[int, str]] = field(default_factory=dict)
    event_ms: dict[tuple[str, int], int] = field(default_factory=dict)  # stream, partition -> watermark
    accounts: dict[str, AccountState] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "version": SNAPSHOT_VERSION,
                "topics": self.topics,
                "positions": [[t, p, o, f] for (t, p), (o, f) in self.positions.items()],
                "event_ms": [[s, p, ms] for (s, p), ms in self.event_ms.items()],
                "accounts": {
                    a: binascii.b2a_base64(s, newline=False).decode() for a, s in self.accounts.items()
                },
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ControlSnapshot:
        doc = orjson.loads(data)
        version = doc.get("version")
        if version not in (1, SNAPSHOT_VERSION):
            raise ValueError("unknown snapshot version")
        accounts: dict[str, Any] = doc.pop("accounts")  # each state is freed once converted
        for a in accounts:
            if version == 1:  # the same histories as the new form would hold: the positions stand
                c, r = accounts[a]
                accounts[a] = account_state(c, r)
            else:
                accounts[a] = _state_of(accounts[a])
        return cls(
            topics={str(s): str(t) for s, t in doc["topics"].items()},
            positions={(str(t), int(p)): (int(o), str(f)) for t, p, o, f in doc["positions"]},
            event_ms={(str(s), int(p)): int(ms) for s, p, ms in doc["event_ms"]},
            accounts=accounts,
        )


def _state_of(text: str) -> AccountState:
    """A state as a snapshot keeps it (base64), checked to be whole entries."""
    state = binascii.a2b_base64(text, strict_mode=True)
    if not is_state(state):
        raise ValueError("not an account state")
    return AccountState(state)


def snapshot_path(home: Path, prefix: str, reader: str = "control") -> Path:
    """Where a worker keeps the control snapshot of its topic prefix (`reader`: another reader of
    other topics keeps its own, e.g. `jobs requests`' of consent.events alone)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", prefix) or "default"
    return home / "state" / f"{reader}-{name}.snapshot"


def load_snapshot(path: Path, topics: Mapping[Stream, str]) -> ControlSnapshot | None:
    """The snapshot at `path` if it is whole and of these topics; None otherwise (read from the start)."""
    try:
        snap = ControlSnapshot.from_bytes(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("control snapshot not used (%s); reading the control topics whole", type(exc).__name__)
        return None
    if snap.topics != {s.value: t for s, t in topics.items()}:
        log.warning("control snapshot is of other topics; reading the control topics whole")
        return None
    return snap


def save_snapshot(path: Path, snap: ControlSnapshot) -> None:
    """Write the snapshot atomically (temp file, fsync, rename), readable by its owner only. The
    temp name carries the pid: two workers on one host may save at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_synced(fd, snap.to_bytes())  # a large snapshot takes more than one os.write
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_dir(path.parent)


class ControlReader:
    """Reads every partition of the control topics into a `ControlState` (no consumer group: each
    worker reads all of them). `ready` is set once the reader has reached the end offsets that
    the control topics had when it started. `partitions` tells the partitions the topics have on
    the broker now (`pipeline.kafka_metadata.topic_partitions`), looked up at start; after that
    the consumer's own metadata (refreshed every METADATA_MAX_AGE_MS when the factory sets it)
    shows partitions added to a control topic while the reader runs (carriers grow topics as they
    grow): each is read from its start once seen, not ignored until a restart."""

    def __init__(
        self,
        topics: Mapping[Stream, str],
        state: ControlState,
        consumer_factory: Callable[[], Any],
        partitions: Callable[[Iterable[str]], Awaitable[Mapping[str, Collection[int]]]],
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        snapshot: Path | None = None,
    ) -> None:
        self.topics = dict(topics)
        self.state = state
        self._factory = consumer_factory
        self._lookup = partitions
        self._now_ms = now_ms
        self.ready = asyncio.Event()
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stream_of: dict[str, Stream] = {topic: stream for stream, topic in self.topics.items()}
        self.snapshot_path = snapshot
        self._positions: dict[tuple[str, int], tuple[int, str]] = {}  # as in ControlSnapshot
        self._applied_since_snapshot = 0
        self._saving: asyncio.Future[None] | None = None
        self.resumed_from_snapshot = False

    def snapshot(self) -> ControlSnapshot:
        """The state as read so far (dict copies: the values are immutable, so this is consistent)."""
        return ControlSnapshot(
            topics={s.value: t for s, t in self.topics.items()},
            positions=dict(self._positions),
            event_ms={(s.value, p): ms for (s, p), ms in self.state.watermarks.event_times().items()},
            accounts=dict(self.state.accounts),
        )

    async def save(self) -> None:
        """Write a snapshot if there is one to write and something is new since the last one. The
        write runs in a thread and is shielded: a reader cancelled meanwhile still leaves a whole
        file, and `stop` waits for it."""
        if self._saving is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._saving)
        if self.snapshot_path is None or not self.ready.is_set() or not self._applied_since_snapshot:
            return
        snap, applied = self.snapshot(), self._applied_since_snapshot
        self._applied_since_snapshot = 0
        started = time.monotonic()
        self._saving = asyncio.ensure_future(asyncio.to_thread(save_snapshot, self.snapshot_path, snap))
        try:
            await asyncio.shield(self._saving)
        except OSError as exc:  # a snapshot only saves reading time: the worker goes on without it
            self._applied_since_snapshot += applied
            log.warning("control snapshot not written (%s)", type(exc).__name__)
            return
        log.info(
            "control snapshot written: %s accounts in %.1fs", len(snap.accounts), time.monotonic() - started
        )

    async def _resume(self, tps: list[Any]) -> None:
        """Start from the snapshot if every partition still holds its last applied record."""
        from aiokafka import TopicPartition

        snap = load_snapshot(self.snapshot_path, self.topics) if self.snapshot_path is not None else None
        if snap is None:
            await self._consumer.seek_to_beginning(*tps)
            return
        known = {(tp.topic, tp.partition) for tp in tps}
        proved = set(snap.positions) <= known
        if proved:
            # Every partition is positioned before anything is fetched: a fetch for a partition
            # without a position would start it at the beginning.
            for tp in tps:
                at = snap.positions.get((tp.topic, tp.partition))
                if at is None:
                    await self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, at[0] - 1)
        for (topic, partition), (offset, print_) in snap.positions.items() if proved else ():
            try:
                msg = await asyncio.wait_for(self._consumer.getone(TopicPartition(topic, partition)), 10.0)
            except TimeoutError:
                proved = False
                break
            if msg.offset != offset - 1 or fingerprint(msg.timestamp, msg.key, msg.value) != print_:
                proved = False
                break
        if not proved:
            log.warning("control snapshot does not match the control topics; reading them whole")
            await self._consumer.seek_to_beginning(*tps)
            return
        self.state.accounts.update(snap.accounts)
        now = self._now_ms()
        for (stream, partition), ms in snap.event_ms.items():
            self.state.watermarks.observe(Stream(stream), ms, now, partition)
        self._positions = dict(snap.positions)
        self.resumed_from_snapshot = True
        log.info("control snapshot loaded: %s accounts", len(snap.accounts))

    async def start(self) -> None:
        from aiokafka import TopicPartition

        self._consumer = self._factory()
        await self._consumer.start()
        found = await self._partitions()
        tps = [TopicPartition(topic, p) for topic in self.topics.values() for p in found[topic]]
        self._consumer.assign(tps)
        await self._resume(tps)
        ends = await self._consumer.end_offsets(tps)
        self._task = asyncio.create_task(self._run(tps, dict(ends)))

    async def _partitions(self) -> dict[str, list[int]]:
        """Every control topic's partitions, waiting ~10 s for topics being created."""
        for _ in range(100):
            found = await self._lookup(self.topics.values())
            missing = [topic for topic in self.topics.values() if not found.get(topic)]
            if not missing:
                return {topic: sorted(found[topic]) for topic in self.topics.values()}
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {missing[0]} does not exist; run `callpipe topics create`")

    async def _run(self, tps: list[Any], ends: dict[Any, int]) -> None:
        pending = {
            tp for tp, end in ends.items() if end > self._positions.get((tp.topic, tp.partition), (0, ""))[0]
        }
        if not pending:
            self.ready.set()
        last_snapshot = last_lookup = time.monotonic()
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
                done = self._positions.get((tp.topic, tp.partition), (0, ""))[0]
                messages = [msg for msg in messages if msg.offset >= done]  # never re-read, never back
                for msg in messages:
                    self.state.apply(stream, msg.value, msg.headers, tp.partition, now)
                if messages:
                    last = messages[-1]
                    self._positions[(tp.topic, tp.partition)] = (
                        last.offset + 1,
                        fingerprint(last.timestamp, last.key, last.value),
                    )
                    self._applied_since_snapshot += len(messages)
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
                if not self.resumed_from_snapshot and self._applied_since_snapshot >= SNAPSHOT_MIN_APPLIED:
                    await self.save()
                    last_snapshot = time.monotonic()
            if time.monotonic() - last_lookup >= 1.0:
                tps = await self._grow(tps)
                last_lookup = time.monotonic()
            if (
                time.monotonic() - last_snapshot >= SNAPSHOT_EVERY_S
                and self._applied_since_snapshot >= SNAPSHOT_MIN_APPLIED
            ):
                await self.save()
                last_snapshot = time.monotonic()
            await asyncio.sleep(0)

    async def _grow(self, tps: list[Any]) -> list[Any]:
        """`tps` and the control partitions added since, as the consumer's metadata shows them
        (read without a request: no new connection, nothing to fail in an outage); the added ones
        are read from their start, the others go on from where they are."""
        from aiokafka import TopicPartition

        found = {topic: self._consumer.partitions_for_topic(topic) or () for topic in self.topics.values()}
        known = {(tp.topic, tp.partition) for tp in tps}
        added = [
            TopicPartition(topic, p)
            for topic in self.topics.values()
            for p in sorted(found.get(topic, ()))
            if (topic, p) not in known
        ]
        if not added:
            return tps
        # assign() starts a new assignment: every partition read so far is put back where it was
        at = {tp: await self._consumer.position(tp) for tp in tps}
        self._consumer.assign(tps + added)
        for tp, offset in at.items():
            self._consumer.seek(tp, offset)
        await self._consumer.seek_to_beginning(*added)
        log.info(
            "control reader: %s partitions added to the control topics, read from their start", len(added)
        )
        return tps + added

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
        await self.save()
        if self._consumer is not None:
            await self._consumer.stop()
