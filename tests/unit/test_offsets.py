"""The offset guard: messages are taken in offset order, a gap is held back until its re-read,
and a gap the re-read confirms (retention, compaction, transaction markers) is taken."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.stream.offsets import Admitted, Gap, OffsetGuard


def test_contiguous_offsets_and_replays_are_taken() -> None:
    guard = OffsetGuard()
    assert guard.admit([3, 4, 5, 6], expected=5).taken == [True, True, True, True]
    assert guard.pending is None
    assert guard.seek_due(now=0.0, retry_s=2.0) is None


def test_a_gap_is_held_back_and_sought_back_to_the_expected_offset() -> None:
    guard = OffsetGuard()
    admitted = guard.admit([10, 11, 15, 16], expected=10)
    assert admitted.taken == [True, True, False, False]
    assert guard.pending == Gap(expected=12, seen=15)
    assert guard.seek_due(now=100.0, retry_s=2.0) == 12
    assert guard.seek_due(now=101.0, retry_s=2.0) is None  # the seek is on its way
    assert guard.seek_due(now=102.5, retry_s=2.0) == 12  # its re-read did not come: again


def test_messages_fetched_before_the_seek_are_not_taken_and_the_re_read_is() -> None:
    guard = OffsetGuard()
    guard.admit([15], expected=12)
    assert guard.admit([16, 17], expected=12).taken == [False, False]  # stale, past the gap
    admitted = guard.admit([12, 13, 14, 15, 16], expected=12)
    assert admitted.taken == [True] * 5
    assert admitted.real_gaps == []
    assert guard.pending is None


def test_a_gap_the_re_read_confirms_is_real_and_taken() -> None:
    guard = OffsetGuard()
    guard.admit([15], expected=12)
    guard.seek_due(now=0.0, retry_s=2.0)
    admitted = guard.admit([14, 15], expected=12)  # 12 and 13 do not exist (a transaction marker)
    assert admitted.taken == [True, True]
    assert admitted.real_gaps == [Gap(expected=12, seen=14)]
    assert guard.pending is None


def test_outside_a_rebalance_a_gap_is_taken_and_reported() -> None:
    guard = OffsetGuard()
    admitted = guard.admit([10, 14, 15], expected=10, suspect=False)
    assert admitted.taken == [True, True, True]
    assert admitted.real_gaps == [Gap(expected=11, seen=14)]
    assert guard.pending is None


def test_a_new_gap_after_the_runner_moved_on_starts_over() -> None:
    guard = OffsetGuard()
    guard.admit([15], expected=12)
    guard.admit([12, 13, 14, 15], expected=12)
    assert guard.admit([16, 30], expected=16).taken == [True, False]
    assert guard.pending == Gap(expected=17, seen=30)


@given(
    present=st.lists(st.booleans(), min_size=1, max_size=60),
    cut=st.integers(min_value=0, max_value=60),
    stale=st.integers(min_value=0, max_value=10),
)
def test_what_is_taken_is_every_existing_offset_once_in_order(
    present: list[bool], cut: int, stale: int
) -> None:
    """Whatever the framework drops (a cut in the delivery) and re-delivers, the taken offsets
    are exactly the offsets that exist, in order, each once past the expected one."""
    log = [i for i, p in enumerate(present) if p]
    guard = OffsetGuard()
    expected = 0
    taken: list[int] = []

    def deliver(offsets: list[int]) -> None:
        nonlocal expected
        admitted = guard.admit(offsets, expected)
        for offset, ok in zip(offsets, admitted.taken, strict=True):
            if ok and offset >= expected:
                taken.append(offset)
                expected = offset + 1

    head, tail = log[: cut // 2], log[cut // 2 :]
    deliver(head)
    dropped = tail[: cut - cut // 2]
    deliver(tail[len(dropped) : len(dropped) + stale])  # delivered past what the framework dropped
    for _ in range(len(log) + 2):  # the worker seeks back (at the gap, or the watchdog at `expected`)
        offset = guard.seek_due(now=0.0, retry_s=0.0)
        start = expected if offset is None else offset
        deliver([o for o in log if o >= start])
    assert taken == log


def _admit_one_by_one(guard: OffsetGuard, offsets: list[int], expected: int, suspect: bool) -> Admitted:
    """The guard's rule applied message by message (what its fast path must agree with)."""
    taken: list[bool] = []
    real: list[Gap] = []
    for offset in offsets:
        admitted = guard.admit([offset], expected, suspect=suspect) if offset != expected else None
        if admitted is None:  # the next offset, on its own: the fast path's own case
            guard.pending = guard.sought_at = None
            taken.append(True)
            expected += 1
            continue
        taken.extend(admitted.taken)
        real.extend(admitted.real_gaps)
        if admitted.taken[0] and offset >= expected:
            expected = offset + 1
    return Admitted(taken, real)


@given(
    offsets=st.lists(st.integers(min_value=0, max_value=40), max_size=30),
    expected=st.integers(min_value=0, max_value=20),
    suspect=st.booleans(),
    contiguous=st.booleans(),
)
def test_a_poll_of_exactly_the_next_offsets_is_admitted_as_message_by_message(
    offsets: list[int], expected: int, suspect: bool, contiguous: bool
) -> None:
    """The usual poll (exactly the offsets from the expected one on) takes the guard's fast path;
    whatever the poll, the outcome and the guard's state are those of one message at a time."""
    if contiguous:
        offsets = list(range(expected, expected + len(offsets)))
    whole, single = OffsetGuard(), OffsetGuard()
    for guard in (whole, single):
        guard.admit([expected + 3], expected)  # a gap pending before the poll
    assert whole.admit(offsets, expected, suspect=suspect) == _admit_one_by_one(
        single, offsets, expected, suspect
    )
    assert whole.pending == single.pending
