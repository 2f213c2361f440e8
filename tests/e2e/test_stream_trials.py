"""Trials of the worker's guarantees against the real broker started by the README's test command:
the broker goes away for 20 s mid-stream, and comes back; workers are killed -9 at random moments.
CI runs one trial of each; the `soak` marker holds the many-round versions
(`bash infra/dev.sh test -m soak`, see the README)."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.carrier.generate import generate_traffic
from schemas import topics
from tests.support.streamkit import (
    ROOT,
    kill_trial,
    make_topics,
    publish,
    records_to_messages,
    start_worker,
    stop,
    wait_for_events,
    worker_env,
    zone,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
PARTITIONS = 4
HOUR = 3_600_000
OUTAGE_S = 20


def kafka(command: str) -> None:
    """`callpipe kafka up|down` on the broker the test command started (same home, same port)."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "kafka", command], cwd=ROOT, capture_output=True, timeout=180
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def _outage_trial(bootstrap: str, tmp: Path, seed: int, outages: int) -> None:
    prefix = f"out{seed}x{random.randrange(1 << 30):x}."
    make_topics(bootstrap, prefix, PARTITIONS)
    start = int(time.time() * 1000) - 3 * HOUR
    calls = generate_traffic(seed, 4_000 * (outages + 1), start, 2 * HOUR, accounts=300).calls
    messages = records_to_messages(calls, "CallEvent", PARTITIONS)
    parts = [messages[i :: outages + 1] for i in range(outages + 1)]
    lake = tmp / "lake"
    log = tmp / "worker.log"
    proc = start_worker(prefix, lake, worker_env(tmp, bootstrap), log)
    sent = 0
    try:
        for i, part in enumerate(parts):
            publish(bootstrap, prefix + topics.CALLS, part)
            sent += len(part)
            wait_for_events(lake, sent, 180, proc)
            if i < outages:
                kafka("down")
                time.sleep(OUTAGE_S)
                assert proc.poll() is None, "the worker exited during the outage"
                kafka("up")
                outage_lines = _warnings(log)
                # one line per cause per 10 s, whatever aiokafka retries (pipeline/lograte.py)
                assert outage_lines <= 40, f"{outage_lines} warning/error lines for a {OUTAGE_S}s outage"
        assert proc.poll() is None
    finally:
        stop(proc)
    for name in ("vault", "analytics"):
        ids = Counter(r["event_id"] for r in zone(lake, name))
        assert [i for i, n in ids.items() if n > 1] == []
    assert {r["event_id"] for r in zone(lake, "vault")} == {c["event_id"] for c in calls}


def _warnings(log: Path) -> int:
    """Warning and error lines the worker has written (a healthy run writes next to none)."""
    return len(re.findall(r"\[(WARNING|ERROR)\]", log.read_text()))


def test_a_broker_outage_of_20s_loses_and_duplicates_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    _outage_trial(kafka_bootstrap, tmp_path, 41, outages=1)


@pytest.mark.soak
def test_two_broker_outages_lose_and_duplicate_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    _outage_trial(kafka_bootstrap, tmp_path, 42, outages=2)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(101, 116))
def test_fifteen_kill_minus_nine_trials(kafka_bootstrap: str, tmp_path: Path, seed: int) -> None:
    kill_trial(kafka_bootstrap, tmp_path, seed)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(121, 126))
def test_five_kill_minus_nine_trials_of_a_worker_of_two_processes(
    kafka_bootstrap: str, tmp_path: Path, seed: int
) -> None:
    kill_trial(kafka_bootstrap, tmp_path, seed, processes=2)
