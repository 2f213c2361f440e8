"""Helpers for the stream tests: topics, publishing, a worker subprocess, waiting on the lake."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.partitioner import DefaultPartitioner

from pipeline import codec
from pipeline.bench import kafka as bench_kafka
from pipeline.bench import worker as bench_worker
from pipeline.carrier.generate import generate_traffic
from pipeline.kafka_access import ADMIN, CARRIER, OPERATOR, WORKER, KafkaAccess
from pipeline.kafka_metadata import topic_partitions
from pipeline.settings import Settings
from schemas import topics
from schemas.clock import HOUR_MS
from sinks.read import scan, zone_files
from sinks.stats import StreamStats, read_stats

ROOT = Path(__file__).resolve().parents[2]


def access(role: str, bootstrap: str | None = None) -> KafkaAccess:
    """How the tests connect as `role` to the secure test broker (CALLPIPE_HOME's secrets)."""
    got = Settings.from_env().kafka(role)
    return got.with_bootstrap(bootstrap) if bootstrap else got


def as_operator(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A `callpipe` command as the operator (dlq inspect and replay are the operator's)."""
    operator = access(OPERATOR, env["CALLPIPE_BOOTSTRAP"]).env()
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env={**os.environ, **env, **operator},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def make_topics(bootstrap: str, prefix: str, partitions: int) -> None:
    """A prefixed topic set, created as the operator, with the roles' ACLs granted by the admin
    (the benchmarks' own, for the tests)."""
    bench_kafka.make_topics(replace(Settings.from_env(), bootstrap=bootstrap, partitions=partitions), prefix)


def grow(bootstrap: str, topic: str, total: int) -> None:
    """Add partitions to `topic` up to `total`, and wait until the broker's metadata shows them."""

    async def go() -> None:
        admin = AIOKafkaAdminClient(**access(ADMIN, bootstrap).aiokafka())
        await admin.start()
        try:
            await admin.create_partitions({topic: NewPartitions(total_count=total)})
        finally:
            await admin.close()

    asyncio.run(go())
    deadline = time.monotonic() + 30
    while len(asyncio.run(topic_partitions(access(OPERATOR, bootstrap), [topic])).get(topic, ())) < total:
        assert time.monotonic() < deadline, f"{topic} did not grow to {total} partitions"
        time.sleep(0.2)


def wait_for_group(bootstrap: str, group: str, members: int, timeout_s: float) -> None:
    """Until the consumer group is stable with `members` members (every one has its partitions)."""
    bench_kafka.wait_for_group(access(OPERATOR, bootstrap), group, members, timeout_s)


def partition_of(account: str, partitions: int) -> int:
    return DefaultPartitioner()(account.encode(), list(range(partitions)), list(range(partitions)))


async def _publish(bootstrap: str, topic: str, messages: Sequence[tuple[bytes | None, bytes, int]]) -> None:
    producer = AIOKafkaProducer(
        **access(CARRIER, bootstrap).aiokafka(), linger_ms=5, max_request_size=10_000_000
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k, partition=p) for k, v, p in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def publish(bootstrap: str, topic: str, messages: Sequence[tuple[bytes | None, bytes, int]]) -> None:
    asyncio.run(_publish(bootstrap, topic, messages))


def records_to_messages(
    records: Sequence[dict[str, Any]], record_name: str, partitions: int, fmt: str = "avro", batch: int = 1
) -> list[tuple[bytes | None, bytes, int]]:
    """Single-event messages keyed by account; batches group the events of one partition."""
    by_partition: dict[int, list[dict[str, Any]]] = {}
    order: list[tuple[bytes | None, bytes, int]] = []
    for rec in records:
        p = partition_of(rec["account_id"], partitions)
        if batch == 1:
            order.append((rec["account_id"].encode(), codec.encode([rec], record_name, fmt, 1)[0], p))
        else:
            by_partition.setdefault(p, []).append(rec)
    for p, recs in by_partition.items():
        for value in codec.encode(recs, record_name, fmt, batch):
            order.append((None, value, p))
    return order


def start_worker(prefix: str, lake: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env, "CALLPIPE_LAKE": str(lake)}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker", "--prefix", prefix],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full,
            cwd=ROOT,
        )


def children(pid: int) -> list[int]:
    """The pids of a process's children (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait_s: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_events(
    lake: Path, events: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None
) -> StreamStats:
    deadline = time.monotonic() + timeout_s
    stats = StreamStats()
    while time.monotonic() < deadline:
        stats = read_stats(lake)
        if stats.events_in >= events:
            return stats
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}")
        time.sleep(0.5)
    raise AssertionError(f"lake holds {stats.events_in} of {events} events after {timeout_s}s")


PARTITIONS = 4  # of the test topics


def worker_env(tmp: Path, bootstrap: str) -> dict[str, str]:
    """A worker's environment, naming the suite's vault key file (tests/conftest.py) so that a
    job run with this environment alone opens what the worker wrote."""
    env = bench_worker.worker_env(tmp, access(WORKER, bootstrap), PARTITIONS)
    if "CALLPIPE_VAULT_KEY_FILE" in os.environ:
        env["CALLPIPE_VAULT_KEY_FILE"] = os.environ["CALLPIPE_VAULT_KEY_FILE"]
    return env


def zone(lake: Path, name: str) -> list[dict[str, Any]]:
    """A zone's rows as DuckDB reads them (the vault decrypted with this process's keys)."""
    con = duckdb.connect()
    files = zone_files(lake, name)
    if not files:
        return []
    source, params = scan(con, files, filename=False)
    rel = con.execute(f"SELECT * FROM {source}", params)
    cols = [d[0] for d in rel.description]
    return [dict(zip(cols, row, strict=True)) for row in rel.fetchall()]


def consume_all(bootstrap: str, topic: str) -> list[Any]:
    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(
            topic, **access(OPERATOR, bootstrap).aiokafka(), auto_offset_reset="earliest", group_id=None
        )
        await consumer.start()
        out: list[Any] = []
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=3000)
                if not batch:
                    return out
                for records in batch.values():
                    out.extend(records)
        finally:
            await consumer.stop()

    return asyncio.run(run())


def kill_trial(kafka_bootstrap: str, tmp: Path, seed: int, processes: int = 1) -> None:
    """A worker killed with SIGKILL a few seconds into 6,000 events (half single-event
    messages, half 100-event batches), then restarted: every event lands once in both zones.
    With `processes` > 1 (`callpipe worker --processes`), the SIGKILL hits the command and its
    members must die with it."""
    prefix = f"k{seed}x{random.randrange(1 << 30):x}."
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    start = int(time.time() * 1000) - 3 * HOUR_MS
    traffic = generate_traffic(seed, 6_000, start, 2 * HOUR_MS, accounts=300)
    messages = records_to_messages(traffic.calls[:3_000], "CallEvent", PARTITIONS, "avro", 1)
    messages += records_to_messages(traffic.calls[3_000:], "CallEvent", PARTITIONS, "avro", 100)
    publish(kafka_bootstrap, prefix + topics.CALLS, messages)
    lake = tmp / f"lake{seed}"
    env = {**worker_env(tmp, kafka_bootstrap), "CALLPIPE_WORKER_PROCESSES": str(processes)}
    proc = start_worker(prefix, lake, env, tmp / f"worker{seed}.log")
    rng = random.Random(seed)
    time.sleep(rng.uniform(4.0, 9.0))  # start-up takes a few seconds; kill mid-stream
    members = children(proc.pid)
    assert len(members) == (processes if processes > 1 else 0)
    stop(proc, signal.SIGKILL)
    gone_by = time.monotonic() + 10
    while [m for m in members if alive(m)] and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert [m for m in members if alive(m)] == [], "members outlived the killed worker"
    proc = start_worker(prefix, lake, env, tmp / f"worker{seed}.log")
    try:
        wait_for_events(lake, 6_000, 180, proc)
    finally:
        stop(proc)
    for name in ("vault", "analytics"):
        ids = Counter(r["event_id"] for r in zone(lake, name))
        assert [i for i, n in ids.items() if n > 1] == []
    vault_ids = {r["event_id"] for r in zone(lake, "vault")}
    assert vault_ids == {c["event_id"] for c in traffic.calls}
