"""Progress of a long job on a terminal: one self-overwriting line on stderr, only when stderr is
a tty (automation gets `--json` on stdout and a quiet stderr).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

# What jobs call: progress(done, total), in units the job names (files).
ProgressFn = Callable[[int, int], None]


class Progress:
    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()
        self.shown = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        now = time.monotonic()
        if done < total and now - self.shown < 0.2:
            return
        self.shown = now
        rate = done / max(now - self.started, 1e-6)
        self.stream.write(f"\r{self.label}: {done}/{total} files ({100 * done // total}%, {rate:.0f}/s)")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def quiet(done: int, total: int) -> None:
    """A progress callback that shows nothing."""
