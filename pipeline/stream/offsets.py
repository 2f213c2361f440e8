"""Which messages of a partition the worker may take, given the offset it expects next.

A consumer can skip messages: faust's dropped what it had fetched around a rebalance (the reason
the worker no longer uses it), aiokafka skips the seek to a committed offset of 0, and logs have
real gaps (retention, compaction, transaction markers). The lake knows exactly which offset of a
partition comes next, so the worker checks every message against it instead of trusting the
client:

    offset <  expected   already consumed: the runner skips it
    offset == expected   the next one: taken
    offset >  expected   a gap: not taken; the worker seeks back to `expected` and waits for the
                         re-read. A gap that is still there after the seek (the re-read starts
                         past `expected` again, at or below the first offset seen past the gap)
                         is real: retention, compaction or transaction markers. It is taken.

Messages fetched before the seek may still arrive after it; they are past the first offset
seen past the gap and are not taken either. Each real gap costs a seek, so the worker holds gaps
back only while they are suspect (around a rebalance, when the framework drops messages); at
other times a gap is taken at once and only reported. Pure code: no Kafka, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Gap:
    expected: int  # the offset the worker was waiting for
    seen: int  # the first offset that arrived past it


@dataclass(frozen=True, slots=True)
class Admitted:
    taken: list[bool]  # per message, in the order given
    real_gaps: list[Gap]  # gaps confirmed by a re-read: offsets expected..seen-1 do not exist


class OffsetGuard:
    """One partition's gap state. `pending` is the gap waiting for its re-read, if any."""

    def __init__(self) -> None:
        self.pending: Gap | None = None
        self.sought_at: float | None = None

    def admit(self, offsets: Sequence[int], expected: int, *, suspect: bool = True) -> Admitted:
        """`suspect`: hold gaps back for a re-read; otherwise take them and report them real."""
        n = len(offsets)
        if n and offsets[0] == expected and list(offsets) == list(range(expected, expected + n)):
            self._clear()  # the usual poll, exactly the next offsets: compared at C speed
            return Admitted([True] * n, [])
        taken: list[bool] = []
        real: list[Gap] = []
        for offset in offsets:
            if offset < expected:
                taken.append(True)  # a replay; the runner skips what it holds
            elif offset == expected:
                taken.append(True)
                expected += 1
                self._clear()
            elif not suspect or self._confirms(expected, offset):
                real.append(Gap(expected, offset))
                taken.append(True)
                expected = offset + 1
                self._clear()
            else:
                if self.pending is None or self.pending.expected != expected:
                    self.pending = Gap(expected, offset)
                    self.sought_at = None
                taken.append(False)
        return Admitted(taken, real)

    def seek_due(self, now: float, retry_s: float) -> int | None:
        """The offset to seek to now, if a gap waits for its re-read and the last seek for it is
        older than `retry_s` (a re-read can itself be dropped by the framework)."""
        if self.pending is None:
            return None
        if self.sought_at is not None and now - self.sought_at < retry_s:
            return None
        self.sought_at = now
        return self.pending.expected

    def _confirms(self, expected: int, offset: int) -> bool:
        """After the seek back, the re-read starts past `expected` again: the gap is real."""
        pending = self.pending
        return pending is not None and pending.expected == expected and offset <= pending.seen

    def _clear(self) -> None:
        self.pending = None
        self.sought_at = None
