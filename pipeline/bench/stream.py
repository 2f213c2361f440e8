"""`callpipe bench stream`: the worker against a passthrough consumer on the same data, same run.

For each message shape (single events, 500-event batches): fresh prefixed topics get the accounts'
consents, privacy requests and N calls (realistic: a share with transcripts), then a worker
subprocess consumes them into its own lake, then the passthrough baseline (pipeline.bench.passthrough)
consumes the same topic, once with aiokafka and once with confluent-kafka: the faster is the
baseline. Rate = events / (last durable range - first consumed message). The last range of each
partition also holds the flush timer's wait after the input ran out, so the
"steady" rate leaves those ranges out; the end-to-end rate keeps them. Both sides flush by the same
settings (CALLPIPE_FLUSH_ROWS, CALLPIPE_FLUSH_SECONDS).

Then, with the single-event worker caught up, a paced phase sends single events at a fixed rate:
produce-to-durable latency of every message (its record timestamp against the mtime of the
manifest of the range holding its offset) and the worker's resident memory over time (VmRSS from
/proc; the full run lasts 10 minutes). Last, `callpipe ingest` without a broker, twice with the same
number of calls: one day of traffic, and a 180-day backfill (the same files, spread over 180 days:
the case that writes one file per zone x day x bucket).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import codec
from pipeline.bench import kafka
from pipeline.bench.common import SEED, BenchError, percentile, table
from pipeline.bench.passthrough import CLIENTS, Commit, run_passthrough, run_passthrough_processes
from pipeline.bench.worker import Worker, home_keys, lake_commits
from pipeline.carrier.generate import HOUR_MS, Traffic, generate_traffic
from pipeline.carrier.produce import Shipment, partition_for, plan_messages, publish
from pipeline.kafka_access import CARRIER, OPERATOR, WORKER
from pipeline.keys import create_key_file
from pipeline.settings import Settings
from schemas.topics import CALLS, CONSENT, REQUESTS
from sinks.lake import source_name

log = logging.getLogger("callpipe.bench")
TARGET_RATIO = 0.6  # issue 8: both message shapes at 0.6 of the passthrough or better
TARGET_SINGLE_RATE = 12_000
TARGET_MEMORY_GROWTH = 0.20
BACKFILL_DAYS = 180
TARGET_INGEST_DAY_RATE = 20_000
PACED_BACKLOG = 20_000  # events the worker of many processes catches up on before its paced phase
TARGET_INGEST_BACKFILL_RATE = 10_000


@dataclass(frozen=True)
class StreamSpec:
    events: int  # calls per message shape
    batch: int  # events per message of the batch shape
    accounts: int
    paced_seconds: float
    paced_rate: float  # events/s of the paced phase (0: half the measured single-event rate)
    ingest_events: int
    paced_processes_seconds: float  # the paced phase of the worker of one process per core


QUICK = StreamSpec(
    events=100_000,
    batch=500,
    accounts=2_000,
    paced_seconds=40,
    paced_rate=0,
    ingest_events=50_000,
    paced_processes_seconds=40,
)
FULL = StreamSpec(
    events=300_000,
    batch=500,
    accounts=5_000,
    paced_seconds=600,
    paced_rate=0,
    ingest_events=200_000,
    paced_processes_seconds=300,
)


def rates(first_consume: float, commits: Sequence[Commit], idle_s: float = 0.0) -> dict[str, float]:
    """events/s from the first consumed message to the last durable range (end to end), and the
    same without the time the consumer sat idle in between (waiting for a flush timer)."""
    if not commits:
        return {"events_per_s": 0, "end_to_end_events_per_s": 0, "seconds": 0.0, "idle_seconds": 0.0}
    total = sum(c.events for c in commits)
    span = max(max(c.at for c in commits) - first_consume, 1e-9)
    return {
        "events_per_s": round(total / max(span - idle_s, 1e-9)),
        "end_to_end_events_per_s": round(total / span),
        "seconds": round(span, 2),
        "idle_seconds": round(idle_s, 2),
    }


def latencies_ms(commits: Sequence[Commit], sent: Sequence[kafka.Sent], partitions: int) -> list[float]:
    """Produce-to-durable latency of every sent message (ms)."""
    by_source: dict[str, list[Commit]] = {}
    for c in commits:
        by_source.setdefault(c.source, []).append(c)
    for cs in by_source.values():
        cs.sort(key=lambda c: c.first)
    firsts = {s: [c.first for c in cs] for s, cs in by_source.items()}
    out = []
    for s in sent:
        source = source_name(CALLS, s.partition)
        cs = by_source.get(source, [])
        for i, produced in enumerate(s.produced_ms):
            offset = s.base_offset + i
            j = bisect.bisect_right(firsts.get(source, []), offset) - 1
            if j >= 0 and cs[j].last >= offset:
                out.append(cs[j].at * 1000 - produced)
    return out


def _preload(settings: Settings, prefix: str, traffic: Traffic, batch: int) -> float:
    jobs = [
        Shipment(prefix + CONSENT, "ConsentEvent", traffic.consents),
        Shipment(prefix + REQUESTS, "PrivacyRequest", traffic.requests),
        Shipment(prefix + CALLS, "CallEvent", traffic.calls, batch_size=batch),
    ]
    summary = asyncio.run(publish(settings.kafka(CARRIER), jobs))
    return summary.events / summary.seconds if summary.seconds else 0.0


def _worker_leg(
    env: dict[str, str], work: Path, name: str, prefix: str, n: int, timeout: float
) -> tuple[Worker, dict[str, float], int]:
    """Start a worker on the shape's topic into a lake of its own and wait until it holds `n`
    events; returns it still running, its rates and its peak RSS (KiB)."""
    worker = Worker.start(prefix, work / f"lake-{name}", env, work / f"worker-{name}.log")
    try:
        peak = worker.wait_for(n, timeout)
        commits = lake_commits(worker.lake)
        first = worker.first_consume()
        return worker, rates(first, commits, worker.idle_seconds(first, max(c.at for c in commits))), peak
    except BaseException:
        worker.stop()
        raise


def _shape(
    settings: Settings,
    env: dict[str, str],
    work: Path,
    traffic: Traffic,
    name: str,
    batch: int,
    prefix: str,
    then: Callable[[Worker, dict[str, float]], dict[str, Any]] | None = None,
    processes: int = 1,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """On one message shape: (`processes` > 1) a worker of that many members, then the
    one-process worker, then the passthrough with each client, then (`processes` > 1) the
    passthrough in that many processes with the faster client (the baseline on the same cores),
    each reading the same backlog from the start.
    `then(worker, rates)` runs with the caught-up one-process worker before it stops (the paced
    phase, which adds events to the topic: so it comes after the other worker)."""
    kafka.make_topics(settings, prefix)
    produce_rate = _preload(settings, prefix, traffic, batch)
    n = len(traffic.calls)
    log.info("stream %s: %s events published (%.0f/s); starting the worker", name, n, produce_rate)
    timeout = max(300.0, n / 300)
    many: dict[str, Any] | None = None
    if processes > 1:
        # `callpipe worker --processes`, one member per core: what a carrier's host gets from one
        # worker, beside the one-process worker the ratio compares with the one-process passthrough.
        env_n = {**env, "CALLPIPE_WORKER_PROCESSES": str(processes)}
        leg, w_n, peak_n = _worker_leg(env_n, work, f"{name}-p{processes}", prefix, n, timeout)
        leg.stop()
        log.info("stream %s: worker of %s processes %s", name, processes, w_n)
        many = {"processes": processes, **w_n, "peak_rss_mib": round(peak_n / 1024, 1)}
    worker, w, peak = _worker_leg(env, work, name, prefix, n, timeout)
    try:
        log.info("stream %s: worker %s", name, w)
        extra = then(worker, w) if then is not None else {}
    finally:
        worker.stop()

    def passthrough(client: str, columns: bool = False) -> dict[str, float]:
        base = run_passthrough(
            settings.kafka(WORKER),
            prefix + CALLS,
            settings.partitions,
            n,
            work / f"passthrough-{name}-{client}{'-columns' if columns else ''}",
            flush_rows=max(1, settings.flush_rows // 2),
            flush_seconds=settings.flush_seconds,
            timeout_s=timeout,
            client=client,
            columns=columns,
        )
        return rates(base.first_consume, base.commits)

    clients: dict[str, dict[str, float]] = {}
    for client in CLIENTS:  # the baseline is the faster client of this run
        clients[client] = passthrough(client)
        log.info("stream %s: passthrough with %s %s", name, client, clients[client])
    fastest = max(CLIENTS, key=lambda c: clients[c]["events_per_s"])
    p = clients[fastest]
    # beside the baseline: the same consumer decoding into columns, as the worker does
    columns = passthrough(fastest, columns=True)
    log.info("stream %s: passthrough into columns with %s %s", name, fastest, columns)
    result: dict[str, Any] = {
        "events": n,
        "events_per_message": batch,
        "produce_events_per_s": round(produce_rate),
        "worker": {**w, "peak_rss_mib": round(peak / 1024, 1)},
        "passthrough": p,
        "passthrough_client": fastest,
        "passthrough_by_client": {c: r["events_per_s"] for c, r in clients.items()},
        "ratio": _ratio(w, p),
        "passthrough_columns": columns,
        "ratio_columns": _ratio(w, columns),
    }
    if many is not None:
        # the fair baseline of the worker of many processes: the passthrough on as many cores
        per_partition = Counter(
            partition_for(c["account_id"].encode(), settings.partitions) for c in traffic.calls
        )
        base = run_passthrough_processes(
            settings.kafka(WORKER),
            prefix + CALLS,
            per_partition,
            work / f"passthrough-{name}-p{processes}",
            processes,
            flush_rows=max(1, settings.flush_rows // 2),
            flush_seconds=settings.flush_seconds,
            timeout_s=timeout,
            client=fastest,
        )
        same_cores = rates(base.first_consume, base.commits)
        log.info("stream %s: passthrough of %s processes with %s %s", name, processes, fastest, same_cores)
        result["worker_processes"] = many
        result["ratio_processes"] = _ratio(many, p)
        result["passthrough_processes"] = {"processes": processes, **same_cores}
        result["ratio_processes_same_cores"] = _ratio(many, same_cores)
    return result, extra


def _paced(
    settings: Settings,
    worker: Worker,
    prefix: str,
    traffic: Traffic,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    parts = settings.partitions
    pool = plan_messages(traffic.calls[:200_000], "CallEvent", "avro", 1, parts)
    messages = [(m.key, m.value, partition_for(m.key or b"", parts)) for m in pool]
    headers = [codec.format_header("avro", 1)]
    held_before = sum(c.events for c in lake_commits(worker.lake))
    samples: list[tuple[float, float]] = []
    next_sample = [0.0]

    def on_tick(elapsed: float) -> None:
        if elapsed >= next_sample[0]:
            rss = worker.memory_kib().get("VmRSS", 0)
            samples.append((round(elapsed, 1), round(rss / 1024, 1)))
            next_sample[0] += max(1.0, seconds / 120)

    log.info("stream paced: %.0f events/s for %.0f s", rate, seconds)
    sent = kafka.produce_paced(
        settings.kafka(CARRIER),
        prefix + CALLS,
        messages,
        headers,
        rate=rate,
        seconds=seconds,
        on_tick=on_tick,
    )
    count = sum(len(s.produced_ms) for s in sent)
    worker.wait_for(held_before + count, max(120.0, settings.flush_seconds * 4))
    lat = latencies_ms(lake_commits(worker.lake), sent, parts)
    window = max(1.0, min(60.0, seconds / 5))
    first = [m for t, m in samples if t <= window]
    last = [m for t, m in samples if t >= seconds - window]
    growth = (max(last) / max(first) - 1) if first and last else None
    return {
        "latency": {
            "rate": round(rate),
            "seconds": seconds,
            "events": count,
            "measured": len(lat),
            "p50_ms": round(percentile(lat, 50)),
            "p99_ms": round(percentile(lat, 99)),
            "max_ms": round(max(lat)) if lat else 0,
        },
        "memory": {
            "window_s": window,
            "first_window_max_mib": max(first) if first else None,
            "last_window_max_mib": max(last) if last else None,
            "growth": round(growth, 3) if growth is not None else None,
            "peak_rss_mib": round(worker.memory_kib().get("VmHWM", 0) / 1024, 1),
            "samples": samples,
        },
    }


def _paced_processes(
    settings: Settings,
    env: dict[str, str],
    work: Path,
    traffic: Traffic,
    prefix: str,
    processes: int,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """The paced phase for `callpipe worker --processes N`, on topics of its own (the single
    shape's topic holds the one-process worker's paced events): the members catch up on a small
    backlog first (so each holds its partitions and its control state is read), then single
    events at `rate`."""
    kafka.make_topics(settings, prefix)
    head = Traffic(traffic.accounts, traffic.calls[:PACED_BACKLOG], traffic.consents, traffic.requests)
    _preload(settings, prefix, head, 1)
    env_n = {**env, "CALLPIPE_WORKER_PROCESSES": str(processes)}
    worker = Worker.start(
        prefix, work / f"lake-paced-p{processes}", env_n, work / f"worker-paced-p{processes}.log"
    )
    try:
        worker.wait_for(len(head.calls), max(300.0, len(head.calls) / 300))
        return {"processes": processes, **_paced(settings, worker, prefix, traffic, rate, seconds)}
    finally:
        worker.stop()


def _ingest(settings: Settings, work: Path, traffic: Traffic, name: str) -> dict[str, Any]:
    """`callpipe ingest` of `traffic` (its calls in Avro container files) into a fresh lake: the
    measurement `pipeline/bench/bench_ingest.py` runs alone."""
    from pipeline.bench.bench_ingest import measure

    jobs = settings.ingest_processes  # as `callpipe ingest` runs by default
    log.info("stream ingest %s: %s events from files, %s processes", name, len(traffic.calls), jobs)
    return measure(settings, work / f"ingest-{name}", traffic, None, jobs)


def _legs(settings: Settings, work: Path, spec: StreamSpec) -> tuple[dict[str, str], int, Traffic]:
    """What every leg of a run shares: the worker's environment but its connection (key, home
    with the dead-letter operator key, the settings both sides flush by), and the seeded traffic
    with its start (ms)."""
    key_file = work / "key.hex"
    create_key_file(key_file)
    home_keys(work / "home")  # the operator key and the vault key file, as `kafka up` makes them
    base = {
        "CALLPIPE_KEY_FILE": str(key_file),
        "CALLPIPE_HOME": str(work / "home"),
        "CALLPIPE_PARTITIONS": str(settings.partitions),
        "CALLPIPE_BUCKETS": str(settings.buckets),
        "CALLPIPE_FLUSH_ROWS": str(settings.flush_rows),
        "CALLPIPE_FLUSH_SECONDS": str(settings.flush_seconds),
        "CALLPIPE_MAX_IDLE_MS": str(settings.max_idle_ms),
    }
    start = int(time.time() * 1000) - 26 * HOUR_MS
    return base, start, generate_traffic(SEED, spec.events, start, 24 * HOUR_MS, accounts=spec.accounts)


def run(settings: Settings, quick: bool, spec: StreamSpec | None = None) -> dict[str, Any]:
    """Measure; returns the figures as plain data. Needs the broker at settings.bootstrap."""
    spec = spec or (QUICK if quick else FULL)
    kafka.probe(settings.kafka(OPERATOR))
    work = Path(tempfile.mkdtemp(prefix="callpipe-bench-stream-"))
    prefixes: list[str] = []
    try:
        base, start, traffic = _legs(settings, work, spec)
        env = {**base, **settings.kafka(WORKER).env()}
        figures: dict[str, Any] = {
            "bench": "stream",
            "quick": quick,
            "settings": {
                "partitions": settings.partitions,
                "buckets": settings.buckets,
                "flush_rows": settings.flush_rows,
                "flush_seconds": settings.flush_seconds,
                "max_idle_ms": settings.max_idle_ms,
                "transcript_share": round(
                    sum(1 for c in traffic.calls if c["transcript"]) / len(traffic.calls), 3
                ),
            },
        }
        prefixes.append(f"cpbench{uuid.uuid4().hex[:8]}.")
        cores = os.cpu_count() or 1
        batch_result, _ = _shape(
            settings, env, work, traffic, "batch", spec.batch, prefixes[-1], processes=cores
        )

        def paced_phase(worker: Worker, measured: dict[str, float]) -> dict[str, Any]:
            rate = spec.paced_rate or max(500.0, measured["events_per_s"] / 2)
            return _paced(settings, worker, prefixes[-1], traffic, rate, spec.paced_seconds)

        prefixes.append(f"cpbench{uuid.uuid4().hex[:8]}.")
        single_result, paced = _shape(
            settings, env, work, traffic, "single", 1, prefixes[-1], then=paced_phase, processes=cores
        )
        figures["shapes"] = {"single": single_result, f"batch{spec.batch}": batch_result}
        figures.update(paced)
        many = single_result.get("worker_processes")
        if many is not None:
            prefixes.append(f"cpbench{uuid.uuid4().hex[:8]}.")
            figures["paced_processes"] = _paced_processes(
                settings,
                env,
                work,
                traffic,
                prefixes[-1],
                cores,
                spec.paced_rate or max(500.0, many["events_per_s"] / 2),
                spec.paced_processes_seconds,
            )
        one_day = Traffic(
            traffic.accounts, traffic.calls[: spec.ingest_events], traffic.consents, traffic.requests
        )
        days_ms = BACKFILL_DAYS * 24 * HOUR_MS
        backfill = generate_traffic(
            SEED, spec.ingest_events, start - days_ms, days_ms, accounts=spec.accounts
        )
        figures["ingest"] = {
            "one_day": _ingest(settings, work, one_day, "one_day"),
            f"backfill_{BACKFILL_DAYS}_days": _ingest(settings, work, backfill, "backfill"),
        }
        ingest_rates = [i["events_per_s"] for i in figures["ingest"].values()]
        growth = figures["memory"]["growth"]
        figures["targets"] = {
            "batch_ratio_at_least_0.6": batch_result["ratio"] is not None
            and batch_result["ratio"] >= TARGET_RATIO,
            "single_ratio_at_least_0.6": single_result["ratio"] is not None
            and single_result["ratio"] >= TARGET_RATIO,
            "single_events_per_s_at_least_12000": single_result["worker"]["events_per_s"]
            >= TARGET_SINGLE_RATE,
            # the same with `callpipe worker --processes` one per core (absent on one core),
            # its ratios against the passthrough in as many processes
            "single_events_per_s_at_least_12000_one_process_per_core": None
            if "worker_processes" not in single_result
            else single_result["worker_processes"]["events_per_s"] >= TARGET_SINGLE_RATE,
            "batch_ratio_at_least_0.6_one_process_per_core": _met(
                batch_result.get("ratio_processes_same_cores")
            ),
            "single_ratio_at_least_0.6_one_process_per_core": _met(
                single_result.get("ratio_processes_same_cores")
            ),
            "memory_growth_within_20pct": None if quick or growth is None else growth <= TARGET_MEMORY_GROWTH,
            "paced_p99_within_flush_interval_plus_2s": None
            if figures["latency"].get("p99_ms") is None
            else figures["latency"]["p99_ms"] <= (settings.flush_seconds + 2) * 1000,
            "paced_p99_within_flush_interval_plus_2s_one_process_per_core": None
            if "paced_processes" not in figures
            else figures["paced_processes"]["latency"]["p99_ms"] <= (settings.flush_seconds + 2) * 1000,
            "ingest_one_day_events_per_s_at_least_20000": ingest_rates[0] >= TARGET_INGEST_DAY_RATE,
            "ingest_180_day_backfill_events_per_s_at_least_10000": ingest_rates[1]
            >= TARGET_INGEST_BACKFILL_RATE,
        }
        return figures
    finally:
        for prefix in prefixes:
            kafka.delete_topics(settings.kafka(OPERATOR), prefix)
        shutil.rmtree(work, ignore_errors=True)


def _ratio(worker: dict[str, Any], baseline: dict[str, Any]) -> float | None:
    """Events per second of `worker` over `baseline`'s (None when the baseline measured none)."""
    return round(worker["events_per_s"] / baseline["events_per_s"], 3) if baseline["events_per_s"] else None


