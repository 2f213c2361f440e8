"""What a worker shows an operator: Prometheus metrics and its health, from a `WorkerView`.

Pure: a `WorkerView` is a plain snapshot of the worker's own counters and state, taken at scrape
time by pipeline/stream/observe.py (the HTTP edge); here it becomes the Prometheus text format
(version 0.0.4, written by prometheus_client) and the answers of `/healthz` and `/readyz`.
Nothing here is counted: every number is one the worker already keeps, so the metrics and the
lake's `_stats/` cannot disagree:

  - events by outcome are the stats of the ranges this process landed (`PartitionRunner`'s
    counts, the very records `sinks.stats` writes beside each range), so they count an event once
    it is durable, and read back with `sinks.stats.StreamStats.from_counts` like every reader of
    `_stats/` does;
  - dead letters sent, retries, landings and their failures are `StreamWorker.counters`;
  - control records applied and rejected are `ControlState.counts`.

Counters start at zero with the process, as Prometheus expects (`rate()` handles restarts).
Labels carry no identifiers, by construction: only the label names in `LABELS` render (a topic,
a partition number, a zone, a stream, a state, a reason code), and the renderer refuses others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from sinks import stats
from sinks.stats import StreamStats

LABELS = frozenset({"topic", "partition", "zone", "stream", "outcome", "reason", "state"})
LIVENESS_S = 120.0  # the consume loop turns every 0.25 s; a turn waits at most ~40 s for the broker
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # prometheus_client's CONTENT_TYPE_LATEST

# StreamWorker.counters that are not dead letters: metric name, help
_WORKER_COUNTERS = {
    "flushes": ("callpipe_ranges_landed_total", "Offset ranges landed durably in the lake."),
    "flush_failures": (
        "callpipe_landing_failures_total",
        "Landings that failed on the file system (the partition pauses and retries).",
    ),
    "dead_letter_kept_in_lake": (
        "callpipe_dead_letters_kept_in_lake_total",
        "Dead letters too large for the dead-letter topic, kept whole in <lake>/_rejects/.",
    ),
    "dead_letter_retries": (
        "callpipe_dead_letter_send_retries_total",
        "Dead letters the broker did not take, sent again.",
    ),
    "stale_messages": (
        "callpipe_stale_messages_total",
        "Messages fetched for a partition no longer owned or paused (read again by their owner).",
    ),
    "gap_held_back": (
        "callpipe_gap_held_back_messages_total",
        "Messages held back past an offset gap until a re-read confirmed it.",
    ),
}


@dataclass(frozen=True)
class PartitionView:
    """One calls partition this worker owns."""

    partition: int
    state: str  # open | waiting_for_lake (the previous owner holds its writer) | stalled
    highwater: int | None = None  # the broker's next offset, as the last fetch reported it
    taken: int | None = None  # the offset the worker takes next
    landed: int | None = None  # the offset the lake expects next (everything below is durable)
    waiting: int = 0  # messages held in the event-time merger for the control streams
    last_landed_ms: int | None = None  # wall clock of the last range landed


@dataclass(frozen=True)
class WorkerView:
    topic: str  # calls.raw (with its prefix)
    now_ms: int
    started_ms: int
    phase: str = "starting"  # starting | running | stopping
    loop_age_s: float | None = None  # since the consume loop last turned; None before it runs
    control_loaded: bool = False
    control_from_snapshot: bool = False
    group_joined: bool = False
    tripped: bool = False
    partitions: tuple[PartitionView, ...] = ()
    landed: Mapping[str, int] = field(default_factory=dict)  # the stats of the ranges landed
    counters: Mapping[str, int] = field(default_factory=dict)  # StreamWorker.counters
    control: Mapping[str, int] = field(default_factory=dict)  # ControlState.counts
    accounts: int = 0
    watermarks: Mapping[tuple[str, int], int] = field(default_factory=dict)  # (stream, partition) -> ms
    dead_pending: int = 0  # dead letters sent and not yet acknowledged, or waiting to be sent again
    rss_bytes: int | None = None
    native_decoder: bool = False  # Avro bodies read by pipeline/native/ (else fastavro alone)


@dataclass
class Metric:
    name: str
    kind: str  # counter | gauge
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: Any) -> Metric:
        self.samples.append(({k: str(v) for k, v in labels.items()}, value))
        return self


def render(metrics: Iterable[Metric]) -> str:
    """The Prometheus text format of `metrics` (prometheus_client's exposition: HELP, TYPE, the
    samples), refusing a label name outside `LABELS`."""
    families: list[Any] = []
    for m in metrics:
        bad = {k for labels, _ in m.samples for k in labels} - LABELS
        if bad:
            raise ValueError(f"label {sorted(bad)[0]} may not be rendered")
        counter = m.kind == "counter"
        family = (CounterMetricFamily if counter else GaugeMetricFamily)(m.name, m.help)
        # samples of one family may carry different labels (a rejection's reason): as given
        sample = family.name + ("_total" if counter else "")
        family.samples += [Sample(sample, dict(labels), float(value)) for labels, value in m.samples]
        families.append(family)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry).decode()


class _Fixed(Collector):
    """Metric families computed before the scrape (from a `WorkerView`), handed to the registry."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterable[Any]:
        return self.families


