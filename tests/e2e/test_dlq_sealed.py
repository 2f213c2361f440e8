"""Dead letters without readable personal data, on the real broker: a worker at debug level takes
hostile and good input; no planted phone number, email, IP, card, IBAN or transcript text is in
its log or readable in calls.dlq; `callpipe dlq inspect` shows them to the operator; a repaired
message replayed (twice) lands once. And the trip-wire: a chain that fails every event stops the
worker, non-zero, without landing or dead-lettering the stream; fixed, it resumes without loss."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import codec
from pipeline.carrier.generate import generate_traffic
from pipeline.carrier.generate_pii import generate_transcript
from schemas import topics
from sinks.stats import read_stats
from tests.support.streamkit import (
    ROOT,
    as_operator,
    consume_all,
    make_topics,
    partition_of,
    publish,
    records_to_messages,
    start_worker,
    stop,
    worker_env,
    zone,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
PARTITIONS = 2
HOUR = 3_600_000


def wait_for_messages(lake: Path, messages: int, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if read_stats(lake).messages >= messages:
            return
        assert proc.poll() is None, f"worker exited with {proc.returncode}"
        time.sleep(0.5)
    raise AssertionError(f"lake holds {read_stats(lake).messages} of {messages} messages")


def hostile(
    calls: list[dict[str, Any]], rng: random.Random
) -> tuple[list[tuple[bytes, dict[str, Any]]], set[str]]:
    """Calls full of personal data made bad in ways decoding and validation reject, and every
    personal value planted in them."""
    out, planted = [], set()
    for i, call in enumerate(calls):
        transcript = generate_transcript(rng, "DE")
        call = {**call, "transcript": transcript.text, "caller_ip": "203.0.113.77"}
        planted |= {transcript.text, call["caller"], call["callee"], call["caller_ip"]}
        planted |= {value for _category, value in transcript.pii}
        kind = i % 4
        if kind == 0:  # wrong type: the one the operator repairs
            value = codec.to_json({**call, "duration_s": str(call["duration_s"])}, "CallEvent")
        elif kind == 1:
            value = codec.to_json(call, "CallEvent")[:-7]  # truncated
        elif kind == 2:
            value = codec.to_json({**call, "status": "dropped"}, "CallEvent")
        else:  # validation rejects it after decoding: the dead letter is the re-encoded event
            value = codec.to_json({**call, "ended_at": call["started_at"] - 5000}, "CallEvent")
        out.append((value, call))
    return out, planted


def test_dead_letters_are_sealed_logs_hold_no_personal_data_and_a_repair_lands_once(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    prefix = topic_prefix
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    start = int(time.time() * 1000) - 3 * HOUR
    traffic = generate_traffic(23, 160, start, HOUR, accounts=20)
    good = traffic.calls[:120]
    bad, planted = hostile(traffic.calls[120:], random.Random(4))
    for call in good:
        planted |= {call["caller"], call["callee"]} | ({call["caller_ip"]} if call["caller_ip"] else set())
        if call["transcript"]:
            planted.add(call["transcript"])
    messages = records_to_messages(good, "CallEvent", PARTITIONS, "avro", 1)
    messages += [(c["account_id"].encode(), v, partition_of(c["account_id"], PARTITIONS)) for v, c in bad]
    files = sorted(p for p in (ROOT / "tests" / "bad_inputs").glob("*/*") if p.suffix != ".md")
    files = [p for p in files if p.parent.name != "too_large" and p.name != "make_bad_inputs.py"]
    messages += [(None, p.read_bytes(), i % PARTITIONS) for i, p in enumerate(files)]

    env = {**worker_env(tmp_path, kafka_bootstrap), "CALLPIPE_LOG_LEVEL": "debug"}
    lake = tmp_path / "lake"
    log = tmp_path / "worker.log"
    proc = start_worker(prefix, lake, env, log)
    try:
        publish(kafka_bootstrap, prefix + topics.CALLS, messages)
        wait_for_messages(lake, len(messages), 180, proc)
    finally:
        stop(proc)
    stats = read_stats(lake)
    dead = stats.dead
    assert dead >= len(bad) + len(files)

    # the worker's debug log: no planted value at all
    text = log.read_text(errors="replace")
    assert "DEBUG" in text and "Sending" in text, "the log should be at debug level"
    leaked = sorted(v for v in planted if v in text)
    assert leaked == [], f"{len(leaked)} personal values in the worker log"

    # calls.dlq read by a plain consumer: reasons and coordinates, no planted value
    records = consume_all(kafka_bootstrap, prefix + topics.DLQ)
    assert len(records) == dead
    seen = b"".join(
        (r.value or b"") + (r.key or b"") + b"".join(k.encode() + v for k, v in r.headers) for r in records
    )
    for value in planted:
        assert value.encode() not in seen
    assert all(dict(r.headers)["callpipe.enc"] for r in records if r.value)

    # the operator opens them; without the key, a clear error
    env["CALLPIPE_HOME"] = str(tmp_path / "home")
    env["CALLPIPE_LAKE"] = str(lake)  # the suppression list of erased subjects (none here)
    shown = as_operator(env, "dlq", "inspect", "--prefix", prefix)
    assert shown.returncode == 0, shown.stderr
    for _value, call in bad:
        assert call["caller"] in shown.stdout and call["transcript"] in shown.stdout
    assert f"{dead} dead letters" in shown.stdout
    refused = as_operator({**env, "CALLPIPE_DLQ_KEY_FILE": str(tmp_path / "none.key")}, "dlq", "inspect")
    assert (
        refused.returncode == 2 and "no operator key" in refused.stderr and "Traceback" not in refused.stderr
    )

    # repair the wrong-typed one, replay it twice: it lands once
    out = tmp_path / "repair"
    exported = as_operator(env, "dlq", "inspect", "--prefix", prefix, "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o700"
    target = bad[0][1]
    repaired = None
    for doc_path in sorted(out.glob("*.json")):
        doc = orjson.loads(doc_path.read_bytes())
        value_path = out / doc["value_file"]
        assert oct(value_path.stat().st_mode & 0o777) == "0o600"
        if doc["reason"] == "wrong_type" and target["event_id"].encode() in value_path.read_bytes():
            event = orjson.loads(value_path.read_bytes())
            event["duration_s"] = int(event["duration_s"])
            value_path.write_bytes(orjson.dumps(event))
            repaired = doc
        else:
            value_path.unlink()  # not to be replayed
    assert repaired is not None and repaired["source"]["topic"] == prefix + topics.CALLS
    first = as_operator(env, "dlq", "replay", str(out), "--prefix", prefix)
    assert first.returncode == 0 and "replayed 1 dead letters" in first.stdout, first.stderr
    second = as_operator(env, "dlq", "replay", str(out), "--prefix", prefix)
    assert second.returncode == 0 and "replayed 0 dead letters; skipped 1" in second.stdout, second.stderr

    proc = start_worker(prefix, lake, env, tmp_path / "worker2.log")
    try:
        deadline = time.monotonic() + 120
        while not [r for r in zone(lake, "vault") if r["event_id"] == target["event_id"]]:
            assert time.monotonic() < deadline, "the repaired message did not land"
            assert proc.poll() is None
            time.sleep(0.5)
        time.sleep(3)
    finally:
        stop(proc)
    assert [r["event_id"] for r in zone(lake, "vault")].count(target["event_id"]) == 1


def test_a_broken_chain_trips_the_worker_and_a_fixed_restart_lands_everything_once(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    prefix = topic_prefix
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    start = int(time.time() * 1000) - 3 * HOUR
    calls = generate_traffic(29, 60, start, HOUR, accounts=10).calls
    publish(
        kafka_bootstrap, prefix + topics.CALLS, records_to_messages(calls, "CallEvent", PARTITIONS, "json", 1)
    )
    env = {**worker_env(tmp_path, kafka_bootstrap), "CALLPIPE_TRIP_INTERNAL_ERRORS": "5"}
    lake = tmp_path / "lake"
    broken = (
        "import sys, pipeline.stream.runner as r\n"
        "def bug(*a, **k):\n    raise KeyError('a bug')\n"
        "r.route_batch = bug\n"
        "from pipeline.cli import main\n"
        f"sys.exit(main(['worker', '--prefix', {prefix!r}]))\n"
    )
    log = tmp_path / "broken.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-c", broken],
            env={**os.environ, **env, "CALLPIPE_LAKE": str(lake)},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    text = log.read_text()
    assert done.returncode == 3, text[-2000:]
    assert "trip-wire: 5 events in a row failed with internal errors (last KeyError)" in text
    assert read_stats(lake).events_in == 0  # nothing landed
    assert consume_all(kafka_bootstrap, prefix + topics.DLQ) == []  # the stream was not shipped to the DLQ

    proc = start_worker(prefix, lake, env, tmp_path / "fixed.log")
    try:
        deadline = time.monotonic() + 120
        while read_stats(lake).events_in < len(calls):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.5)
    finally:
        stop(proc)
    ids = [r["event_id"] for r in zone(lake, "vault")]
    assert sorted(ids) == sorted(c["event_id"] for c in calls)
