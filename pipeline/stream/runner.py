"""One source partition's way from messages to the lake, shared by the stream worker and
`callpipe ingest` so both give the same rows for the same input.

    feed(messages)  decode (batch-wise); undecodable input becomes dead letters at once;
                    decoded calls wait in an EventTimeMerger until the consent and request
                    streams of the partition have passed their time (or been idle).
    pump()          release what may go, run the chain, hand the rows to the LakeWriter with
                    `through` = the last offset whose every event has been handed over.
    flush()         land the rows of offsets next..through durably, with a stats record of
                    what happened to every event of that range (`<lake>/_stats/`).

Messages are released whole and in offset order: the merger's sort key is the running maximum
of event times, so `through` is exact and a crash replays whole messages only. The lake is the
source of truth for what was written: offsets below `LakeWriter.next_offset` are skipped.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.chain import route_batch
from pipeline.chain_columns import route_columns
from pipeline.chain_tables import Tables, concat_tables, tables_of
from pipeline.codec import Decoded, Lineage, MessageLike, decode_value, plain_record
from pipeline.consent import AccountState, EventTimeMerger
from pipeline.keys import PseudonymKey
from pipeline.memo import Memo
from pipeline.native_rows import records_of, row_columns
from pipeline.reasons import Reason, Rejection, Stage
from pipeline.secrets_raw import without_secrets
from pipeline.settings import Settings
from pipeline.validate import rejected_bytes
from sinks import stats
from sinks.lake import Flushed, LakeWriter, Staged
from sinks.stats import write_stats

log = logging.getLogger("callpipe.runner")

StatesFor = Callable[[Iterable[str]], Mapping[str, AccountState]]
# An input unit of `callpipe ingest`: its offset (a file's record or line number), its decoded
# events and its rejections of decoding.
Unit = tuple[int, list[dict[str, Any]], Sequence[Rejection]]


class Tripped(RuntimeError):
    """The trip-wire: a run of events failed with internal errors (a bug in the chain, not bad
    input). Whoever runs the chain stops without landing what it has taken, so nothing is
    dead-lettered or committed past the last landed range and a fixed restart resumes there.
    The message names the partition, the count and the error type, never a value."""

    def __init__(self, partition: int, count: int, error: str) -> None:
        super().__init__(
            f"trip-wire: {count} events in a row failed with internal errors "
            f"(last {error}) in partition {partition}"
        )
        self.partition = partition
        self.count = count
        self.error = error


@dataclass(slots=True)
class _Message:
    offset: int
    waiting: int  # decoded events not yet released
    # what was counted when it arrived (events in, dead letters of decoding): it joins the stats
    # when it is handed over; `count` messages besides (a run of messages in the columns is one)
    events_in: int
    dead: Counter[str] | None
    count: int = 1


@dataclass(slots=True)
class _Run:
    """Messages in a row whose events went into the partition's columns: one item of the merger
    and one `_Message`, both under the last offset, so the merger, the hand-over and the chain's
    book-keeping cost a step per run, not per message. Their events are released, taken and
    handed over together, in the order they went in."""

    offsets: list[int]
    events: list[int]  # per message
    total: int


# A run closes at this many events: the merger releases about a pump's budget at a time, and a
# run is never held back for messages that have not come.
RUN_EVENTS = 500


class PartitionRunner:
    def __init__(
        self,
        *,
        lake: Path,
        source: str,
        partition: int,
        settings: Settings,
        key: PseudonymKey,
        states_for: StatesFor,
        now_ms: int,
        merger: EventTimeMerger[Any] | None = None,
        memo: Memo | None = None,
    ) -> None:
        self.partition = partition
        self.settings = settings
        self.key = key
        self.states_for = states_for
        # what identifiers became: the worker's, shared by its runners and forgotten on erasure
        self.memo = memo if memo is not None else Memo()
        # the partition's Avro calls decoded straight into columns (None: the native decoder is
        # not built; every message then goes the row way)
        self.rows = row_columns("CallEvent")
        self.writer = LakeWriter.open(lake, source, settings)
        # The merger may outlive the runner: the control streams move its watermarks even while
        # the lake writer of the partition is not open (yet).
        self.merger: EventTimeMerger[Any] = (
            merger if merger is not None else EventTimeMerger(settings.max_idle_ms, now_ms)
        )
        self._messages: deque[_Message] = deque()
        self._consumed = self.writer.next_offset - 1
        self._key_ms = -1
        self.counts: Counter[str] = Counter()  # of the offsets not yet flushed
        self.skipped = 0  # messages the lake already held (replay after a crash)
        self.trip_after = settings.trip_internal_errors
        self.internal_run = 0  # events in a row that failed with internal errors

    @property
    def next_offset(self) -> int:
        return self.writer.next_offset

    @property
    def expected(self) -> int:
        """The offset this runner takes next (the lake's end, then what was fed after it)."""
        return self._consumed + 1

    @property
    def source(self) -> str:
        return self.writer.source

    # ------------------------------------------------------------ in

    def feed(self, messages: Sequence[MessageLike], now_ms: int) -> list[Rejection]:
        """Take messages of this partition in offset order; returns the dead letters of decoding."""
        dead: list[Rejection] = []
        partition = self.partition
        rows = self.rows
        run: _Run | None = None
        for msg in messages:
            if msg.offset <= self._consumed:
                self.skipped += 1
                continue
            if rows is not None:
                # the usual case: Avro decoded into the partition's columns, the run of such
                # messages grows (`_Run`)
                if msg.partition == partition:
                    started = rows.append_message(msg.value, msg.headers)
                    if started is not None:  # None: not taken (nor an empty batch)
                        if type(started) is int:
                            events, latest = 1, started
                        else:
                            events, latest = len(started), max(started)  # type: ignore[arg-type]
                        self._consumed = msg.offset
                        if latest > self._key_ms:
                            self._key_ms = latest
                        if run is None:
                            run = _Run([], [], 0)
                        run.offsets.append(msg.offset)
                        run.events.append(events)
                        run.total += events
                        if run.total >= RUN_EVENTS:
                            self._hold(run)
                            run = None
                        continue
                if run is not None:  # what follows waits behind it, in offset order
                    self._hold(run)
                    run = None
            else:
                record = plain_record(msg.value, msg.headers, "CallEvent")
                if record is not None and msg.partition == partition:  # one event, admitted
                    offset = self._consumed = msg.offset
                    self._messages.append(_Message(offset, 1, 1, None))
                    if record["started_at"] > self._key_ms:
                        self._key_ms = record["started_at"]
                    self.merger.add([(self._key_ms, (offset, [(record, Lineage(partition, offset, 0))]))])
                    continue
            try:
                decoded = decode_value(
                    msg.value, "CallEvent", headers=msg.headers, partition=msg.partition, offset=msg.offset
                )
            except Exception as exc:  # the guard: a decoder bug becomes a dead letter, not a crash
                log.error(
                    "decode failed: partition=%s offset=%s error=%s",
                    msg.partition,
                    msg.offset,
                    type(exc).__name__,
                )
                self._count_internal(1, exc)  # ...until the bug is the run of the stream
                internal = Rejection(
                    Reason.INTERNAL, Stage.DECODE, msg.partition, msg.offset, None, msg.value or b""
                )
                decoded = Decoded(rejections=[internal])
            dead.extend(self._accept(msg.partition, msg.offset, decoded.records, decoded.rejections))
        if run is not None:
            self._hold(run)
        return dead

    def _hold(self, run: _Run) -> None:
        """A run of messages in the columns waits in the merger, as one message under its last
        offset and the running maximum of event times."""
        last = run.offsets[-1]
        self._messages.append(_Message(last, run.total, run.total, None, len(run.offsets)))
        self.merger.add([(self._key_ms, (last, run))])

    def take_units(self, units: Iterable[Unit], now_ms: int, mono: float) -> list[Rejection]:
        """`callpipe ingest`: take already decoded input units (offset, events, rejections), in
        offset order, and run their events through the chain at once. The whole consent history
        is known before the first call, so nothing waits: the merger is passed by (it would
        release the units in their own order, one heap push and pop per unit)."""
        dead: list[Rejection] = []
        released: list[tuple[int, list[tuple[dict[str, Any], Lineage]]]] = []
        partition = self.partition
        for offset, records, rejections in units:
            if offset <= self._consumed:
                self.skipped += 1
                continue
            if rejections:
                dead.extend(self._arrive(partition, offset, records, rejections))
            else:  # the common case, inline: one message record, no counts
                self._consumed = offset
                self._messages.append(_Message(offset, len(records), len(records), None))
            if records:
                released.append((offset, [(r, Lineage(partition, offset, i)) for i, r in enumerate(records)]))
        dead.extend(self._run(released, now_ms, mono))
        return dead

    def _accept(
        self, partition: int, offset: int, records: list[dict[str, Any]], rejections: Sequence[Rejection]
    ) -> list[Rejection]:
        dead = self._arrive(partition, offset, records, rejections)
        if records:
            self._key_ms = max(self._key_ms, max(r["started_at"] for r in records))
            items = [(r, Lineage(partition, offset, i)) for i, r in enumerate(records)]
            self.merger.add([(self._key_ms, (offset, items))])
        return dead

    def _arrive(
        self, partition: int, offset: int, records: list[dict[str, Any]], rejections: Sequence[Rejection]
    ) -> list[Rejection]:
        """Note a message's arrival; returns its dead letters of decoding."""
        self._consumed = offset
        # Counted with the message, not yet in `counts`: a flush writes the stats of the offsets
        # it lands, and this message may wait past that flush for the control streams.
        arrived: Counter[str] | None = Counter() if rejections else None
        dead = []
        for rej in rejections:
            arrived[stats.dead_letter(rej.reason.value)] += 1  # type: ignore[index]
            dead.append(
                self._mask(Rejection(rej.reason, rej.stage, partition, offset, rej.index, rej.raw, rej.field))
            )
        self._messages.append(_Message(offset, len(records), len(records) + len(rejections), arrived))
        return dead

    def _mask(self, dead: Rejection) -> Rejection:
        """Its bytes without secrets, whatever their format, else withheld (`pipeline.secrets_raw`)."""
        return without_secrets(dead, self.settings.policy.secret_names)

    # ------------------------------------------------------------ through the chain

    def pump(
        self, now_ms: int, mono: float, *, drain: bool = False, budget: int | None = None
    ) -> list[Rejection]:
        """Run the chain over what the merger releases (about `budget` events at most: a caller
        that must stay responsive comes back while `more` is true)."""
        if drain:
            released = self.merger.drain(budget, _events)
        else:
            released = self.merger.release(now_ms, budget, _events)
        return self._run(released, now_ms, mono)

    def _run(
        self, released: list[tuple[int, list[tuple[dict[str, Any], Lineage]]]], now_ms: int, mono: float
    ) -> list[Rejection]:
        dead: list[Rejection] = []
        if released:
            taken = self._take_columns(released)
            try:
                dead = self._process(released, taken, now_ms, mono)
                self.internal_run = 0
            except Exception as exc:  # the guard: retry message by message, isolate the culprit
                log.error(
                    "chain failed on a batch: partition=%s error=%s", self.partition, type(exc).__name__
                )
                # each message again, the row way (its events out of the columns as records)
                for one in self._as_records(released, taken):
                    try:
                        dead.extend(self._process([one], None, now_ms, mono))
                        self.internal_run = 0
                    except Exception as inner:
                        dead.extend(self._internal(one, inner))
        self._advance(mono)
        return dead

    def _take_columns(self, released: list[tuple[int, Any]]) -> _Taken | None:
        """The released runs' events out of the partition's columns, with their lineage: they
        are the columns' first rows, released in the order they went in."""
        runs = [run for _offset, run in released if type(run) is _Run]
        if not runs:
            return None
        assert self.rows is not None  # only it puts runs in the merger
        offsets = np.fromiter(itertools.chain.from_iterable(run.offsets for run in runs), np.int64)
        total = sum(run.total for run in runs)
        if total == len(offsets):  # one event per message: the usual case
            indices = np.zeros(total, np.int64)
        else:
            events = np.fromiter(itertools.chain.from_iterable(run.events for run in runs), np.int64)
            offsets = np.repeat(offsets, events)
            indices = np.arange(total) - np.repeat(np.cumsum(events) - events, events)
        return _Taken(self.rows.take(total), offsets, indices)

    def _as_records(
        self, released: list[tuple[int, Any]], taken: _Taken | None
    ) -> list[tuple[int, list[tuple[dict[str, Any], Lineage]]]]:
        """`released` with the events taken out of the columns as records, message by message."""
        out = []
        records = iter(records_of(taken.calls) if taken is not None else ())
        lineage = (
            zip(taken.offsets.tolist(), taken.indices.tolist(), strict=True)
            if taken is not None
            else iter(())
        )
        for offset, items in released:
            if type(items) is not _Run:
                out.append((offset, items))
                continue
            for events in items.events:  # each message alone, under its run's offset
                out.append(
                    (
                        offset,
                        [(next(records), Lineage(self.partition, *next(lineage))) for _ in range(events)],
                    )
                )
        return out

    def _internal(
        self, message: tuple[int, list[tuple[dict[str, Any], Lineage]]], exc: Exception
    ) -> list[Rejection]:
        offset, items = message
        log.error("chain failed: partition=%s offset=%s error=%s", self.partition, offset, type(exc).__name__)
        self._count_internal(len(items), exc)
        for m in self._messages:
            if m.offset == offset:
                m.waiting -= len(items)
        self.counts[stats.dead_letter(Reason.INTERNAL.value)] += len(items)
        return [
            Rejection(
                Reason.INTERNAL, Stage.ROUTE, src.partition, src.offset, src.index, self._reencode(record)
            )
            for record, src in items
        ]

    def _count_internal(self, events: int, exc: Exception) -> None:
        """One isolated bug is a dead letter; a run of them is a broken chain, and shipping the
        whole stream to calls.dlq would only hide it: past the threshold, trip."""
        self.internal_run += events
        if self.internal_run >= self.trip_after:
            raise Tripped(self.partition, self.internal_run, type(exc).__name__) from None

    def _process(
        self, released: list[tuple[int, Any]], taken: _Taken | None, now_ms: int, mono: float
    ) -> list[Rejection]:
        """The chain over released messages: the events in columns through the column chain
        (`pipeline.chain_columns`), the rest and what it leaves to rows through the row chain."""
        items = [item for _off, message in released if type(message) is not _Run for item in message]
        accounts = {r["account_id"] for r, _src in items if isinstance(r.get("account_id"), str)}
        if taken is not None:
            accounts.update(taken.calls.column("account_id").unique().to_pylist())
        states = self.states_for(accounts)
        policy, memo = self.settings.policy, self.memo
        parts: list[Tables] = []
        counts = self.counts
        if taken is not None:
            columns = route_columns(
                taken.calls,
                self.partition,
                taken.offsets,
                taken.indices,
                states,
                policy,
                self.key,
                now_ms,
                buckets=self.settings.buckets,
                memo=memo,
                seen=[r.get("event_id") for r, _src in items],
            )
            parts.append(columns.tables)
            for drop, n in columns.drops.items():
                counts[stats.drop(drop.value)] += n
            if len(columns.rows):  # left to the row chain, in lineage order among the others
                rows = columns.rows
                left = zip(
                    records_of(taken.calls.take(pa.array(rows))),
                    taken.offsets[rows].tolist(),
                    taken.indices[rows].tolist(),
                    strict=True,
                )
                items += [(r, Lineage(self.partition, o, i)) for r, o, i in left]
                items.sort(key=lambda item: (item[1].offset, item[1].index))
        rejections: list[Rejection] = []
        if items or taken is None:
            routed = route_batch(
                [r for r, _src in items],
                states,
                policy,
                self.key,
                now_ms,
                sources=[src for _r, src in items],
                buckets=self.settings.buckets,
                memo=memo,
                admitted=True,  # feed and take_units hold only what pipeline.codec's decoders admitted
            )
            parts.append(tables_of(routed, self.key, memo))
            for drop, n in routed.drops.items():
                counts[stats.drop(drop.value)] += n
            rejections = routed.rejections
        tables = parts[0] if len(parts) == 1 else concat_tables(parts)
        counts["vault"] += tables.vault.num_rows  # rows past the vault's limit left out
        counts["analytics"] += tables.analytics.num_rows
        for rej in rejections:
            counts[stats.dead_letter(rej.reason.value)] += 1
        by_offset = {m.offset: m for m in self._messages}
        for offset, message in released:
            by_offset[offset].waiting -= message.total if type(message) is _Run else len(message)
        self.writer.add_tables(
            vault=tables.vault, buckets=tables.buckets, analytics=tables.analytics, now=mono
        )
        return rejections

    def _reencode(self, record: dict[str, Any]) -> bytes:
        return rejected_bytes(record, self.settings.policy.secret_names)

    def _advance(self, mono: float) -> None:
        """Hand over `through`: every message up to it has released all its events."""
        through = None
        counts = self.counts
        while self._messages and self._messages[0].waiting <= 0:
            message = self._messages.popleft()
            counts["messages"] += message.count
            counts["events_in"] += message.events_in
            if message.dead:
                counts.update(message.dead)
            through = message.offset
        if through is not None:
            self.writer.add(through=through, now=mono)

    # ------------------------------------------------------------ out

    @property
    def more(self) -> bool:
        """The last pump stopped at its budget with calls still releasable."""
        return self.merger.more

    @property
    def waiting(self) -> int:
        """Messages held in the merger (a run counts its messages)."""
        return sum(len(m.offsets) if type(m) is _Run else 1 for _offset, m in self.merger.held())

    def due(self, mono: float) -> bool:
        return self.writer.due(mono)

    def close(self) -> None:
        """Release the partition's lake writer (rows not flushed are consumed again)."""
        self.writer.close()

    def flush(self) -> Flushed | None:
        """Land the handed-over offsets; their stats record is written first, under the same
        range name, and counts only once the range's manifest exists (see `sinks.stats.read_stats`)."""
        landing = self.prepare()
        if landing is None:
            return None
        flushed = self.write(landing)
        self.landed(landing)
        return flushed

    def prepare(self) -> Landing | None:
        """`flush` in three steps, for the worker that goes on taking while a range lands: the
        handed-over range and its counts, staged now (None when there is none); `write` (in any
        thread: it touches only what is staged) and `landed` after. What is taken meanwhile
        belongs to the next range."""
        staged = self.writer.prepare()
        if staged is None:
            return None
        counts, self.counts = self.counts, Counter()
        return Landing(staged, counts)

    def write(self, landing: Landing) -> Flushed:
        staged = landing.staged
        write_stats(self.writer.lake, self.source, staged.first, staged.last, landing.counts)
        return self.writer.write(staged)

    def landed(self, landing: Landing) -> None:
        self.writer.landed(landing.staged.last)


@dataclass(frozen=True)
class Landing:
    """A prepared range: its staged rows and the stats of its offsets."""

    staged: Staged
    counts: Counter[str]


@dataclass(frozen=True)
class _Taken:
    """Released events out of the partition's columns: the calls and each one's lineage."""

    calls: pa.Table
    offsets: np.ndarray
    indices: np.ndarray


def _events(message: tuple[int, Any]) -> int:
    """A released message's events: a run's (in the columns) or its records."""
    events = message[1]
    return events.total if type(events) is _Run else max(1, len(events))
