"""The log-storm filter: one line per cause per interval, then a count; causes never mix; the
count never needs the formatted arguments. Time comes from a fake clock."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from pipeline import lograte
from pipeline.lograte import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def logged(clock: Clock) -> Iterator[tuple[io.StringIO, RateLimit]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    limit = RateLimit(10.0, clock=clock)
    handler.addFilter(limit)
    for name in ("test.kafka", "test.other"):
        log = logging.getLogger(name)
        log.addHandler(handler)
        log.propagate = False
        log.setLevel(logging.DEBUG)
    yield out, limit
    for name in ("test.kafka", "test.other"):
        logging.getLogger(name).removeHandler(handler)
        logging.getLogger(name).propagate = True


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_a_storm_gives_one_line_per_interval_with_the_count(
    logged: tuple[io.StringIO, RateLimit], clock: Clock
) -> None:
    out, _ = logged
    log = logging.getLogger("test.kafka")
    for _second in range(20):  # a 20-second outage, 65 errors a second
        for _ in range(65):
            log.error("Unable connect to node with id %s: %s", 1, "Connect call failed ('10.0.0.7', 9092)")
            clock.now += 1 / 65
    assert lines(out) == [
        "ERROR test.kafka: Unable connect to node with id 1: Connect call failed ('10.0.0.7', 9092)",
        "ERROR test.kafka: Unable connect to node with id 1: Connect call failed ('10.0.0.7', 9092)"
        " (and 649 more like it in the last 10s)",
    ]
    clock.now += 30
    log.error("Unable connect to node with id %s: %s", 2, "refused")
    last = "ERROR test.kafka: Unable connect to node with id 2: refused"
    assert lines(out)[-1] == last + " (and 649 more like it in the last 10s)"


def test_causes_are_logger_level_and_template_never_the_arguments(
    logged: tuple[io.StringIO, RateLimit], clock: Clock
) -> None:
    out, _ = logged
    kafka, other = logging.getLogger("test.kafka"), logging.getLogger("test.other")
    for i in range(5):
        kafka.error("metadata refresh failed for %s", f"account-{i}")  # same cause, different data
        kafka.warning("metadata refresh failed for %s", "x")  # another level
        kafka.error("connection refused")  # another template
        other.error("metadata refresh failed for %s", "x")  # another logger
    assert lines(out) == [
        "ERROR test.kafka: metadata refresh failed for account-0",
        "WARNING test.kafka: metadata refresh failed for x",
        "ERROR test.kafka: connection refused",
        "ERROR test.other: metadata refresh failed for x",
    ]
    assert all("account-4" not in line for line in lines(out))


def test_quiet_causes_pass_every_time(logged: tuple[io.StringIO, RateLimit], clock: Clock) -> None:
    out, _ = logged
    log = logging.getLogger("test.kafka")
    for i in range(4):
        log.info("flushed %d rows", i)
        clock.now += 10.0
    assert lines(out) == [f"INFO test.kafka: flushed {i} rows" for i in range(4)]


def test_burst_lets_the_first_few_through(clock: Clock) -> None:
    limit = RateLimit(10.0, burst=3, clock=clock)
    record = logging.LogRecord("test", logging.ERROR, __file__, 1, "boom %s", ("x",), None)
    assert [limit.filter(record) for _ in range(5)] == [True, True, True, False, False]
    clock.now += 10.0
    assert limit.filter(record) and record.getMessage() == "boom x (and 2 more like it in the last 10s)"


def test_a_message_that_is_not_a_string_is_keyed_by_its_type(clock: Clock) -> None:
    limit = RateLimit(5.0, clock=clock)
    records = [
        logging.LogRecord("t", logging.ERROR, __file__, 1, OSError(f"secret-{i}"), None, None)
        for i in range(3)
    ]
    assert [limit.filter(r) for r in records] == [True, False, False]
    clock.now += 5.0
    later = logging.LogRecord("t", logging.ERROR, __file__, 1, OSError("later"), None, None)
    assert limit.filter(later) and later.getMessage() == "later (and 2 more like it in the last 5s)"


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimit(0)
    with pytest.raises(ValueError):
        RateLimit(1.0, burst=0)


def test_install_puts_one_filter_on_each_handler_once() -> None:
    logger = logging.getLogger("test.install")
    handlers = [logging.StreamHandler(io.StringIO()), logging.StreamHandler(io.StringIO())]
    for h in handlers:
        logger.addHandler(h)
    try:
        first = lograte.install(3.0, logger=logger)
        assert len(first) == 2 and first[0] is not first[1] and first[0].interval == 3.0
        assert lograte.install(3.0, logger=logger) == []
        assert [len(h.filters) for h in handlers] == [2, 2]
        assert all(isinstance(h.filters[0], lograte.Redact) for h in handlers)
    finally:
        for h in handlers:
            logger.removeHandler(h)


def test_progress_at_info_is_never_limited() -> None:
    clock = [0.0]
    limit = RateLimit(10.0, clock=lambda: clock[0])
    records = [
        logging.LogRecord(
            "callpipe.worker", logging.INFO, __file__, 1, "landed %s offsets %s..%s", (p, 0, 9), None
        )
        for p in range(5)
    ]
    assert all(limit.filter(r) for r in records)


def test_no_log_line_holds_message_contents() -> None:
    """aiokafka's `Sending (key=%s value=%s)` at debug, a record's repr, a pre-formatted line:
    bytes become their size, anything showing bytes is redacted; plain arguments stay."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("aiokafka.test.redact")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    lograte.install(logger=logger)
    try:
        value = b'{"caller": "+4915112345678", "transcript": "call me at bob@example.com"}'
        logger.debug("Sending (key=%s value=%s) to %s", b"A1", value, "calls.dlq-0")
        logger.debug("record %r", [value])
        logger.debug(f"send: v={value!r}")
        logger.info("landed %s offsets %s..%s", "calls.raw-0", 1, 9)
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "+4915112345678" not in text and "bob@example.com" not in text
    assert f"value=<{len(value)} bytes>" in text and "record '<redacted>'" in text
    assert "landed calls.raw-0 offsets 1..9" in text
