"""Consent and subject state per account, decisions at an event's time, and event-time ordering.

`AccountState` is one account's consent history per purpose and the part of its privacy-request
history that decisions read, packed into one small `bytes` (every worker holds all of them,
pipeline/stream/control.py, so they are kept compact; the layout is beside `_ENTRY`). Histories
are kept sorted by event time and free of repeats, so recording an event twice, or out of
arrival order, changes nothing: a replayed or late consent event lands where its time puts it.

`decide(state, at_ms, defaults)` judges an event at its own time against that history (the last
entry at or before `at_ms` counts):
  - recording, transcription: the last consent for the purpose; unknown -> the default (no);
  - analytics: the last of the analytics consents and `object` requests (an objection acts as a
    withdrawal, a later grant resumes it); unknown -> the default (yes, legitimate interest);
  - restricted: the last of `restrict`/`unrestrict` is `restrict` -> vault only;
  - erased: any `erase` in the history, whatever its time -> the event is dropped (and counted):
    erasure is final, and an older event arriving after the request must not bring data back.
At equal times a withdrawal sorts after a grant, so it wins (privacy by default).

`EventTimeMerger` holds calls back until the consent and request streams of their partition have
advanced past the call's time, or have been idle for `max_idle_ms` (Kafka Streams'
max.task.idle.ms), so a consent change stamped before a call applies to it even when the worker
reads the call first.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Any, Generic, NewType, TypeVar

import schemas
from pipeline.policy import ConsentDefaults
from pipeline.reasons import Drop

PURPOSES = ("recording", "transcription", "analytics")
# rectify corrects stored data (the `jobs requests` job); it changes no stream decision.
REQUEST_KINDS = ("erase", "restrict", "unrestrict", "object", "access", "rectify")
# The request ledger's kind for a consent withdrawal's purge (`jobs requests`, read from
# consent.events, never a PrivacyRequest): deadlines are set per kind for it too.
WITHDRAW = "withdraw"


class Stream(StrEnum):
    CONSENT = "consent"
    REQUESTS = "requests"


# An account's state packs its history into one `bytes`: 9 bytes an entry, sorted by time, and
# nothing else (no object per entry, no int per time; ~3x less memory than tuples of tuples,
# docs/BENCHMARKS.md). An entry is the time in ms plus 2**63, big-endian, so that entries sort
# as bytes in time order, then a code for what happened at that time:
_ENTRY = struct.Struct(">QB")
_SIZE = _ENTRY.size
_BIAS = 1 << 63  # int64 times (what the schemas' longs hold) -> unsigned, in the same order
# consents: 2 * purpose + 1 for a withdrawal (at equal times a withdrawal sorts last, so it counts)
_CONSENT = {
    (purpose, granted): 2 * n + (not granted)
    for n, purpose in enumerate(PURPOSES)
    for granted in (True, False)
}
# requests that change a decision: at equal times they sort after consents (an objection
# stamped with an analytics grant wins), and an unrestrict after a restrict
RESTRICT, UNRESTRICT, OBJECT, ERASE = 6, 7, 8, 9
_REQUEST = {"restrict": RESTRICT, "unrestrict": UNRESTRICT, "object": OBJECT, "erase": ERASE}
# Erasure holds whatever the event's time, so an erase is kept once, as the entry that sorts
# last (the greatest time and code): its own time and request id would change no decision.
# Access and rectify requests change none either and are not kept; neither are request ids.
_ERASED = _ENTRY.pack((1 << 64) - 1, ERASE)

AccountState = NewType("AccountState", bytes)
"""One account's consent and decision-changing request history, packed as above (`entries`
reads it back). Immutable, so a state object stands for its history: the chain remembers an
account's decisions for as long as its state is the same object."""

_EMPTY = AccountState(b"")


def _entry(at: int, code: int) -> bytes:
    if not -_BIAS <= at < _BIAS:  # the schemas' longs never are; a time kept wrongly never may be
        raise ValueError("time out of the int64 range")
    return _ENTRY.pack(at + _BIAS, code)


