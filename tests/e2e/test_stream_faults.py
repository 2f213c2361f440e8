"""Faults the worker meets on a real broker and a real file system: a dead letter larger than
calls.dlq accepts (at the broker's exact limit), and a lake whose disk fills up mid-stream."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
import random
import re
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import MessageSizeTooLargeError

from pipeline.carrier.generate import generate_traffic
from pipeline.kafka_access import ADMIN, CARRIER, OPERATOR
from pipeline.stream.runner import read_stats
from tests.e2e.test_stream_e2e import worker_env, zone
from tests.streamkit import (
    access,
    make_topics,
    publish,
    records_to_messages,
    start_worker,
    stop,
    wait_for_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
PARTITIONS = 2
HOUR = 3_600_000


async def _accepts(bootstrap: str, topic: str, size: int, value: bytes = b"", role: str = ADMIN) -> bool:
    producer = AIOKafkaProducer(**access(role, bootstrap).aiokafka(), max_request_size=64 * 1024 * 1024)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value or b"x" * size, partition=0)
        return True
    except MessageSizeTooLargeError:
        return False
    finally:
        await producer.stop()


def largest_accepted(bootstrap: str, topic: str) -> int:
    """The largest value (no key, no headers) the broker accepts on `topic`, to the byte."""

    async def search() -> int:
        admin = AIOKafkaAdminClient(**access(ADMIN, bootstrap).aiokafka())
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1)])
        finally:
            await admin.close()
        low, high = 10 * 1024 * 1024 - 4096, 10 * 1024 * 1024 + 1024  # message.max.bytes: 10 MiB
        assert await _accepts(bootstrap, topic, low) and not await _accepts(bootstrap, topic, high)
        while high - low > 1:
            mid = (low + high) // 2
            if await _accepts(bootstrap, topic, mid):
                low = mid
            else:
                high = mid
        return low

    return asyncio.run(search())


def read_dlq(bootstrap: str, topic: str) -> list[tuple[bytes, dict[str, bytes]]]:
    async def go() -> list[tuple[bytes, dict[str, bytes]]]:
        consumer = AIOKafkaConsumer(
            topic,
            **access(OPERATOR, bootstrap).aiokafka(),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        out = []
        try:
            batches = await consumer.getmany(timeout_ms=5_000)
            for messages in batches.values():
                out += [(m.value or b"", dict(m.headers)) for m in messages]
        finally:
            await consumer.stop()
        return out

    return asyncio.run(go())


def test_a_dead_letter_at_the_broker_limit_is_kept_in_the_lake_and_the_stream_goes_on(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"big{random.randrange(1 << 30):x}."
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    limit = largest_accepted(kafka_bootstrap, prefix + "scratch")
    big = b"{" + b"x" * (limit - 1)  # one line, not JSON, not Avro: a dead letter of exactly the limit
    start = int(time.time() * 1000) - 2 * HOUR
    calls = generate_traffic(31, 200, start, HOUR, accounts=50).calls
    good = records_to_messages(calls, "CallEvent", PARTITIONS)
    before = [m for m in good if m[2] == 0][:20]
    rest = [m for m in good if m not in before]
    publish(kafka_bootstrap, prefix + "calls.raw", before)
    assert asyncio.run(_accepts(kafka_bootstrap, prefix + "calls.raw", 0, big, CARRIER))
    publish(kafka_bootstrap, prefix + "calls.raw", rest)
    lake = tmp_path / "lake"
    proc = start_worker(prefix, lake, worker_env(tmp_path, kafka_bootstrap), tmp_path / "worker.log")
    try:
        stats = wait_for_events(lake, len(calls) + 1, 120, proc)
    finally:
        stop(proc)
    assert proc.returncode == 0
    dead = {k: v for k, v in stats.items() if k.startswith("dead_letter.")}
    assert sum(dead.values()) == 1  # counted once
    assert stats["vault"] == len(calls)
    (stub,) = [(v, h) for v, h in read_dlq(kafka_bootstrap, prefix + "calls.dlq")]
    value, headers = stub
    assert value == b""
    assert headers["callpipe.kept"] == b"_rejects"
    assert int(headers["callpipe.size"]) == len(big)
    assert headers["callpipe.sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert headers["callpipe.source.offset"] == str(len(before)).encode()
    kept = [
        orjson.loads(line)
        for p in (lake / "_rejects").rglob("*.jsonl")
        for line in p.read_bytes().split(b"\n")
        if line
    ]
    assert [base64.b64decode(k["raw_b64"]) for k in kept] == [big]
    log = (tmp_path / "worker.log").read_text()
    assert "Traceback" not in log


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 24 MiB tmpfs for the lake (the tests run as root, as CI does)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.fail(
            f"cannot mount a tmpfs for the disk-full test (needs root): {done.stderr.decode().strip()}"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_pauses_the_worker_which_lands_everything_once_when_space_returns(
    kafka_bootstrap: str, tmp_path: Path, small_disk: Path
) -> None:
    prefix = f"full{random.randrange(1 << 30):x}."
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    start = int(time.time() * 1000) - 3 * HOUR
    calls = generate_traffic(32, 4_000, start, 2 * HOUR, accounts=300).calls
    messages = records_to_messages(calls, "CallEvent", PARTITIONS)
    lake = small_disk / "lake"
    lake.mkdir()
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 256 * 1024))  # room for the first flushes only
    log = tmp_path / "worker.log"
    env = worker_env(tmp_path, kafka_bootstrap) | {"CALLPIPE_FLUSH_ROWS": "500"}
    proc = start_worker(prefix, lake, env, log)
    try:
        publish(kafka_bootstrap, prefix + "calls.raw", messages)
        deadline = time.monotonic() + 120
        while "errno 28" not in log.read_text():
            assert time.monotonic() < deadline, "the disk never filled"
            assert proc.poll() is None, "the worker died"
            time.sleep(0.5)
        time.sleep(12)  # the worker stays up on a full disk, retrying
        assert proc.poll() is None, "the worker exited on a full disk"
        landed_while_full = read_stats(lake)["events_in"]
        assert landed_while_full < len(calls)
        filler.unlink()  # space returns
        wait_for_events(lake, len(calls), 180, proc)
    finally:
        stop(proc)
    for name in ("vault", "analytics"):
        ids = Counter(r["event_id"] for r in zone(lake, name))
        assert [i for i, n in ids.items() if n > 1] == []
    assert {r["event_id"] for r in zone(lake, "vault")} == {c["event_id"] for c in calls}
    assert not list(lake.rglob("*.tmp"))
    text = log.read_text()
    stamps = [
        datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f")
        for t in re.findall(r"^\[([\d-]+ [\d:,]+)\].*errno 28", text, flags=re.M)
    ]
    assert stamps
    # one line per 10 s interval for the cause, not one per retry
    assert all((b - a).total_seconds() >= 9.5 for a, b in itertools.pairwise(stamps))
