"""The worker's metrics and health, rendered from a view (pipeline/stream/metrics.py): the
Prometheus text format, the counts read back the way `_stats/` is read, lag and landing per
partition, control state, liveness and readiness, and labels that cannot carry an identifier."""

from __future__ import annotations

import math
import re

import pytest

from pipeline import codec
from pipeline.consent import Stream
from pipeline.stream.control import ControlState
from pipeline.stream.metrics import (
    LIVENESS_S,
    Metric,
    PartitionView,
    WorkerView,
    health,
    metrics_of,
    readiness,
    render,
)
from sinks import stats

NOW_MS = 1_767_225_600_000
TOPIC = "calls.raw"

# One sample line of the text format: name, optional {label="value",...}, a number.
SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? '
    r"(-?[0-9.e+-]+|NaN|[+-]Inf)$"
)


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, every line checked against the format."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        assert SAMPLE.match(line), line
        key, value = line.rsplit(" ", 1)
        out[key] = float(value)
    return out


def view(**kw: object) -> WorkerView:
    base: dict[str, object] = {
        "topic": TOPIC,
        "now_ms": NOW_MS,
        "started_ms": NOW_MS - 60_000,
        "phase": "running",
        "loop_age_s": 0.1,
        "control_loaded": True,
        "group_joined": True,
    }
    return WorkerView(**{**base, **kw})  # type: ignore[arg-type]


def test_render_writes_help_type_and_escaped_labels() -> None:
    m = Metric("callpipe_x_total", "counter", 'a "help"\\ line\nnext')
    m.add(3, topic='we"ird\\to\npic', partition=2)
    m.add(0.25)
    text = render([m])
    assert text.splitlines() == [
        '# HELP callpipe_x_total a "help"\\\\ line\\nnext',
        "# TYPE callpipe_x_total counter",
        'callpipe_x_total{partition="2",topic="we\\"ird\\\\to\\npic"} 3.0',
        "callpipe_x_total 0.25",
    ]
    assert text.endswith("\n")
    samples(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0.0"),
        (12, "12.0"),
        (1.5, "1.5"),
        (math.nan, "NaN"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
    ],
)
def test_numbers(value: float, text: str) -> None:
    assert render([Metric("m", "gauge", "h").add(value)]).splitlines()[-1] == f"m {text}"


@pytest.mark.parametrize("label", ["account", "account_id", "caller", "event_id", "member_id"])
def test_a_label_that_could_carry_an_identifier_is_refused(label: str) -> None:
    with pytest.raises(ValueError, match=label):
        render([Metric("m", "gauge", "h").add(1, **{label: "acct-1"})])


def test_events_by_outcome_are_the_landed_ranges_stats_read_as_stats_are() -> None:
    # the very names sinks.stats writes in `_stats/`
    landed = {
        "events_in": 10,
        "messages": 9,
        "vault": 7,
        "analytics": 5,
        stats.dead_letter("malformed"): 2,
        stats.dead_letter("bad_time"): 1,
        stats.drop("erased"): 1,
        stats.drop("analytics_objected"): 2,
    }
    counters = {"flushes": 3, "dead_letter.malformed": 2, "dead_letter.bad_time": 2, "flush_failures": 1}
    got = samples(render(metrics_of(view(landed=landed, counters=counters, dead_pending=4))))
    t = f'topic="{TOPIC}"'
    assert got[f"callpipe_events_consumed_total{{{t}}}"] == 10
    assert got[f"callpipe_messages_consumed_total{{{t}}}"] == 9
    assert got[f'callpipe_rows_landed_total{{{t},zone="vault"}}'] == 7
    assert got[f'callpipe_rows_landed_total{{{t},zone="analytics"}}'] == 5
    assert got[f'callpipe_events_dead_lettered_total{{reason="malformed",{t}}}'] == 2
    assert got[f'callpipe_events_dead_lettered_total{{reason="bad_time",{t}}}'] == 1
    assert got[f'callpipe_events_dropped_total{{reason="erased",{t}}}'] == 1
    assert got[f'callpipe_events_dropped_total{{reason="analytics_objected",{t}}}'] == 2
    # sent counts the control partitions' dead letters too: a counter of its own, not a sum
    assert got['callpipe_dead_letters_sent_total{reason="bad_time"}'] == 2
    assert got["callpipe_dead_letters_pending"] == 4
    assert got[f"callpipe_ranges_landed_total{{{t}}}"] == 3
    assert got[f"callpipe_landing_failures_total{{{t}}}"] == 1
    assert got[f"callpipe_dead_letters_kept_in_lake_total{{{t}}}"] == 0