def _met(ratio: float | None) -> bool | None:
    return None if ratio is None else ratio >= TARGET_RATIO


def run_tls_cost(settings: Settings, quick: bool, spec: StreamSpec | None = None) -> dict[str, Any]:
    """Both message shapes, worker and passthrough, first over the development PLAINTEXT listener
    (`kafka up --plaintext`, port+2), then over SASL_SSL as the roles' principals: the price of
    TLS and SCRAM as ratios of the same run."""
    spec = spec or (QUICK if quick else FULL)
    plain = dataclasses.replace(
        settings, kafka_security="plaintext", bootstrap=f"127.0.0.1:{settings.kafka_port + 2}"
    )
    secure = dataclasses.replace(settings, kafka_security="sasl_ssl")
    kafka.probe(secure.kafka(OPERATOR))
    try:
        kafka.probe(plain.kafka(OPERATOR), timeout_s=5.0)
    except BenchError:
        raise BenchError(
            f"no PLAINTEXT listener at {plain.bootstrap}: start the broker with `callpipe kafka up"
            " --plaintext` (development only) to price TLS"
        ) from None
    work = Path(tempfile.mkdtemp(prefix="callpipe-bench-tls-"))
    made: list[tuple[Settings, str]] = []
    try:
        base, _, traffic = _legs(settings, work, spec)
        shapes: dict[str, dict[str, Any]] = {}
        for shape, batch in (("single", 1), (f"batch{spec.batch}", spec.batch)):
            for name, s in (("plaintext", plain), ("sasl_ssl", secure)):
                prefix = f"cptls{uuid.uuid4().hex[:8]}."
                made.append((s, prefix))
                env = {**base, **s.kafka(WORKER).env()}
                result, _ = _shape(s, env, work, traffic, f"{name}-{shape}", batch, prefix)
                shapes.setdefault(shape, {})[name] = result
            p, t = shapes[shape]["plaintext"], shapes[shape]["sasl_ssl"]
            shapes[shape]["worker_tls_over_plain"] = round(
                t["worker"]["events_per_s"] / max(p["worker"]["events_per_s"], 1), 3
            )
            shapes[shape]["passthrough_tls_over_plain"] = round(
                t["passthrough"]["events_per_s"] / max(p["passthrough"]["events_per_s"], 1), 3
            )
            shapes[shape]["produce_tls_over_plain"] = round(
                t["produce_events_per_s"] / max(p["produce_events_per_s"], 1), 3
            )
        return {"bench": "stream-tls-cost", "quick": quick, "events": spec.events, "shapes": shapes}
    finally:
        for s, prefix in made:
            kafka.delete_topics(s.kafka(OPERATOR), prefix)
        shutil.rmtree(work, ignore_errors=True)