def _added(state: AccountState, entry: bytes) -> AccountState:
    """`state` with `entry` in its sorted place, unchanged when it holds it already. Events mostly
    arrive in time order, so the common case appends (the control state replays every account's
    whole history at start-up)."""
    last = state[-_SIZE:]
    if last == entry:
        return state
    if last < entry:
        return AccountState(state + entry)
    held = [state[i : i + _SIZE] for i in range(0, len(state), _SIZE)]
    if entry in held:
        return state
    bisect.insort(held, entry)
    return AccountState(b"".join(held))


def record_consent(state: AccountState | None, event: Mapping[str, Any]) -> AccountState:
    """The state with a ConsentEvent (purpose, granted, at) added to its history (a purpose no
    decision reads, which the schema's enum does not admit anyway, is not kept)."""
    at, purpose, granted = int(event["at"]), str(event["purpose"]), bool(event["granted"])
    code = _CONSENT.get((purpose, granted))
    state = state or _EMPTY
    return state if code is None else _added(state, _entry(at, code))


def record_request(state: AccountState | None, request: Mapping[str, Any]) -> AccountState:
    """The state with a PrivacyRequest (request_id, kind, at) added to its history."""
    # the id is not kept, but a request without one fails here, as a malformed time does, so
    # the partition's owner dead-letters it (pipeline/stream/app.py)
    at, kind, _request_id = int(request["at"]), str(request["kind"]), str(request["request_id"])
    code = _REQUEST.get(kind)
    state = state or _EMPTY
    if code is None:
        return state
    if code == ERASE:
        return state if state.endswith(_ERASED) else AccountState(state + _ERASED)
    return _added(state, _entry(at, code))


def account_state(
    consents: Iterable[tuple[int, str, bool]] = (), requests: Iterable[tuple[Any, ...]] = ()
) -> AccountState:
    """The state of these histories: consents (at_ms, purpose, granted) and requests (at_ms,
    kind, request_id), as the version-1 control snapshot kept them."""
    state = _EMPTY
    for at, purpose, granted in consents:
        state = record_consent(state, {"at": at, "purpose": purpose, "granted": granted})
    for at, kind, *_request_id in requests:
        state = record_request(state, {"at": at, "kind": kind, "request_id": ""})
    return state


def is_state(data: bytes) -> bool:
    """Whether `data` is whole entries (what a saved state must be; its order is not checked)."""
    return len(data) % _SIZE == 0


_WHAT = {code: f"{p}:{'granted' if g else 'withdrawn'}" for (p, g), code in _CONSENT.items()} | {
    code: kind for kind, code in _REQUEST.items()
}


def entries(state: AccountState) -> list[tuple[int | None, str]]:
    """The history as (at_ms, what), in order: what is `purpose:granted`, `purpose:withdrawn` or
    a request kind; an erase has no time (it holds at every time)."""
    return [
        (None if code == ERASE else packed - _BIAS, _WHAT[code]) for packed, code in _ENTRY.iter_unpack(state)
    ]


@dataclass(frozen=True, slots=True)
class Decision:
    erased: bool
    restricted: bool
    recording: bool
    transcription: bool
    analytics: bool


def decide(state: AccountState | None, at_ms: int, defaults: ConsentDefaults) -> Decision:
    """What may be done with an event of this account at time `at_ms`."""
    recording, transcription, analytics = defaults.recording, defaults.transcription, defaults.analytics
    erased = restricted = False
    if state:
        # Erasure is final whatever the event's time: once the request is known, nothing of the
        # account is stored again, late-arriving older events included (the erase job removes
        # what landed before the request arrived).
        erased = state.endswith(_ERASED)
        until = at_ms + _BIAS
        analytics_at = -1 + _BIAS  # the last analytics consent so far (an objection after it counts)
        for at, code in _ENTRY.iter_unpack(state):
            if at > until:
                break
            if code < RESTRICT:
                granted = not code & 1
                if code < 2:
                    recording = granted
                elif code < 4:
                    transcription = granted
                else:
                    analytics, analytics_at = granted, at
            elif code == RESTRICT:
                restricted = True
            elif code == UNRESTRICT:
                restricted = False
            elif code == OBJECT and at >= analytics_at:
                analytics = False
    return Decision(erased, restricted, recording, transcription, analytics)


