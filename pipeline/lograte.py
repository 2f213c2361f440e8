"""Log storms become a trickle: at most `burst` lines per cause per interval, then a count.

While the broker is down, aiokafka and faust log the same connection and metadata errors dozens of
times a second; an operator's terminal, log store and alerting drown in them. `RateLimit` is a
`logging.Filter` for handlers, on warnings and errors (the progress a worker reports at info, one
line per landed range or resumed partition, always passes): a cause is the logger name, the
level and the message template
(`record.msg`, never the formatted arguments, which may hold data). The first `burst` records of a
cause in an interval pass; the rest are counted and dropped, and the cause's next line after the
interval says how many were dropped: "... (and 64 more like it in the last 10s)". A storm's last
interval is reported by the cause's next line, whenever that comes.

`Redact` comes first on every handler: no log line holds message contents, at any level. aiokafka
logs `Sending (key=... value=...)` at debug, with the record's bytes; faust and mode log records
and values they were given. Any argument that is bytes, or whose text shows bytes, becomes its
size (`<812 bytes>`), so a debug log of a worker holds no phone number, transcript or dead letter.

`install` puts one filter of each kind on every handler of the root logger (one per handler: a
filter shared by two handlers would count each record twice). `basic_config` is the CLI's
logging set-up with it. Anything that replaces the root handlers afterwards (faust's worker
does, when it starts) must call `install` again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

DEFAULT_INTERVAL_S = 10.0

Cause = tuple[str, int, str]


@dataclass(slots=True)
class _Window:
    started: float
    passed: int = 0
    dropped: int = 0


class RateLimit(logging.Filter):
    """Pass at most `burst` records per cause per `interval` seconds; count the rest."""

    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL_S,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        min_level: int = logging.WARNING,
    ) -> None:
        super().__init__()
        self.min_level = min_level  # below it every record passes: "landed ...", "resumes at ..."
        if interval <= 0 or burst < 1:
            raise ValueError("interval must be positive and burst at least 1")
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._windows: dict[Cause, _Window] = {}
        self._lock = threading.Lock()

    @staticmethod
    def cause(record: logging.LogRecord) -> Cause:
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__qualname__
        return (record.name, record.levelno, template)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        key = self.cause(record)
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window.started >= self.interval:
                dropped = window.dropped if window is not None else 0
                self._windows[key] = _Window(now, passed=1)
                if len(self._windows) > 4096:  # bounded memory: forget causes long quiet
                    self._forget(now)
            elif window.passed < self.burst:
                window.passed += 1
                return True
            else:
                window.dropped += 1
                return False
        if dropped:
            note = f" (and {dropped} more like it in the last {self.interval:g}s)"
            if isinstance(record.msg, str):  # the note holds no "%": the args still fit the template
                record.msg = record.msg + note
            else:
                record.msg, record.args = record.getMessage() + note, None
        return True

    def _forget(self, now: float) -> None:
        for key in [
            k for k, w in self._windows.items() if now - w.started >= self.interval and not w.dropped
        ]:
            del self._windows[key]


_SAFE = (str, int, float, bool, type(None))
_BYTES = (bytes, bytearray, memoryview)


def _shows_bytes(text: str) -> bool:
    return "b'" in text or 'b"' in text or "bytearray(" in text


def _redacted(arg: object) -> object:
    if isinstance(arg, _BYTES):
        return f"<{len(arg)} bytes>"
    if isinstance(arg, str):
        return "<redacted>" if _shows_bytes(arg) else arg
    if isinstance(arg, _SAFE):
        return arg
    try:
        text = repr(arg)
    except Exception:
        return "<unprintable>"
    return "<redacted>" if _shows_bytes(text) else arg


class Redact(logging.Filter):
    """Message contents never reach a log: bytes arguments become their size, and any argument
    (or a message object) whose text shows bytes becomes `<redacted>`. callpipe's own lines log
    reasons, coordinates and error types only; this catches the libraries' debug lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(_redacted(a) for a in args)
        elif isinstance(args, dict) and args:
            record.args = {k: _redacted(v) for k, v in args.items()}
        if not isinstance(record.msg, str):
            text = str(_redacted(record.msg))
            record.msg = text if not _shows_bytes(text) else "<redacted>"
        elif _shows_bytes(record.msg):
            record.msg, record.args = "<redacted>", None  # a message formatted before logging
        return True


def install(interval: float = DEFAULT_INTERVAL_S, *, logger: logging.Logger | None = None) -> list[RateLimit]:
    """Put a RateLimit on every handler of `logger` (the root logger) that has none; idempotent.
    Returns the filters added."""
    added = []
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, Redact) for f in handler.filters):
            handler.filters.insert(0, Redact())  # before the rate limit, which may format the line
        if not any(isinstance(f, RateLimit) for f in handler.filters):
            limit = RateLimit(interval)
            handler.addFilter(limit)
            added.append(limit)
    return added


def basic_config(*, level: str, fmt: str, stream: IO[str], interval: float = DEFAULT_INTERVAL_S) -> None:
    """`logging.basicConfig` with rate-limited handlers. Like basicConfig it leaves a root logger
    that already has handlers (an embedding application's, a test runner's) as it is."""
    root = logging.getLogger()
    if root.handlers:
        return
    logging.basicConfig(level=level, format=fmt, stream=stream)
    install(interval, logger=root)