def health(view: WorkerView) -> tuple[bool, dict[str, Any]]:
    """Liveness: the consume loop turns (a worker still loading its control state is alive)."""
    if view.tripped:
        return False, {"status": "tripped"}
    if view.loop_age_s is None:
        return True, {"status": "ok", "phase": view.phase}
    age = round(view.loop_age_s, 3)
    if view.loop_age_s > LIVENESS_S:
        return False, {"status": "stalled", "phase": view.phase, "loop_age_s": age}
    return True, {"status": "ok", "phase": view.phase, "loop_age_s": age}


def readiness(view: WorkerView) -> tuple[bool, dict[str, Any]]:
    """Ready: the control state is loaded and the worker is in the consumer group (with or
    without calls partitions: a group larger than the topic leaves some members none)."""
    ready = view.control_loaded and view.group_joined and view.phase == "running" and not view.tripped
    return ready, {
        "ready": ready,
        "phase": view.phase,
        "control_state": "loaded" if view.control_loaded else "loading",
        "group": "joined" if view.group_joined else "joining",
        "partitions": sorted(p.partition for p in view.partitions),
    }


def metrics_of(view: WorkerView) -> list[Metric]:
    """Every metric of a worker, from its view."""
    topic = view.topic
    ran = StreamStats.from_counts(view.landed)
    out = [
        Metric("callpipe_worker_ready", "gauge", "1 when /readyz answers ready.").add(
            float(readiness(view)[0])
        ),
        Metric("callpipe_control_state_loaded", "gauge", "1 once the control topics are read whole.").add(
            float(view.control_loaded)
        ),
        Metric("callpipe_group_joined", "gauge", "1 while the worker holds an assignment of its group.").add(
            float(view.group_joined)
        ),
        Metric("callpipe_worker_tripped", "gauge", "1 once the trip-wire stopped the worker.").add(
            float(view.tripped)
        ),
        Metric("callpipe_process_start_time_seconds", "gauge", "When the worker process started.").add(
            view.started_ms / 1000
        ),
        Metric(
            "callpipe_native_decoder",
            "gauge",
            "1 when Avro bodies are read by the native decoder, 0 when by fastavro alone (not built).",
        ).add(float(view.native_decoder)),
    ]
    if view.loop_age_s is not None:
        out.append(
            Metric(
                "callpipe_loop_last_turn_age_seconds", "gauge", "Seconds since the consume loop last turned."
            ).add(view.loop_age_s)
        )
    if view.rss_bytes is not None:
        out.append(
            Metric("callpipe_process_resident_memory_bytes", "gauge", "Resident memory of the process.").add(
                view.rss_bytes
            )
        )
    out += [
        Metric("callpipe_events_consumed_total", "counter", "Events of the ranges landed, good or bad.").add(
            ran.events_in, topic=topic
        ),
        Metric("callpipe_messages_consumed_total", "counter", "Messages of the ranges landed.").add(
            ran.messages, topic=topic
        ),
        _by(
            Metric("callpipe_rows_landed_total", "counter", "Rows landed in each lake zone."),
            {"vault": ran.written.get("vault", 0), "analytics": ran.written.get("analytics", 0)},
            "zone",
            topic=topic,
        ),
        _by(
            Metric(
                "callpipe_events_dead_lettered_total",
                "counter",
                "Events of the ranges landed that went to the dead letters, by reason.",
            ),
            ran.dead_letters,
            "reason",
            topic=topic,
        ),
        _by(
            Metric(
                "callpipe_events_dropped_total",
                "counter",
                "Events (or parts of them) dropped by consent, erasure, restriction or retention, by reason.",
            ),
            ran.drops,
            "reason",
            topic=topic,
        ),
    ]
    sent = {name.partition(".")[2]: n for name, n in view.counters.items() if name.startswith("dead_letter.")}
    out.append(
        _by(
            Metric(
                "callpipe_dead_letters_sent_total",
                "counter",
                "Dead letters sent, of calls and of the control partitions this worker owns, by reason.",
            ),
            sent,
            "reason",
        )
    )
    out.append(
        Metric(
            "callpipe_dead_letters_pending", "gauge", "Dead letters not yet acknowledged by the broker."
        ).add(view.dead_pending)
    )
    for key, (name, text) in _WORKER_COUNTERS.items():
        out.append(Metric(name, "counter", text).add(view.counters.get(key, 0), topic=topic))
    out += _partitions(view)
    out += _control(view)
    return out


