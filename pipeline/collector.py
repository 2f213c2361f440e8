"""The cyclic garbage collector, set for processes that run the chain (worker, ingest, benchmarks).

Every event allocates a handful of short-lived dicts, tuples and lists, and almost none of them
form reference cycles: reference counting frees them. CPython's default schedule still runs a
young-generation pass every 700 container allocations and older passes that walk the long-lived
heap (consent state, the memo, staged rows), about a sixth of an in-process runner's time
(docs/BENCHMARKS.md, "Garbage collection"). Here the objects alive at start-up, and those
`freeze` is called again after (a loaded consent history), leave the collector's scans for
good, and a young pass runs every 100,000 allocations: what the passes were for, freeing cycles,
still happens, only less often.
"""

from __future__ import annotations

import gc

YOUNG = 100_000  # container allocations between young-generation passes (CPython: 700)
OLDER = 20  # passes of one generation between passes of the next (CPython: 10)


def tune() -> None:
    """Move what is alive now out of the collector's scans and space its passes out."""
    gc.freeze()
    gc.set_threshold(YOUNG, OLDER, OLDER)


def freeze() -> None:
    """Move what is alive now (a large, long-lived structure just built) out of the scans."""
    gc.freeze()
