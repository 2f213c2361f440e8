"""Time as the records carry it: epoch milliseconds, UTC. The day length and every conversion
between epoch time, datetimes and lake day names (`dt=YYYY-MM-DD`) are here, once."""

from __future__ import annotations

from datetime import UTC, datetime

DAY_S = 86_400
DAY_MS = DAY_S * 1000
HOUR_MS = DAY_MS // 24
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_OF_SERVICE_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: nothing older is a real call or consent
# 2100-01-01T00:00:00Z: a record time past it is in another unit (microseconds, nanoseconds), not
# a date; one before EPOCH_OF_SERVICE_MS is most often seconds.
LAST_PLAUSIBLE_MS = 4_102_444_800_000


def to_ms(when: datetime) -> int:
    """Epoch milliseconds of a datetime (naive means UTC), exact to the millisecond (no float)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - EPOCH
    return (delta.days * DAY_S + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def day_of_ms(ms: int) -> str:
    """The UTC day of an epoch-millisecond time, as the lake names it (YYYY-MM-DD)."""
    return from_ms(ms).strftime("%Y-%m-%d")


def day_of_epoch_day(epoch_day: int) -> str:
    return datetime.fromtimestamp(epoch_day * DAY_S, UTC).strftime("%Y-%m-%d")


def iso_of_ms(ms: int) -> str:
    """ISO 8601 with milliseconds and a Z, as the JSON wire format writes times."""
    return from_ms(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def days_between(earlier: datetime, later: datetime) -> float:
    return (later - earlier).total_seconds() / DAY_S