def _by(metric: Metric, counts: Mapping[str, int], label: str, **labels: Any) -> Metric:
    for key, n in sorted(counts.items()):
        metric.add(n, **labels, **{label: key})
    return metric


def _partitions(view: WorkerView) -> list[Metric]:
    topic = view.topic
    states = Metric("callpipe_partitions", "gauge", "Calls partitions owned, by state.")
    for state in ("open", "waiting_for_lake", "stalled"):
        states.add(sum(p.state == state for p in view.partitions), topic=topic, state=state)
    lag = Metric(
        "callpipe_consumer_lag_messages", "gauge", "High watermark minus the offset the worker takes next."
    )
    unlanded = Metric(
        "callpipe_unlanded_messages", "gauge", "High watermark minus the offset the lake expects next."
    )
    waiting = Metric(
        "callpipe_merger_waiting_messages", "gauge", "Messages waiting in event time for the control streams."
    )
    landed = Metric(
        "callpipe_last_landed_timestamp_seconds", "gauge", "When the partition last landed a range durably."
    )
    for p in sorted(view.partitions, key=lambda p: p.partition):
        at = {"topic": topic, "partition": p.partition}
        if p.highwater is not None and p.taken is not None:
            lag.add(max(0, p.highwater - p.taken), **at)
        if p.highwater is not None and p.landed is not None:
            unlanded.add(max(0, p.highwater - p.landed), **at)
        if p.state == "open":
            waiting.add(p.waiting, **at)
        if p.last_landed_ms is not None:
            landed.add(p.last_landed_ms / 1000, **at)
    return [states, lag, unlanded, waiting, landed]


def _control(view: WorkerView) -> list[Metric]:
    records = Metric(
        "callpipe_control_records_total",
        "counter",
        "Control records read by this worker: applied to its state, rejected (dead-lettered by "
        "the partition's owner), or failed to apply.",
    )
    for stream in ("consent", "requests"):
        records.add(view.control.get(f"{stream}_applied", 0), stream=stream, outcome="applied")
        records.add(view.control.get(f"{stream}_errors", 0), stream=stream, outcome="error")
        prefix = stats.rejected(stream, "")
        for name, n in sorted(view.control.items()):
            if name.startswith(prefix):
                records.add(n, stream=stream, outcome="rejected", reason=name[len(prefix) :])
    age = Metric(
        "callpipe_control_watermark_age_seconds",
        "gauge",
        "Wall clock minus the event-time watermark of each control partition.",
    )
    for (stream, partition), ms in sorted(view.watermarks.items()):
        if ms >= 0:
            age.add(max(0.0, (view.now_ms - ms) / 1000), stream=stream, partition=partition)
    return [
        Metric("callpipe_control_accounts", "gauge", "Accounts in the control state.").add(view.accounts),
        Metric(
            "callpipe_control_from_snapshot", "gauge", "1 when the control state started from its snapshot."
        ).add(float(view.control_from_snapshot)),
        records,
        age,
    ]