def render_tls_cost(figures: dict[str, Any]) -> str:
    rows = []
    for shape, f in figures["shapes"].items():
        for name in ("plaintext", "sasl_ssl"):
            r = f[name]
            rows.append(
                [
                    shape,
                    name,
                    r["produce_events_per_s"],
                    r["worker"]["events_per_s"],
                    r["passthrough"]["events_per_s"],
                    r["ratio"],
                ]
            )
        rows.append(
            [
                shape,
                "SASL_SSL / PLAINTEXT",
                f["produce_tls_over_plain"],
                f["worker_tls_over_plain"],
                f["passthrough_tls_over_plain"],
                "",
            ]
        )
    return table(
        ["messages", "listener", "produce ev/s", "worker ev/s", "passthrough ev/s", "worker/passthrough"],
        rows,
    )


def _paced_row(name: str, lat: dict[str, Any], mem: dict[str, Any]) -> list[Any]:
    return [
        name,
        lat["rate"],
        lat["seconds"],
        lat["events"],
        lat["p50_ms"],
        lat["p99_ms"],
        lat["max_ms"],
        mem["first_window_max_mib"],
        mem["last_window_max_mib"],
        mem["growth"],
    ]


def render(figures: dict[str, Any]) -> str:
    rows = []
    for name, s in figures["shapes"].items():
        rows.append(
            [
                name,
                s["events"],
                s["worker"]["events_per_s"],
                s["passthrough"]["events_per_s"],
                s["ratio"],
                s["worker"]["end_to_end_events_per_s"],
                s["passthrough"]["end_to_end_events_per_s"],
                s["worker"]["peak_rss_mib"],
                ", ".join(f"{c} {r}" for c, r in s["passthrough_by_client"].items()),
            ]
        )
        columns = s.get("passthrough_columns")
        if columns is not None:
            rows.append(
                [
                    f"{name}, against the passthrough into columns",
                    s["events"],
                    s["worker"]["events_per_s"],
                    columns["events_per_s"],
                    s["ratio_columns"],
                    s["worker"]["end_to_end_events_per_s"],
                    columns["end_to_end_events_per_s"],
                    "",
                    s["passthrough_client"],
                ]
            )
        many = s.get("worker_processes")
        if many is not None:
            rows.append(
                [
                    f"{name}, worker of {many['processes']} processes",
                    s["events"],
                    many["events_per_s"],
                    s["passthrough"]["events_per_s"],
                    s["ratio_processes"],
                    many["end_to_end_events_per_s"],
                    s["passthrough"]["end_to_end_events_per_s"],
                    many["peak_rss_mib"],
                    "",
                ]
            )
            same = s["passthrough_processes"]
            rows.append(
                [
                    f"{name}, both in {many['processes']} processes",
                    s["events"],
                    many["events_per_s"],
                    same["events_per_s"],
                    s["ratio_processes_same_cores"],
                    many["end_to_end_events_per_s"],
                    same["end_to_end_events_per_s"],
                    many["peak_rss_mib"],
                    f"{s['passthrough_client']} in {same['processes']} processes",
                ]
            )
    out = [
        table(
            [
                "messages",
                "events",
                "worker ev/s",
                "passthrough ev/s",
                "ratio",
                "worker e2e ev/s",
                "pass e2e ev/s",
                "worker peak MiB",
                "passthrough ev/s by client",
            ],
            rows,
        )
    ]
    lat, mem, ing = figures["latency"], figures["memory"], figures["ingest"]
    pp = figures.get("paced_processes")
    paced_many = (
        [_paced_row(f"single events, worker of {pp['processes']} processes", pp["latency"], pp["memory"])]
        if pp is not None
        else []
    )
    out.append("")
    out.append(
        table(
            [
                "paced phase",
                "rate ev/s",
                "seconds",
                "events",
                "p50 ms",
                "p99 ms",
                "max ms",
                "RSS first MiB",
                "RSS last MiB",
                "growth",
            ],
            [
                _paced_row("single events, one process", lat, mem),
                *paced_many,
            ],
        )
    )
    out.append("")
    targets = {
        "one_day": TARGET_INGEST_DAY_RATE,
        f"backfill_{BACKFILL_DAYS}_days": TARGET_INGEST_BACKFILL_RATE,
    }
    out.append(
        table(
            [
                "callpipe ingest (no broker)",
                "events",
                "input files",
                "days",
                "lake files",
                "seconds",
                "ev/s",
                "target ev/s",
            ],
            [
                [
                    name,
                    i["events"],
                    i["input_files"],
                    i["days"],
                    i["lake_files"],
                    i["seconds"],
                    i["events_per_s"],
                    targets.get(name),
                ]
                for name, i in ing.items()
            ],
        )
    )
    out.append("")
    out.append(table(["target", "met"], [[k, v] for k, v in figures["targets"].items()]))
    s = figures["settings"]
    out.append(
        f"\nsettings: {s['partitions']} partitions, {s['buckets']} buckets, "
        f"flush at {s['flush_rows']} rows or {s['flush_seconds']} s, consent idle {s['max_idle_ms']} ms, "
        f"transcripts on {s['transcript_share']:.1%} of calls"
    )
    return "\n".join(out)