class Decisions:
    """`decide` for one state at every time at once: a decision only changes at the times of the
    state's entries (decide compares an event's time with them and nothing else), so the
    decision at `at_ms` is the one at the last entry time at or before it. Built once per state
    and policy, then a bisect per event."""

    __slots__ = ("decisions", "defaults", "state", "times")

    def __init__(self, state: AccountState, defaults: ConsentDefaults) -> None:
        self.state = state
        self.defaults = defaults
        self.times = sorted({at - _BIAS for at, code in _ENTRY.iter_unpack(state) if code != ERASE})
        before = (self.times[0] - 1) if self.times else 0
        self.decisions = [decide(state, before, defaults)] + [decide(state, t, defaults) for t in self.times]

    def at(self, at_ms: int) -> Decision:
        return self.decisions[bisect.bisect_right(self.times, at_ms)]


# The consent purpose each sensitive field needs, by its annotation (class, category), and the
# drop that counts its removal. A sensitive field without a rule fails `consent_fields()`.
CONSENT_FOR: dict[tuple[str, str], tuple[str, Drop]] = {
    ("sensitive", "recording"): ("recording", Drop.RECORDING_NO_CONSENT),
    ("sensitive", "free_text"): ("transcription", Drop.TRANSCRIPTION_NO_CONSENT),
}


@cache
def consent_fields() -> tuple[tuple[str, str, Drop], ...]:
    """(field, purpose, drop) for every sensitive CallEvent field, from the schema's annotations."""
    out = []
    for ann in schemas.pii_fields("CallEvent"):
        if ann.klass != "sensitive":
            continue
        rule = CONSENT_FOR.get((ann.klass, ann.category))
        if rule is None or "." in ann.path:
            raise ValueError(f"no consent rule for sensitive field {ann.path} ({ann.category})")
        out.append((ann.path, *rule))
    return tuple(out)


def apply_consent(record: dict[str, Any], decision: Decision, drops: Counter[Drop]) -> None:
    """Null (in place) each sensitive field whose purpose the decision does not allow, counting
    each removal. Erasure, restriction and objection are routing outcomes, counted by the caller."""
    for name, purpose, drop in consent_fields():
        if record.get(name) is not None and not getattr(decision, purpose):
            record[name] = None
            drops[drop] += 1


# ---------------------------------------------------------------- event-time ordering

T = TypeVar("T")


def _one(_item: object) -> int:
    return 1


@dataclass
class _StreamClock:
    event_ms: int  # highest event time seen on the control partition (its watermark)
    seen_ms: int  # wall time the control partition last delivered something


class Watermarks:
    """Event-time progress of every control partition (consent.events and privacy.requests, each
    partition on its own clock), shared by the mergers of all calls partitions of a worker.

    Calls before the horizon are safe to process: every control partition that delivered within
    `max_idle_ms` has passed their time; a partition silent longer does not hold calls back
    (Kafka Streams' max.task.idle.ms). Since every worker reads every control partition, the
    horizon does not depend on how producers partitioned the control streams.
    """

    def __init__(self, max_idle_ms: int, now_ms: int, *, wait_at_start: bool = True) -> None:
        """`wait_at_start`: hold calls for `max_idle_ms` until the control streams show up (a
        reader that loads the control topics whole before any call is judged does not need it)."""
        if max_idle_ms < 0:
            raise ValueError("max_idle_ms must be >= 0")
        self.max_idle_ms = max_idle_ms
        self._clocks: dict[tuple[Stream, int], _StreamClock] = {}
        if wait_at_start:
            self._clocks = {(s, -1): _StreamClock(event_ms=-1, seen_ms=now_ms) for s in Stream}

    def observe(self, stream: Stream, event_ms: int, now_ms: int, partition: int = -1) -> None:
        """A control event with time `event_ms` was applied to the state."""
        clock = self._clocks.get((stream, partition))
        if clock is None:
            clock = self._clocks[(stream, partition)] = _StreamClock(event_ms=-1, seen_ms=now_ms)
        clock.event_ms = max(clock.event_ms, event_ms)
        clock.seen_ms = max(clock.seen_ms, now_ms)

    def event_times(self) -> dict[tuple[Stream, int], int]:
        """The watermark of every control partition seen (what a snapshot of the state keeps)."""
        return {key: clock.event_ms for key, clock in self._clocks.items() if key[1] >= 0}

    def caught_up(self, stream: Stream, now_ms: int, partition: int = -1) -> None:
        """The partition was polled and is active but had nothing new (resets its idle clock)."""
        clock = self._clocks.get((stream, partition))
        if clock is not None:
            clock.seen_ms = max(clock.seen_ms, now_ms)

    def horizon(self, now_ms: int) -> float:
        """Calls before this event time are safe to process (an idle partition does not hold back)."""
        horizon = float("inf")
        for clock in self._clocks.values():
            if now_ms - clock.seen_ms < self.max_idle_ms:
                horizon = min(horizon, clock.event_ms)
        return horizon


