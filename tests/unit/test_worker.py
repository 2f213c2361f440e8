"""The stream worker's rules, driven in-process with a fake broker (pipeline/stream/worker.py): where a
partition starts, exactly once across replays, gaps, rebalances and a busy lake writer, dead
letters before landing (an oversize one kept in the lake), a failing disk, and consent read from
any control partition. The same rules run against the real broker in tests/e2e."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import codec
from pipeline.carrier.generate import generate_traffic
from pipeline.consent import Stream
from pipeline.keys import Domain, PseudonymKey
from pipeline.reasons import Rejection
from pipeline.settings import Settings
from pipeline.stream import runner as runner_module
from pipeline.stream.control import ControlState
from pipeline.stream.runner import Tripped
from pipeline.stream.worker import RETRY_S, StreamWorker
from schemas import topics
from sinks import files
from sinks.lake import SourceBusy
from sinks.read import read_zone
from sinks.stats import read_stats

KEY = PseudonymKey("v1", b"k" * 32)
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NOW_MS = START_MS + 3 * 86_400_000


@dataclass(frozen=True)
class Msg:
    value: bytes | None
    partition: int
    offset: int
    key: bytes | None = None
    headers: Any = ()


class TooLarge(Exception):
    pass


@dataclass
class FakeBroker:
    """Records what the worker asks of Kafka; refuses dead letters over `dlq_limit` bytes."""

    dlq_limit: int = 1 << 30
    fail_sends: bool = False
    seeks: list[tuple[int, int]] = field(default_factory=list)
    paused: set[int] = field(default_factory=set)
    dlq: list[tuple[bytes, dict[str, bytes]]] = field(default_factory=list)
    commits: list[dict[int, int]] = field(default_factory=list)
    _pending: list[tuple[Rejection, bytes | None, str]] = field(default_factory=list)

    def seek(self, partition: int, offset: int) -> None:
        self.seeks.append((partition, offset))

    def pause(self, partitions: Iterable[int]) -> None:
        self.paused |= set(partitions)

    def resume(self, partitions: Iterable[int]) -> None:
        self.paused -= set(partitions)

    def send_dead(self, dead: Rejection, key: bytes | None, topic: str) -> None:
        self._pending.append((dead, key, topic))

    async def dead_sent(self) -> list[tuple[Rejection, bytes | None, str, BaseException]]:
        pending, self._pending = self._pending, []
        refused: list[tuple[Rejection, bytes | None, str, BaseException]] = []
        for d, key, topic in pending:
            if self.fail_sends:
                refused.append((d, key, topic, ConnectionError("broker down")))
            elif len(d.raw) > self.dlq_limit:
                refused.append((d, key, topic, TooLarge()))
            else:
                self.dlq.append((d.raw, {k: v for k, v in d.headers(topic)}))
        return refused

    def too_large(self, exc: BaseException) -> bool:
        return isinstance(exc, TooLarge)

    async def commit(self, offsets: Mapping[int, int]) -> None:
        self.commits.append(dict(offsets))


class Clock:
    def __init__(self) -> None:
        self.mono = 1000.0

    def __call__(self) -> float:
        return self.mono


def make_worker(
    lake: Path,
    broker: FakeBroker | None = None,
    control: ControlState | None = None,
    clock: Clock | None = None,
    land_behind: bool = False,
) -> StreamWorker:
    settings = Settings(lake=lake, buckets=2, flush_rows=1_000_000, flush_seconds=5.0, max_idle_ms=0)
    return StreamWorker(
        settings=settings,
        key=KEY,
        control=control or ControlState(0, NOW_MS),
        broker=broker or FakeBroker(),
        topic=topics.CALLS,
        now_ms=lambda: NOW_MS,
        mono=clock or Clock(),
        land_behind=land_behind,
    )


def calls(n: int, seed: int = 3) -> list[dict[str, Any]]:
    return generate_traffic(seed, n, START_MS, accounts=40).calls


def messages(records: list[dict[str, Any]], partition: int = 0, first: int = 0) -> list[Msg]:
    return [
        Msg(codec.encode([r], "CallEvent", "json", 1)[0], partition, first + i, r["account_id"].encode())
        for i, r in enumerate(records)
    ]


def vault_ids(lake: Path) -> Counter[str]:
    if not list(lake.glob("vault/calls/dt=*/bucket=*/*.parquet")):
        return Counter()
    return Counter(read_zone(lake, "vault", columns=["event_id"]).column(0).to_pylist())


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_partition_starts_where_the_lake_ends_and_commits_only_landed_offsets(lake: Path) -> None:
    recs = calls(60)
    msgs = messages(recs)

    async def first() -> FakeBroker:
        broker = FakeBroker()
        w = make_worker(lake, broker)
        await w.assigned([0])
        await w.take(0, msgs[:40])
        assert broker.commits == []  # nothing landed yet: nothing committed
        await w.shutdown()
        return broker

    broker = run(first())
    assert broker.seeks == [(0, 0)]
    assert vault_ids(lake) == Counter({r["event_id"]: 1 for r in recs[:40]})

    async def second() -> FakeBroker:
        broker = FakeBroker()
        w = make_worker(lake, broker)
        await w.assigned([0])
        await w.take(0, msgs)  # a replay from an older committed offset: the first 40 are skipped
        await w.release([0])
        return broker

    broker = run(second())
    assert broker.seeks == [(0, 40)]  # the lake, not Kafka's committed offset, says where to start
    assert vault_ids(lake) == Counter({r["event_id"]: 1 for r in recs})
    assert read_stats(lake).events_in == 60


def test_a_flush_commits_the_next_offset_of_what_landed(lake: Path) -> None:
    clock = Clock()
    broker = FakeBroker()

    async def go() -> None:
        w = make_worker(lake, broker, clock=clock)
        await w.assigned([1])
        await w.take(1, messages(calls(10), partition=1))
        clock.mono += 6  # the flush interval has passed
        await w.tick()

    run(go())
    assert broker.commits == [{1: 10}]


def test_a_gap_is_sought_back_and_taken_only_when_the_re_read_confirms_it(lake: Path) -> None:
    recs = calls(6)
    msgs = messages(recs)
    broker = FakeBroker()

    async def go() -> StreamWorker:
        w = make_worker(lake, broker)
        await w.assigned([0])
        await w.take(0, [msgs[0], msgs[1], msgs[3], msgs[4]])  # offset 2 missing
        assert broker.seeks[-1] == (0, 2)
        await w.take(0, msgs[2:])  # the re-read brings it
        await w.shutdown()
        return w

    w = run(go())
    assert w.counters["gap_held_back"] == 2
    assert vault_ids(lake) == Counter({r["event_id"]: 1 for r in recs})


def test_a_real_gap_is_taken_after_the_re_read_confirms_it(lake: Path) -> None:
    recs = calls(5)
    msgs = [m for m in messages(recs) if m.offset != 2]  # offset 2 does not exist (compaction)

    async def go() -> None:
        w = make_worker(lake, FakeBroker())
        await w.assigned([0])
        await w.take(0, msgs)
        await w.take(0, msgs[2:])  # the re-read starts past the gap again
        await w.shutdown()

    run(go())
    assert set(vault_ids(lake)) == {r["event_id"] for i, r in enumerate(recs) if i != 2}


def test_a_rebalance_that_gives_a_partition_back_lands_nothing_and_keeps_its_rows(lake: Path) -> None:
    recs = calls(30)
    broker = FakeBroker()

    async def go() -> StreamWorker:
        w = make_worker(lake, broker)
        await w.assigned([0, 1])
        await w.take(0, messages(recs[:20]))
        await w.revoked([0, 1])
        await w.assigned([0])  # 0 comes back, 1 went elsewhere
        assert w.counters["flushes"] == 0  # nothing was landed for the rebalance
        assert broker.seeks[-1] == (0, 20)  # the consumer resumes where the runner is, not the commit
        await w.take(0, messages(recs[20:], first=20))
        await w.shutdown()
        return w

    run(go())
    assert vault_ids(lake) == Counter({r["event_id"]: 1 for r in recs})


def test_a_partition_that_moved_is_landed_and_its_writer_released_for_the_new_owner(lake: Path) -> None:
    recs = calls(20)
    old_broker, new_broker = FakeBroker(), FakeBroker()

    async def go() -> None:
        old = make_worker(lake, old_broker)
        new = make_worker(lake, new_broker)
        # The lake's writer lock is per process (POSIX); two workers in one test share a process,
        # so the new owner sees the old one's writer as another process would.
        opener = new._runner

        def runner(p: int) -> Any:
            if p in old.parts:
                raise SourceBusy(f"partition {p} is held")
            return opener(p)

        new._runner = runner  # type: ignore[method-assign]
        await old.assigned([0])
        await old.take(0, messages(recs[:12]))
        await old.revoked([0])
        await new.assigned([0])  # the old owner still holds the lake writer
        assert 0 in new_broker.paused and new_broker.seeks == []
        await new.take(0, messages(recs))  # fetched anyway: not taken while the writer is busy
        await old.assigned([])  # the old owner learns the partition is gone: lands and lets go
        await new.tick()
        assert 0 not in new_broker.paused
        assert new_broker.seeks == [(0, 12)]
        await new.take(0, messages(recs[12:], first=12))
        await new.shutdown()

    run(go())
    assert vault_ids(lake) == Counter({r["event_id"]: 1 for r in recs})


def test_a_dead_letter_too_large_for_the_dlq_is_kept_in_the_lake_before_its_range_lands(lake: Path) -> None:
    big = b"{" + b" " * 5000 + b"not json"
    msgs = [*messages(calls(3)), Msg(big, 0, 3, b"k")]
    broker = FakeBroker(dlq_limit=4000)

    async def go() -> StreamWorker:
        w = make_worker(lake, broker)
        await w.assigned([0])
        await w.take(0, msgs)
        await w.shutdown()
        return w

    w = run(go())
    assert w.counters["dead_letter_kept_in_lake"] == 1
    ((value, headers),) = broker.dlq
    assert value == b""
    assert headers["callpipe.kept"] == b"_rejects"
    assert int(headers["callpipe.size"]) == len(big)
    assert headers["callpipe.source.offset"] == b"3"
    kept = [
        orjson.loads(line)
        for p in (lake / "_rejects").rglob("*.jsonl")
        for line in p.read_bytes().splitlines()
    ]
    assert len(kept) == 1 and kept[0]["offset"] == 3
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in (lake / "_rejects").rglob("*.jsonl"))
    assert read_stats(lake).events_in == 4


def test_a_dead_letter_the_broker_refuses_holds_its_range_back_until_it_is_taken(lake: Path) -> None:
    recs = calls(3)
    msgs = [*messages(recs), Msg(b"not json at all", 0, 3)]
    broker = FakeBroker(fail_sends=True)
    clock = Clock()

    async def go() -> None:
        w = make_worker(lake, broker, clock=clock)
        await w.assigned([0])
        await w.take(0, msgs)
        clock.mono += 6
        await w.tick()  # the broker is down: the range does not land, the worker does not stop
        assert vault_ids(lake) == Counter() and broker.commits == [] and broker.dlq == []
        broker.fail_sends = False  # the broker is back
        await w.tick()
        assert [h["callpipe.source.offset"] for _v, h in broker.dlq] == [b"3"]
        assert broker.commits == [{0: 4}]
        await w.shutdown()

    run(go())
    assert vault_ids(lake) == Counter({r["event_id"]: 1 for r in recs})


def test_a_full_disk_pauses_the_partition_and_it_resumes_by_itself(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recs = calls(20)
    msgs = messages(recs)
    clock = Clock()
    broker = FakeBroker()
    real = files.write_temp_parquet

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def go() -> StreamWorker:
        w = make_worker(lake, broker, clock=clock)
        await w.assigned([0])
        monkeypatch.setattr(files, "write_temp_parquet", full)
        await w.take(0, msgs)
        clock.mono += 6
        await w.tick()  # the flush fails: paused, not crashed
        assert 0 in broker.paused and w.stalled
        await w.take(0, msgs)  # fetched before the pause: not taken
        clock.mono += RETRY_S[0] + 0.1
        await w.tick()  # the partition reopens and is read again from what the lake holds...
        assert 0 not in broker.paused and broker.seeks[-1] == (0, 0)
        await w.take(0, msgs)
        clock.mono += 6
        await w.tick()  # ...but the disk is still full: paused again
        assert 0 in broker.paused
        monkeypatch.setattr(files, "write_temp_parquet", real)  # space returns
        clock.mono += max(RETRY_S) + 1
        await w.tick()
        assert 0 not in broker.paused
        assert broker.seeks[-1] == (0, 0)  # consumed again from what the lake holds
        await w.take(0, msgs)
        await w.shutdown()
        return w

    w = run(go())
    assert w.counters["flush_failures"] >= 2
    assert vault_ids(lake) == Counter({r["event_id"]: 1 for r in recs})
    assert not [p for p in lake.rglob("*.tmp")]


def test_a_control_record_stamped_in_microseconds_moves_neither_state_nor_watermark() -> None:
    control = ControlState(0, NOW_MS)
    micro = {
        "account_id": "acct-1",
        "purpose": "analytics",
        "granted": False,
        "at": NOW_MS * 1000,
        "source": "app",
    }
    value = codec.encode([micro], "ConsentEvent", "json", 1)[0]
    assert control.apply(Stream.CONSENT, value, (), partition=0, now_ms=NOW_MS) == 0
    assert control.accounts == {} and control.watermarks.event_times() == {}
    good = codec.encode([{**micro, "at": NOW_MS}], "ConsentEvent", "json", 1)[0]
    assert control.apply(Stream.CONSENT, good, (), partition=0, now_ms=NOW_MS) == 1
    assert control.watermarks.event_times() == {(Stream.CONSENT, 0): NOW_MS}


def test_consent_read_from_any_control_partition_governs_the_calls(lake: Path) -> None:
    recs = [r for r in calls(200) if r.get("transcript")][:5]
    assert recs
    control = ControlState(0, NOW_MS)
    for i, r in enumerate(recs):
        withdrawal = {
            "account_id": r["account_id"],
            "purpose": "transcription",
            "granted": False,
            "at": r["started_at"] - 1000,
            "source": "app",
        }
        value = codec.encode([withdrawal], "ConsentEvent", "json", 1)[0]
        control.apply(Stream.CONSENT, value, (), partition=7 + i, now_ms=NOW_MS)

    async def go() -> None:
        w = make_worker(lake, FakeBroker(), control)
        await w.assigned([0])
        await w.take(0, messages(recs))
        await w.shutdown()

    run(go())
    rows = read_zone(lake, "vault", columns=["transcript"]).column(0).to_pylist()
    assert len(rows) == len(recs) and all(t is None for t in rows)


def test_calls_wait_for_a_control_partition_still_behind_them_then_obey_what_it_brings(lake: Path) -> None:
    """The runner's merger shares the control state's watermarks: a call whose time the control
    streams have not passed waits, and a withdrawal stamped before it, read later, applies."""
    recs = [r for r in calls(300) if r.get("transcript")][:4]
    control = ControlState(2_000, NOW_MS)
    first = min(r["started_at"] for r in recs)

    def consent(account: str, at: int, granted: bool) -> bytes:
        event = {
            "account_id": account,
            "purpose": "transcription",
            "granted": granted,
            "at": at,
            "source": "app",
        }
        return codec.encode([event], "ConsentEvent", "json", 1)[0]

    control.apply(
        Stream.CONSENT, consent("someone-else", first - 10_000, True), (), partition=2, now_ms=NOW_MS
    )

    async def go() -> None:
        w = make_worker(lake, FakeBroker(), control)
        w.settings = Settings(
            lake=lake, buckets=2, flush_rows=1_000_000, flush_seconds=5.0, max_idle_ms=2_000
        )
        await w.assigned([0])
        await w.take(0, messages(recs))
        await w.tick()
        assert w.parts[0].runner.waiting == len(recs)  # held: partition 2 is behind the calls
        for r in recs:
            control.apply(Stream.CONSENT, consent(r["account_id"], r["started_at"] - 1, False), (), 2, NOW_MS)
        control.apply(Stream.CONSENT, consent("someone-else", NOW_MS, True), (), partition=2, now_ms=NOW_MS)
        await w.tick()
        assert w.parts[0].runner.waiting == 0
        await w.shutdown()

    run(go())
    rows = read_zone(lake, "vault", columns=["transcript"]).column(0).to_pylist()
    assert len(rows) == len(recs) and all(t is None for t in rows)


def test_a_run_of_internal_errors_trips_the_worker_which_lands_nothing_more(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the chain fails every event: past the threshold the worker pauses, sends none of
    the run to calls.dlq, lands and commits nothing more; fixed, it resumes where the lake ends."""
    recs = calls(40)
    msgs = messages(recs)

    def make(broker: FakeBroker) -> StreamWorker:
        w = make_worker(lake, broker)
        w.settings = dataclasses.replace(w.settings, trip_internal_errors=5)
        return w

    async def landed_first() -> None:
        w = make(FakeBroker())
        await w.assigned([0])
        await w.take(0, msgs[:20])
        await w.shutdown()

    run(landed_first())
    real = runner_module.route_batch

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(runner_module, "route_batch", broken)
    broker = FakeBroker()

    async def tripped() -> StreamWorker:
        w = make(broker)
        await w.assigned([0])
        with pytest.raises(Tripped, match=r"5 events in a row failed .*KeyError"):
            await w.take(0, msgs[20:])
        await w.take(0, msgs[20:])  # after the trip nothing is taken
        await w.tick()
        await w.shutdown()
        return w

    w = run(tripped())
    assert w.tripped is not None and 0 in broker.paused
    assert broker.dlq == [] and broker.commits == []
    assert vault_ids(lake) == Counter({r["event_id"]: 1 for r in recs[:20]})

    monkeypatch.setattr(runner_module, "route_batch", real)
    fixed = FakeBroker()

    async def restarted() -> None:
        w = make(fixed)
        await w.assigned([0])
        await w.take(0, msgs[20:])
        await w.shutdown()

    run(restarted())
    assert fixed.seeks == [(0, 20)] and fixed.dlq == []
    assert vault_ids(lake) == Counter({r["event_id"]: 1 for r in recs})