def test_lag_landing_and_waiting_per_partition() -> None:
    parts = (
        PartitionView(
            0, "open", highwater=120, taken=100, landed=80, waiting=7, last_landed_ms=NOW_MS - 5_000
        ),
        PartitionView(1, "open", highwater=None, taken=0, landed=0),  # nothing fetched yet
        PartitionView(2, "waiting_for_lake"),
        PartitionView(3, "stalled", highwater=50),
    )
    got = samples(render(metrics_of(view(partitions=parts))))
    at = f'partition="0",topic="{TOPIC}"'
    assert got[f"callpipe_consumer_lag_messages{{{at}}}"] == 20
    assert got[f"callpipe_unlanded_messages{{{at}}}"] == 40
    assert got[f"callpipe_merger_waiting_messages{{{at}}}"] == 7
    assert got[f"callpipe_last_landed_timestamp_seconds{{{at}}}"] == (NOW_MS - 5_000) / 1000
    assert not [k for k in got if "lag" in k and 'partition="1"' in k]  # unknown, not zero
    assert got[f'callpipe_partitions{{state="open",topic="{TOPIC}"}}'] == 2
    assert got[f'callpipe_partitions{{state="waiting_for_lake",topic="{TOPIC}"}}'] == 1
    assert got[f'callpipe_partitions{{state="stalled",topic="{TOPIC}"}}'] == 1


def test_control_state_records_and_watermark_age() -> None:
    control = ControlState(0, NOW_MS)
    good = {
        "account_id": "acct-1",
        "purpose": "analytics",
        "granted": True,
        "at": NOW_MS - 30_000,
        "source": "app",
    }
    control.apply(Stream.CONSENT, codec.encode([good], "ConsentEvent", "json", 1)[0], (), 2, NOW_MS)
    control.apply(
        Stream.CONSENT,
        codec.encode([{**good, "at": NOW_MS * 1000}], "ConsentEvent", "json", 1)[0],
        (),
        2,
        NOW_MS,
    )
    control.apply(Stream.REQUESTS, b"{not json", (), 0, NOW_MS)
    assert control.counts == {
        "consent_applied": 1,
        stats.rejected("consent", "bad_time"): 1,
        "requests_applied": 0,
        stats.rejected("requests", "malformed"): 1,
    }
    v = view(
        control=dict(control.counts),
        accounts=len(control.accounts),
        watermarks={(s.value, p): ms for (s, p), ms in control.watermarks.event_times().items()},
    )
    got = samples(render(metrics_of(v)))
    assert got["callpipe_control_accounts"] == 1
    assert got['callpipe_control_records_total{outcome="applied",stream="consent"}'] == 1
    assert got['callpipe_control_records_total{outcome="rejected",reason="bad_time",stream="consent"}'] == 1
    assert got['callpipe_control_records_total{outcome="rejected",reason="malformed",stream="requests"}'] == 1
    assert got['callpipe_control_records_total{outcome="error",stream="requests"}'] == 0
    assert got['callpipe_control_watermark_age_seconds{partition="2",stream="consent"}'] == 30


def test_process_and_loop_gauges() -> None:
    got = samples(render(metrics_of(view(rss_bytes=123_456, loop_age_s=0.5))))
    assert got["callpipe_process_resident_memory_bytes"] == 123_456
    assert got["callpipe_loop_last_turn_age_seconds"] == 0.5
    assert got["callpipe_process_start_time_seconds"] == (NOW_MS - 60_000) / 1000
    assert got["callpipe_worker_ready"] == 1
    assert got["callpipe_native_decoder"] == 0
    assert samples(render(metrics_of(view(native_decoder=True))))["callpipe_native_decoder"] == 1
    starting = samples(render(metrics_of(view(phase="starting", loop_age_s=None, rss_bytes=None))))
    assert "callpipe_loop_last_turn_age_seconds" not in starting
    assert "callpipe_process_resident_memory_bytes" not in starting
    assert starting["callpipe_worker_ready"] == 0


@pytest.mark.parametrize(
    ("kw", "ok", "status"),
    [
        ({"phase": "starting", "loop_age_s": None}, True, "ok"),  # loading its control state: alive
        ({"loop_age_s": 1.0}, True, "ok"),
        ({"loop_age_s": LIVENESS_S + 1}, False, "stalled"),
        ({"tripped": True}, False, "tripped"),
    ],
)
def test_health(kw: dict[str, object], ok: bool, status: str) -> None:
    got_ok, doc = health(view(**kw))
    assert (got_ok, doc["status"]) == (ok, status)


@pytest.mark.parametrize(
    ("kw", "ready"),
    [
        ({}, True),
        ({"partitions": ()}, True),  # a member the group gave no partition is still ready
        ({"control_loaded": False, "phase": "starting", "group_joined": False}, False),
        ({"group_joined": False}, False),  # mid-rebalance
        ({"phase": "stopping"}, False),
        ({"tripped": True}, False),
    ],
)
def test_readiness(kw: dict[str, object], ready: bool) -> None:
    got, doc = readiness(view(**kw))
    assert got is ready and doc["ready"] is ready
    assert set(doc) == {"ready", "phase", "control_state", "group", "partitions"}
