"""Helpers for the stream tests: topics, publishing, a worker subprocess, waiting on the lake."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from infra import security
from infra.topics import create_topics
from pipeline import codec
from pipeline.kafka_access import ADMIN, CARRIER, OPERATOR, KafkaAccess
from pipeline.settings import Settings
from pipeline.stream.runner import read_stats

ROOT = Path(__file__).resolve().parent.parent


def access(role: str, bootstrap: str | None = None) -> KafkaAccess:
    """How the tests connect as `role` to the secure test broker (CALLPIPE_HOME's secrets)."""
    got = Settings.from_env().kafka(role)
    return got.with_bootstrap(bootstrap) if bootstrap else got


def make_topics(bootstrap: str, prefix: str, partitions: int) -> None:
    """A prefixed topic set, created as the operator, with the roles' ACLs granted by the admin."""
    asyncio.run(create_topics(access(OPERATOR, bootstrap), partitions, prefix))
    security.grant(access(ADMIN, bootstrap), prefix)


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
) -> Counter[str]:
    deadline = time.monotonic() + timeout_s
    stats: Counter[str] = Counter()
    while time.monotonic() < deadline:
        stats = read_stats(lake)
        if stats["events_in"] >= events:
            return stats
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}")
        time.sleep(0.5)
    raise AssertionError(f"lake holds {stats['events_in']} of {events} events after {timeout_s}s")