def test_an_isolated_internal_error_is_a_dead_letter_and_does_not_trip(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recs = calls(30)
    real = runner_module.route_batch
    poison = recs[7]["event_id"]

    def picky(records: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        if any(r["event_id"] == poison for r in records):
            raise ValueError("a bug")
        return real(records, *args, **kwargs)

    monkeypatch.setattr(runner_module, "route_batch", picky)
    broker = FakeBroker()

    async def go() -> StreamWorker:
        w = make_worker(lake, broker)
        w.settings = dataclasses.replace(w.settings, trip_internal_errors=2)
        await w.assigned([0])
        for i in range(0, 30, 10):  # three takes: the run is reset by the events that pass
            await w.take(0, messages(recs[i : i + 10], first=i))
        await w.shutdown()
        return w

    w = run(go())
    assert w.tripped is None
    assert [h["callpipe.reason"] for _v, h in broker.dlq] == [b"internal_error"]
    assert sum(vault_ids(lake).values()) == 29


def test_an_erasure_leaves_no_identifier_of_the_account_in_the_workers_caches(lake: Path) -> None:
    """The worker's Memo holds plaintext identifiers (numbers, E.164 forms, their tokens): an
    erase request read from privacy.requests empties it, so none of the subject's stays."""
    recs = calls(80)
    account = recs[0]["account_id"]
    numbers = {r[f] for r in recs if r["account_id"] == account for f in ("caller", "callee") if r.get(f)}
    tokens = {KEY.token(Domain.PHONE, n) for n in numbers}
    control = ControlState(0, NOW_MS)

    def held(w: StreamWorker) -> str:
        return repr(w.memo._values)

    async def go() -> StreamWorker:
        w = make_worker(lake, FakeBroker(), control)
        await w.assigned([0])
        await w.take(0, messages(recs))
        text = held(w)
        assert any(n in text for n in numbers), "the memo should have held the numbers before"
        erase = {
            "request_id": "r1",
            "account_id": account,
            "kind": "erase",
            "at": NOW_MS,
            "corrections": None,
        }
        value = codec.encode([erase], "PrivacyRequest", "json", 1)[0]
        control.apply(Stream.REQUESTS, value, (), partition=0, now_ms=NOW_MS)
        return w

    w = run(go())
    text = held(w)
    assert len(w.memo) == 0  # emptied by the erasure (the Memo keeps no forget counter: nothing read it)
    assert not any(n in text for n in numbers) and not any(t in text for t in tokens)
    assert account not in text


def test_landing_behind_goes_on_taking_every_partition_and_what_came_meanwhile_is_the_next_range(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Kafka runtime lands a due range in a thread while the loop goes on taking, the landing
    partition too: the range landing is the one staged when it started, what was taken meanwhile
    lands in the next one; every call is landed once, counted once, and the commits only grow."""
    recs = calls(80)
    first, second = messages(recs[:40], partition=0), messages(recs[40:], partition=1)
    clock = Clock()
    broker = FakeBroker()
    gate = threading.Event()
    real = runner_module.PartitionRunner.write

    def held(self: Any, landing: Any) -> Any:
        if self.partition == 0:
            assert gate.wait(30)
        return real(self, landing)

    monkeypatch.setattr(runner_module.PartitionRunner, "write", held)

    async def go() -> StreamWorker:
        w = make_worker(lake, broker, clock=clock, land_behind=True)
        await w.assigned([0, 1])
        await w.take(0, first[:20])
        clock.mono += 6
        await asyncio.wait_for(w.tick(), 10)  # partition 0 lands behind, held at the gate
        await asyncio.sleep(0.05)
        await asyncio.wait_for(w.take(1, second), 10)  # not waiting for it
        await asyncio.wait_for(w.take(0, first[20:]), 10)  # nor this: the next range's
        assert w.parts[1].runner.expected == 40 and w.parts[0].runner.expected == 40
        assert not vault_ids(lake)
        gate.set()
        await w.settle()
        assert sum(vault_ids(lake).values()) == 20  # what was staged when the landing began
        assert [c[0] for c in broker.commits if 0 in c] == [20]
        clock.mono += 6
        await w.tick()
        await w.settle()
        await w.shutdown()
        return w

    run(go())
    assert vault_ids(lake) == Counter({r["event_id"]: 1 for r in recs})
    zero = [c[0] for c in broker.commits if 0 in c]
    assert zero == sorted(zero) and zero[0] == 20 and zero[-1] == 40
    assert read_stats(lake).events_in == 80


class Ticking(Clock):
    """A clock that moves 10 s at every reading: every buffered range is due at once."""

    def __call__(self) -> float:
        self.mono += 10
        return self.mono


def test_one_landing_at_a_time_and_every_event_counted_once_while_the_loop_takes_beside_it(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranges due all the time (a clock that jumps 10 s at every reading) and a landing held at a
    gate while the loop takes into the landing partition and the other: no second landing starts
    beside one (a second would stage a range of a runner whose range is being written), and the
    stats count every event once (counted into the range being written, some would go uncounted:
    four of 600 did once)."""
    recs = calls(80)
    first, second = messages(recs[:40], partition=0), messages(recs[40:], partition=1)
    broker = FakeBroker()
    gate = threading.Event()
    real = runner_module.PartitionRunner.write
    lock = threading.Lock()
    writing: list[int] = []
    overlaps: list[list[int]] = []
    landings: list[int] = []

    def held(self: Any, landing: Any) -> Any:
        if self.partition == 0 and not gate.is_set():
            assert gate.wait(30)
        with lock:
            if self.partition in writing:
                overlaps.append([self.partition, *writing])
            writing.append(self.partition)
        try:
            time.sleep(0.2)  # long enough for a second landing to meet this one
            return real(self, landing)
        finally:
            with lock:
                writing.remove(self.partition)

    monkeypatch.setattr(runner_module.PartitionRunner, "write", held)
    real_write = StreamWorker._write
    active: list[int] = []

    async def write(self: StreamWorker, prepared: Any, *, commit: bool) -> None:
        landings.append(len(prepared))
        if active:  # a landing starting while another one is on
            overlaps.append([-1, len(prepared)])
        active.append(1)
        try:
            await real_write(self, prepared, commit=commit)
        finally:
            active.pop()

    monkeypatch.setattr(StreamWorker, "_write", write)

    async def go() -> StreamWorker:
        w = make_worker(lake, broker, clock=Ticking(), land_behind=True)
        await w.assigned([0, 1])
        await w.take(0, first[:20])  # lands behind at once, held at the gate
        await w.take(0, first[20:])  # taken beside it
        await w.take(1, second[:20])  # a landing is on: partition 1 lands next
        landing = w._landing
        assert landing is not None
        gate.set()
        await asyncio.wait([landing])
        await w._land([1])
        await w.settle()
        await w.take(1, second[20:])
        await w.settle()
        await w.tick()
        await w.settle()
        await w.shutdown()
        return w

    run(go())
    assert overlaps == []
    assert len(landings) >= 2
    assert vault_ids(lake) == Counter({r["event_id"]: 1 for r in recs})
    assert read_stats(lake).events_in == 80


def test_a_landing_behind_that_fails_on_the_disk_pauses_the_partition(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recs = calls(20)
    msgs = messages(recs)
    clock = Clock()
    broker = FakeBroker()
    real = files.write_temp_parquet

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def go() -> StreamWorker:
        w = make_worker(lake, broker, clock=clock, land_behind=True)
        await w.assigned([0])
        monkeypatch.setattr(files, "write_temp_parquet", full)
        await w.take(0, msgs[:10])
        clock.mono += 6
        await w.tick()
        await w.take(0, msgs[10:])  # taken while it lands, then dropped with the failed writer
        await w.settle()
        assert 0 in broker.paused and w.stalled and 0 not in w.parts
        assert not vault_ids(lake)
        monkeypatch.setattr(files, "write_temp_parquet", real)
        clock.mono += RETRY_S[0] + 0.1
        await w.tick()
        assert 0 not in broker.paused and broker.seeks[-1] == (0, 0)
        await w.take(0, msgs)
        await w.shutdown()
        return w

    w = run(go())
    assert w.counters["flush_failures"] == 1
    assert vault_ids(lake) == Counter({r["event_id"]: 1 for r in recs})


def test_what_the_worker_landed_is_what_the_lakes_stats_hold(lake: Path) -> None:
    """The metrics read `landed` and `last_landed_ms`: the same counts as `_stats/`, kept as ranges land."""
    recs = calls(30)
    msgs = [*messages(recs[:20]), Msg(b"{not json", 0, 20), *messages(recs[20:], first=21)]
    clock = Clock()

    async def go() -> StreamWorker:
        w = make_worker(lake, clock=clock)
        await w.assigned([0])
        await w.take(0, msgs[:15])
        clock.mono += 6
        await w.tick()  # one range
        assert w.landed["events_in"] == 15 and w.last_landed_ms == {0: NOW_MS}
        await w.take(0, msgs[15:])
        await w.shutdown()  # the rest
        return w

    w = run(go())
    on_disk = read_stats(lake)
    assert w.counters["flushes"] == 2
    assert w.landed["events_in"] == on_disk.events_in == 31
    assert w.landed["vault"] == on_disk.written["vault"] == 30
    assert w.landed["dead_letter.malformed"] == on_disk.dead_letters["malformed"] == 1
    assert w.dead_to_resend == 0


def avro(records: list[dict[str, Any]], partition: int = 0, first: int = 0, batch: int = 1) -> list[Msg]:
    """Confluent Avro messages of `batch` events each: what goes into the partition's columns."""
    values = codec.encode(records, "CallEvent", "avro", batch)
    return [Msg(v, partition, first + i) for i, v in enumerate(values)]


def test_messages_in_the_columns_go_in_runs_and_each_lands_once_among_the_others(lake: Path) -> None:
    """Avro messages taken into the columns wait as runs (one merger item per run of up to
    RUN_EVENTS events, closed by any message that goes the general way); every event lands
    once, every message is counted once, in offset order, with replays skipped."""
    recs = calls(1_400)
    msgs = [
        *avro(recs[:1_100]),  # single events
        *messages(recs[1_100:1_101], first=1_100),  # JSON: closes the run, goes the row way
        Msg(b"{not json", 0, 1_101),  # a dead letter between runs
        *avro(recs[1_101:1_301], first=1_102, batch=50),  # 4 batch messages of 50 events
        *avro(recs[1_301:], first=1_106),  # single events again
    ]
    control = ControlState(60_000, NOW_MS)  # a control partition behind every call: they wait
    event = {
        "account_id": "someone-else",
        "purpose": "transcription",
        "granted": True,
        "at": START_MS - 10_000,
    }
    control.apply(
        Stream.CONSENT,
        codec.encode([{**event, "source": "app"}], "ConsentEvent", "json", 1)[0],
        (),
        2,
        NOW_MS,
    )

    async def go() -> StreamWorker:
        w = make_worker(lake, control=control)
        w.settings = dataclasses.replace(w.settings, max_idle_ms=60_000)
        await w.assigned([0])
        await w.take(0, msgs[:900])  # runs of 500 and 400 events: a take ends its run
        await w.take(0, msgs[800:])  # 100 replayed (skipped), a run of 200, JSON, a run of 299
        runner = w.parts[0].runner
        assert len(runner.merger) == 5
        assert runner.waiting == len(msgs) - 1  # messages, a run counting its own; not the dead one
        await w.shutdown()
        return w

    w = run(go())
    assert vault_ids(lake) == Counter({r["event_id"]: 1 for r in recs})
    on_disk = read_stats(lake)
    assert on_disk.messages == len(msgs) and on_disk.events_in == len(recs) + 1
    assert w.landed["dead_letter.malformed"] == 1


def test_a_run_that_fails_the_chain_is_retried_message_by_message_and_the_culprit_named(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the column chain fails on a batch, each message of its runs goes the row way alone:
    the one that fails there too is a dead letter under its own offset, the others land."""
    recs = calls(30)
    real = runner_module.route_batch
    poison = recs[7]["event_id"]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    def picky(records: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        if any(r["event_id"] == poison for r in records):
            raise ValueError("a bug")
        return real(records, *args, **kwargs)

    monkeypatch.setattr(runner_module, "route_columns", broken)
    monkeypatch.setattr(runner_module, "route_batch", picky)
    broker = FakeBroker()

    async def go() -> StreamWorker:
        w = make_worker(lake, broker)
        await w.assigned([0])
        await w.take(0, avro(recs))
        await w.shutdown()
        return w

    w = run(go())
    assert w.tripped is None
    [(_value, headers)] = broker.dlq
    assert headers["callpipe.reason"] == b"internal_error" and headers["callpipe.source.offset"] == b"7"
    assert vault_ids(lake) == Counter({r["event_id"]: 1 for r in recs if r["event_id"] != poison})
    assert read_stats(lake).messages == 30
