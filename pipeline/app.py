"""The faust app: thin agents that move batches between Kafka and the processing chain.

    consent.events   -> agent `track_consent`  -> Table `consent`   (changelog backed)
    privacy.requests -> agent `track_requests` -> Table `subjects`  (changelog backed)
    calls.raw        -> agent `process_calls`  -> PartitionRunner per partition -> lake
                                                  dead letters     -> calls.dlq

Offsets: the calls agent takes events without acknowledging them (`noack_take`) and acks them
only once the lake file holding their offsets is durable, so faust never commits past what the
lake holds. A starting runner asks the lake where its partition ends and skips what it holds,
so a replay after a crash lands nothing twice. A revoked partition is flushed first, and so is
every partition when the worker stops.

Rebalances: faust can lose messages around a rebalance (see pipeline/offsets.py), so the worker
does not trust the order it is given. Each owned partition's messages are checked against the
offset the runner expects next; at a gap the worker seeks back and waits for the re-read, and a
watchdog seeks back a partition whose log goes on past what arrived but stays silent. Events
still buffered for a partition this worker no longer owns are left to its new owner.

The control streams are applied one event at a time (a table write needs its event), and each
applied event moves its partition's event-time watermark, which releases waiting calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import faust
from faust.types import TP

from pipeline.codec import decode_value
from pipeline.consent import AccountState, EventTimeMerger, Stream, record_consent, record_request
from pipeline.keys import PseudonymKey
from pipeline.offsets import OffsetGuard
from pipeline.reasons import Reason, Stage
from pipeline.runner import DeadLetter, PartitionRunner
from pipeline.settings import Settings
from pipeline.validate import strip_secrets_json
from sinks.lake import SourceBusy, source_name

log = logging.getLogger("callpipe.worker")

CALLS, CONSENT, REQUESTS, DLQ = "calls.raw", "consent.events", "privacy.requests", "calls.dlq"
APP_ID = "callpipe-stream"
TAKE_MAX = 2_000  # messages per agent batch
TAKE_WITHIN_S = 0.25
TICK_S = 0.25
RESEEK_S = 2.0  # a seek back to a gap is repeated if its re-read has not come after this long
STALL_S = 5.0  # an owned partition silent this long while its log goes on past it is sought back
SUSPECT_S = 60.0  # gaps this soon after a rebalance are held back for a re-read (pipeline/offsets.py)


CHUNK_BYTES = 2 * 1024 * 1024  # message bytes fed to the chain between two yields to the loop


def _chunks(events: list[Any]) -> list[list[Any]]:
    """A take counts messages, not events: 2,000 messages of 500 events each would hold the event
    loop (and the group heartbeat) for tens of seconds. Feed them in pieces of bounded size."""
    out: list[list[Any]] = [[]]
    size = 0
    for event in events:
        value = event.message.value
        size += len(value) if value else 0
        out[-1].append(event)
        if size >= CHUNK_BYTES:
            out.append([])
            size = 0
    return [chunk for chunk in out if chunk]


def now_ms() -> int:
    return int(time.time() * 1000)


def create_app(settings: Settings, key: PseudonymKey, *, prefix: str = "") -> faust.App:
    """The worker app. `prefix` isolates topic names and the consumer group (tests)."""
    datadir = settings.home / "faust" / f"{prefix}{APP_ID}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{prefix}{APP_ID}",
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        web_enabled=False,
        datadir=str(datadir),
        stream_wait_empty=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # A worker killed without leaving the group holds its partitions until the session times
        # out; 10 s (not faust's 60 s) lets a restarted or surviving worker take over quickly.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        producer_max_request_size=10 * 1024 * 1024,
        consumer_max_fetch_size=8 * 1024 * 1024,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    calls = app.topic(prefix + CALLS, partitions=settings.partitions, **raw)  # type: ignore[arg-type]
    consent = app.topic(prefix + CONSENT, partitions=settings.partitions, **raw)  # type: ignore[arg-type]
    requests = app.topic(prefix + REQUESTS, partitions=settings.partitions, **raw)  # type: ignore[arg-type]
    dlq = app.topic(prefix + DLQ, partitions=settings.partitions, **raw)  # type: ignore[arg-type]
    consent_table = app.Table("consent", default=None, partitions=settings.partitions)
    subjects_table = app.Table("subjects", default=None, partitions=settings.partitions)

    def states_for(accounts: Iterable[str]) -> Mapping[str, AccountState]:
        out: dict[str, AccountState] = {}
        for account in accounts:
            c = consent_table.get(account)
            r = subjects_table.get(account)
            if c is None and r is None:
                continue
            out[account] = AccountState(
                consents=AccountState.from_json(c).consents if c else (),
                requests=AccountState.from_json(r).requests if r else (),
            )
        return out

    runners: dict[int, PartitionRunner] = {}
    mergers: dict[int, EventTimeMerger[Any]] = {}

    def merger(partition: int) -> EventTimeMerger[Any]:
        found = mergers.get(partition)
        if found is None:
            found = mergers[partition] = EventTimeMerger(settings.max_idle_ms, now_ms())
        return found

    held: dict[int, list[Any]] = defaultdict(list)  # unacked faust events per calls partition
    owned: set[int] = set()  # calls partitions assigned to this worker now
    guards: dict[int, OffsetGuard] = {}
    heard: dict[int, float] = {}  # monotonic time an owned partition last delivered (or was sought)
    rebalanced = [time.monotonic()]  # when the last rebalance ended
    lock = asyncio.Lock()
    counters: dict[str, int] = defaultdict(int)

    async def runner(partition: int) -> PartitionRunner:
        found = runners.get(partition)
        waited = 0.0
        while found is None:
            try:
                found = PartitionRunner(
                    lake=settings.lake,
                    source=source_name(CALLS, partition),
                    partition=partition,
                    settings=settings,
                    key=key,
                    states_for=states_for,
                    now_ms=now_ms(),
                    merger=merger(partition),
                )
            except SourceBusy:
                # The previous owner of the partition (a worker being revoked, or dying) still
                # holds its lake writer; it releases it when it has flushed or when it exits.
                if waited > 120:
                    raise
                if waited == 0:
                    log.warning("partition %s of %s is busy in the lake; waiting", partition, CALLS)
                await asyncio.sleep(0.5)
                waited += 0.5
                continue
            runners[partition] = found
            log.info("partition %s of %s resumes at offset %s", partition, CALLS, found.next_offset)
        return found

    async def send_dead(
        dead: list[DeadLetter], keys: Mapping[tuple[int, int], bytes | None], source: str = prefix + CALLS
    ) -> None:
        for d in dead:
            counters[f"dead_letter.{d.reason.value}"] += 1
            log.warning(
                "dead letter: topic=%s partition=%s offset=%s index=%s stage=%s reason=%s",
                source,
                d.partition,
                d.offset,
                d.index,
                d.stage.value,
                d.reason.value,
            )
            await dlq.send(
                key=keys.get((d.partition, d.offset)),
                value=d.raw,
                headers=d.headers(source),
                partition=d.partition,
            )

    async def flush(partitions: Iterable[int], *, force: bool = False) -> None:
        mono = time.monotonic()
        for partition in list(partitions):
            r = runners.get(partition)
            if r is None or not (force or r.due(mono)):
                continue
            await app.producer.flush()  # dead letters of the range are in Kafka before it lands
            flushed = await asyncio.to_thread(r.flush)  # fsync-bound: keep the loop (heartbeats) free
            if flushed is not None:
                counters["flushes"] += 1
                log.info(
                    "landed %s offsets %s..%s: %s vault, %s analytics rows in %s files",
                    flushed.source,
                    flushed.first,
                    flushed.last,
                    flushed.rows.get("vault", 0),
                    flushed.rows.get("analytics", 0),
                    len(flushed.files),
                )
            done: list[Any] = []
            keep: list[Any] = []
            for event in held[partition]:
                (done if event.message.offset < r.next_offset else keep).append(event)
            held[partition] = keep
            for event in done:
                event.ack()

    async def pump_all(*, drain: bool = False) -> None:
        keys: dict[tuple[int, int], bytes | None] = {}
        for r in runners.values():
            dead = r.pump(now_ms(), time.monotonic(), drain=drain)
            if dead:
                await send_dead(dead, keys)
        await flush(list(runners))

    async def track(
        stream: faust.StreamT, topic: str, record_name: str, table: Any, record: Any, kind: Stream
    ) -> None:
        """Apply a control stream to its table one event at a time (a table write needs its event);
        what cannot be decoded or applied goes to calls.dlq, counted, never a crash."""
        async for event in stream.events():
            msg = event.message
            decoded = decode_value(event.value, record_name, headers=event.headers)
            dead = [
                DeadLetter(r.reason, r.stage, msg.partition, msg.offset, r.index, runner_mask(r.raw))
                for r in decoded.rejections
            ]
            for rec in decoded.records:
                try:
                    account = rec["account_id"]
                    prior = table.get(account)
                    table[account] = record(AccountState.from_json(prior) if prior else None, rec).to_json()
                    merger(msg.partition).observe(kind, rec["at"], now_ms())
                except Exception as exc:  # the guard: one bad record must not stop the table
                    log.error(
                        "%s failed: partition=%s offset=%s error=%s",
                        topic,
                        msg.partition,
                        msg.offset,
                        type(exc).__name__,
                    )
                    dead.append(
                        DeadLetter(Reason.INTERNAL, Stage.CONSENT, msg.partition, msg.offset, None, b"")
                    )
            if dead:
                await send_dead(dead, {(msg.partition, msg.offset): msg.key}, topic)

    def runner_mask(raw: bytes) -> bytes:
        return strip_secrets_json(raw, settings.policy.secret_names)

    @app.agent(consent)
    async def track_consent(stream: faust.StreamT) -> None:
        await track(stream, prefix + CONSENT, "ConsentEvent", consent_table, record_consent, Stream.CONSENT)

    @app.agent(requests)
    async def track_requests(stream: faust.StreamT) -> None:
        await track(
            stream, prefix + REQUESTS, "PrivacyRequest", subjects_table, record_request, Stream.REQUESTS
        )

    def calls_tp(partition: int) -> TP:
        return TP(prefix + CALLS, partition)

    async def seek_back(partition: int, offset: int, why: str) -> None:
        log.warning("partition %s of %s: %s; seeking back to offset %s", partition, CALLS, why, offset)
        heard[partition] = time.monotonic()
        try:
            await app.consumer.seek(calls_tp(partition), offset)
        except Exception as exc:  # a rebalance took the partition meanwhile: its new owner has it
            log.warning("seek of partition %s of %s failed: %s", partition, CALLS, type(exc).__name__)

    async def admit(partition: int, r: PartitionRunner, events: list[Any]) -> list[Any]:
        """The events of an owned partition the runner may take (pipeline/offsets.py)."""
        guard = guards.setdefault(partition, OffsetGuard())
        suspect = time.monotonic() - rebalanced[0] < SUSPECT_S
        admitted = guard.admit([e.message.offset for e in events], r.expected, suspect=suspect)
        for gap in admitted.real_gaps:
            log.warning(
                "partition %s of %s: offsets %s..%s do not exist (retention, compaction or transactions)",
                partition,
                CALLS,
                gap.expected,
                gap.seen - 1,
            )
        offset = guard.seek_due(time.monotonic(), RESEEK_S)
        if offset is not None:
            await seek_back(partition, offset, "messages arrived past a gap")
        counters["gap_held_back"] += admitted.taken.count(False)
        return [e for e, ok in zip(events, admitted.taken, strict=True) if ok]

    async def watch() -> None:
        """Seek back owned partitions that stay silent while their log goes on past them (the
        framework dropped their messages and moved on), and gaps whose re-read did not come."""
        mono = time.monotonic()
        for partition in sorted(owned):
            guard = guards.get(partition)
            offset = guard.seek_due(mono, RESEEK_S) if guard is not None else None
            if offset is not None:
                await seek_back(partition, offset, "the re-read after a gap has not come")
                continue
            if mono - heard.get(partition, mono) < STALL_S:
                continue
            try:
                end = app.consumer.highwater(calls_tp(partition))
            except Exception:  # mid-rebalance: the partition is not assigned at the moment
                end = None
            if end is None or (end == 0 and partition not in runners):
                heard[partition] = mono
                continue
            r = await runner(partition)
            if end > r.expected:
                await seek_back(partition, r.expected, f"silent for {STALL_S:.0f}s below the log end")
            else:
                heard[partition] = mono

    @app.agent(calls)
    async def process_calls(stream: faust.StreamT) -> None:
        async for events in stream.noack_take(TAKE_MAX, within=TAKE_WITHIN_S):  # type: ignore[attr-defined]
            async with lock:
                by_partition: dict[int, list[Any]] = defaultdict(list)
                for event in events:
                    by_partition[event.message.partition].append(event)
                keys = {(e.message.partition, e.message.offset): e.message.key for e in events}
                for partition, part_events in by_partition.items():
                    if partition not in owned:
                        # Taken before a rebalance moved the partition away: its new owner
                        # reads these from the committed offset; landing them here would
                        # hold the partition's lake writer that the owner is waiting for.
                        counters["stale_events"] += len(part_events)
                        continue
                    r = await runner(partition)
                    part_events = await admit(partition, r, part_events)
                    held[partition].extend(part_events)
                    for chunk in _chunks(part_events):
                        dead = r.feed([e.message for e in chunk], now_ms())
                        await send_dead(dead, keys)
                        await pump_all()
                        await asyncio.sleep(0)  # let heartbeats, fetches and the consumer agents run
                done = time.monotonic()  # a long take is not silence: measure from its end
                for partition in by_partition:
                    if partition in owned:
                        heard[partition] = done

    @app.timer(TICK_S)
    async def tick() -> None:
        async with lock:
            await pump_all()
            await watch()

    async def release(partitions: Iterable[int]) -> None:
        """Land everything taken from `partitions` (calls waiting for the control streams are
        released: their owner-to-be would wait just the same) and let go of their lake writers."""
        gone = [p for p in partitions if p in runners]
        keys: dict[tuple[int, int], bytes | None] = {}
        for partition in gone:
            dead = runners[partition].pump(now_ms(), time.monotonic(), drain=True)
            if dead:
                await send_dead(dead, keys)
        await flush(gone, force=True)
        for partition in gone:
            runners.pop(partition).close()
            held.pop(partition, None)
            mergers.pop(partition, None)
        for partition in partitions:
            guards.pop(partition, None)
            heard.pop(partition, None)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: set[Any], **_: Any) -> None:
        async with lock:
            owned.clear()
            owned.update(tp.partition for tp in assigned if tp.topic == prefix + CALLS)
            mono = time.monotonic()
            rebalanced[0] = mono
            for partition in owned:
                heard[partition] = mono

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[Any], **_: Any) -> None:
        async with lock:
            gone = {tp.partition for tp in revoked if tp.topic == prefix + CALLS}
            owned.difference_update(gone)
            await release(gone)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def on_shutdown(sender: Any, **_: Any) -> None:
        """A stopping worker lands what it has taken, so its successor starts where it ended."""
        async with lock:
            owned.clear()
            await release(list(runners))

    app.callpipe_counters = counters  # type: ignore[attr-defined]
    return app
