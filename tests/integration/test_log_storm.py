"""A broker outage with the log rate limit on: aiokafka, pointed at a closed port on 127.0.0.1 for a
few seconds, logs hundreds of connection errors; the rate-limited handler shows a few lines per
cause, the later ones with the count of those dropped."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from pipeline.lograte import RateLimit

pytestmark = pytest.mark.integration

OUTAGE_S = 3.0
INTERVAL_S = 1.0


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


async def _outage(port: int, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=500)
        try:
            await producer.start()
        except KafkaConnectionError:
            pass
        finally:
            await producer.stop()


def test_an_outage_logs_a_few_lines_per_cause() -> None:
    everything, limited = Capture(), Capture()
    limited.addFilter(RateLimit(INTERVAL_S))
    root = logging.getLogger()
    root.addHandler(everything)
    root.addHandler(limited)
    try:
        started = time.monotonic()
        asyncio.run(_outage(_closed_port(), OUTAGE_S))
        took = time.monotonic() - started
    finally:
        root.removeHandler(everything)
        root.removeHandler(limited)

    def by_cause(records: list[logging.LogRecord]) -> Counter[tuple[str, int, str]]:
        return Counter(RateLimit.cause(r) for r in records)

    storm = by_cause(everything.records)
    shown = by_cause(limited.records)
    assert sum(storm.values()) > 50, "the outage did not log a storm to limit"
    allowed = math.ceil(took / INTERVAL_S) + 1
    assert set(shown) == set(storm) and all(n <= allowed for n in shown.values()), (shown, allowed)
    notes = [r.getMessage() for r in limited.records if "more like it in the last 1s)" in r.getMessage()]
    assert notes, "no line said how many were dropped"
    dropped = sum(int(m.rsplit("(and ", 1)[1].split()[0]) for m in notes)
    assert dropped <= sum(storm.values()) - sum(shown.values())