class EventTimeMerger(Generic[T]):
    """Buffers calls of one partition and releases them in event-time order once the control
    streams have passed the call's time or been idle for `max_idle_ms` (see `Watermarks`; a
    merger of its own is made when none is shared).

    Time is an argument (`now_ms`, wall clock of the caller). Memory is bounded: beyond
    `max_buffered` calls the earliest are released regardless, and `forced` counts them.
    """

    def __init__(
        self, max_idle_ms: int, now_ms: int, max_buffered: int = 100_000, watermarks: Watermarks | None = None
    ) -> None:
        if max_idle_ms < 0 or max_buffered < 1:
            raise ValueError("max_idle_ms must be >= 0 and max_buffered >= 1")
        self.max_idle_ms = max_idle_ms
        self.max_buffered = max_buffered
        self.forced = 0
        self.watermarks = watermarks if watermarks is not None else Watermarks(max_idle_ms, now_ms)
        self._heap: list[tuple[int, int, T]] = []
        self._seq = itertools.count()
        self.more = False  # the last release or drain stopped at its budget

    def __len__(self) -> int:
        return len(self._heap)

    def observe(self, stream: Stream, event_ms: int, now_ms: int, partition: int = -1) -> None:
        """A consent event or privacy request with time `event_ms` was applied to the state."""
        self.watermarks.observe(stream, event_ms, now_ms, partition)

    def caught_up(self, stream: Stream, now_ms: int, partition: int = -1) -> None:
        """The stream was polled and is active but had nothing new (resets its idle clock)."""
        self.watermarks.caught_up(stream, now_ms, partition)

    def held(self) -> Iterator[T]:
        """The buffered calls, in no particular order."""
        return (entry[2] for entry in self._heap)

    def add(self, items: Iterable[tuple[int, T]]) -> None:
        """Buffer calls given as (event time ms, item)."""
        for event_ms, item in items:
            heapq.heappush(self._heap, (event_ms, next(self._seq), item))

    def release(self, now_ms: int, budget: int | None = None, size: Callable[[T], int] = _one) -> list[T]:
        """The buffered calls that may be processed now, in event-time order; at most about
        `budget` of them by `size` (the caller comes back for the rest, `more` tells)."""
        horizon = self.watermarks.horizon(now_ms)
        out: list[T] = []
        taken = 0
        heap = self._heap
        while heap and (heap[0][0] < horizon or len(heap) > self.max_buffered):
            if budget is not None and taken >= budget:
                break
            if heap[0][0] > horizon:
                self.forced += 1
            item = heapq.heappop(heap)[2]
            taken += size(item)
            out.append(item)
        self.more = bool(heap) and budget is not None and taken >= budget
        return out

    def drain(self, budget: int | None = None, size: Callable[[T], int] = _one) -> list[T]:
        """Everything buffered, in event-time order (end of input, or shutdown), in pieces of
        about `budget` by `size` when given."""
        out: list[T] = []
        taken = 0
        while self._heap and (budget is None or taken < budget):
            item = heapq.heappop(self._heap)[2]
            taken += size(item)
            out.append(item)
        self.more = bool(self._heap)
        return out
