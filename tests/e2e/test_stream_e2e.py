"""Carrier traffic in, Parquet out, on the real broker: every event accounted for, each privacy
rule visible in the lake, no duplicates after kill -9, and the same rows as `callpipe ingest`."""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import phonenumbers
import pytest

from pipeline import codec
from pipeline.carrier.generate import generate_bad_messages, generate_traffic
from pipeline.consent import AccountState, decide, record_consent, record_request
from pipeline.policy import DEFAULT_POLICY
from schemas import topics
from tests.support.streamkit import (
    PARTITIONS,
    ROOT,
    consume_all,
    kill_trial,
    make_topics,
    publish,
    records_to_messages,
    start_worker,
    stop,
    wait_for_events,
    wait_for_group,
    worker_env,
    zone,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
HOUR = 3_600_000


def states_of(traffic: Any) -> dict[str, AccountState]:
    states: dict[str, AccountState] = {}
    for c in traffic.consents:
        states[c["account_id"]] = record_consent(states.get(c["account_id"]), c)
    for r in traffic.requests:
        states[r["account_id"]] = record_request(states.get(r["account_id"]), r)
    return states


@pytest.fixture(scope="module")
def full_run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """50,000 events (1% malformed) with consent granted and withdrawn mid-stream and erasure and
    restriction requests, through one worker; the consent stream is published AFTER the calls so
    event-time ordering (not arrival order) has to decide."""
    tmp = tmp_path_factory.mktemp("full")
    prefix = f"e2e{random.randrange(1 << 30):x}."
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    start = int(time.time() * 1000) - 26 * HOUR
    canary = canary_calls(start)
    traffic = generate_traffic(11, 49_500 - len(canary), start, 24 * HOUR, accounts=800)
    # every rule exercised whatever the hour: the generated restrictions can fall after their
    # accounts' calls (a run on 2 Dec had none in effect), so one account is restricted first
    traffic.requests.append(_restriction_before_calls(traffic.calls, traffic.requests, start))
    bad = generate_bad_messages(11, 500, start)
    calls = records_to_messages(canary, "CallEvent", PARTITIONS, "avro", 1)
    calls += records_to_messages(traffic.calls[:20_000], "CallEvent", PARTITIONS, "avro", 1)
    calls += records_to_messages(traffic.calls[20_000:], "CallEvent", PARTITIONS, "json", 500)
    rng = random.Random(5)
    from tests.support.streamkit import partition_of

    for b in bad:
        calls.insert(
            rng.randrange(len(calls)),
            (b.account_id.encode(), b.value, partition_of(b.account_id, PARTITIONS)),
        )
    lake = tmp / "lake"
    proc = start_worker(prefix, lake, worker_env(tmp, kafka_bootstrap), tmp / "worker.log")
    try:
        publish(kafka_bootstrap, prefix + topics.CALLS, calls)
        publish(
            kafka_bootstrap,
            prefix + topics.REQUESTS,
            records_to_messages(traffic.requests, "PrivacyRequest", PARTITIONS),
        )
        publish(
            kafka_bootstrap,
            prefix + topics.CONSENT,
            records_to_messages(
                [*traffic.consents, *canary_consents(canary, start)], "ConsentEvent", PARTITIONS
            ),
        )
        stats = wait_for_events(lake, 50_000, 300, proc)
        time.sleep(2)
    finally:
        stop(proc)
    return {
        "traffic": traffic,
        "bad": bad,
        "canary": canary,
        "lake": lake,
        "stats": stats,
        "log": (tmp / "worker.log").read_text(),
        "dlq": consume_all(kafka_bootstrap, prefix + topics.DLQ),
    }


CANARY = [
    json.loads(line) for line in (ROOT / "tests" / "canary" / "transcripts.jsonl").read_text().splitlines()
]


def _restriction_before_calls(
    calls: list[dict[str, Any]], requests: list[dict[str, Any]], start: int
) -> dict[str, Any]:
    """A restriction, before all its calls, of the busiest account that made no request."""
    asked = {r["account_id"] for r in requests}
    busiest = Counter(c["account_id"] for c in calls if c["account_id"] not in asked).most_common(1)
    return {
        "request_id": "e2e-restriction",
        "account_id": busiest[0][0],
        "kind": "restrict",
        "at": start - HOUR,
        "corrections": None,
    }


def canary_calls(start: int) -> list[dict[str, Any]]:
    """One answered, recorded and transcribed call per labelled canary transcript, by accounts
    that granted recording and transcription; their numbers are of the transcript's region so
    national numbers in the text resolve as they would for a real call."""
    calls = []
    for i, item in enumerate(CANARY):
        region = (item["regions"] or ["US"])[0]
        number = phonenumbers.format_number(
            phonenumbers.example_number(region), phonenumbers.PhoneNumberFormat.E164
        )
        at = start + HOUR + i * 60_000
        calls.append(
            {
                "event_id": f"canary-{item['id']}",
                "account_id": f"acct-canary-{i:03d}",
                "org_id": "org-canary",
                "carrier_id": f"canary-{region.lower()}",
                "kind": "voice",
                "direction": "inbound",
                "caller": number,
                "callee": number,
                "started_at": at,
                "answered_at": at + 2_000,
                "ended_at": at + 62_000,
                "duration_s": 60,
                "status": "answered",
                "cell_id": None,
                "caller_ip": None,
                "device": None,
                "recording_uri": f"s3://recordings/canary/{item['id']}.wav",
                "transcript": item["text"],
                "attributes": None,
            }
        )
    return calls


def canary_consents(calls: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    return [
        {
            "account_id": c["account_id"],
            "purpose": purpose,
            "granted": True,
            "at": start - HOUR,
            "source": "app",
        }
        for c in calls
        for purpose in ("recording", "transcription")
    ]


def test_every_event_is_accounted_for(full_run: dict[str, Any]) -> None:
    stats = full_run["stats"]
    lake = full_run["lake"]
    vault = zone(lake, "vault")
    dead = stats.dead
    assert stats.events_in == 50_000
    assert len(vault) + dead + stats.drops.get("erased", 0) == 50_000
    assert dead == len(full_run["bad"])
    assert len(full_run["dlq"]) == dead  # each dead letter in calls.dlq once, with its reason
    reasons = Counter(dict(m.headers)["callpipe.reason"].decode() for m in full_run["dlq"])
    assert reasons == Counter(b.reason.value for b in full_run["bad"])
    expected = Counter(b.reason.value for b in full_run["bad"])
    assert stats.dead_letters == expected
    assert len({r["event_id"] for r in vault}) == len(vault)


def test_each_rule_is_visible_in_the_lake(full_run: dict[str, Any]) -> None:
    traffic, lake = full_run["traffic"], full_run["lake"]
    states = states_of(traffic)
    vault = {r["event_id"]: r for r in zone(lake, "vault")}
    analytics = {r["event_id"]: r for r in zone(lake, "analytics")}
    seen = Counter()
    for call in traffic.calls:
        d = decide(states.get(call["account_id"]), call["started_at"], DEFAULT_POLICY.consent)
        if d.erased:
            assert call["event_id"] not in vault
            seen["erased"] += 1
            continue
        row = vault[call["event_id"]]
        if call["recording_uri"] is not None:
            assert (row["recording_uri"] is not None) == d.recording
            seen["recording_kept" if d.recording else "recording_dropped"] += 1
        if call["transcript"] is not None:
            assert (row["transcript"] is not None) == d.transcription
            seen["transcript_kept" if d.transcription else "transcript_dropped"] += 1
        in_analytics = call["event_id"] in analytics
        assert in_analytics == (d.analytics and not d.restricted)
        seen["restricted" if d.restricted else "objected" if not d.analytics else "analytics"] += 1
    for rule in (
        "erased",
        "recording_kept",
        "recording_dropped",
        "transcript_kept",
        "transcript_dropped",
        "restricted",
        "objected",
        "analytics",
    ):
        assert seen[rule] > 0, f"the traffic never exercised {rule}"


def test_analytics_holds_no_raw_identifier(full_run: dict[str, Any]) -> None:
    traffic, lake = full_run["traffic"], full_run["lake"]
    raw: set[str] = set()
    for c in traffic.calls:
        raw.update([c["account_id"], c["caller"], c["callee"]])
        raw.update(v for v in (c["caller_ip"], c["recording_uri"], c["cell_id"]) if v)
        if c["device"]:
            raw.add(c["device"]["device_id"])
    values: set[str] = set()
    words: set[str] = set()
    for row in zone(lake, "analytics"):
        for name, value in row.items():
            if isinstance(value, str):
                values.add(value)
                if name == "transcript":
                    words.update(value.replace(",", " ").split())
            elif isinstance(value, list):  # attributes map
                for _k, v in value:
                    values.add(v)
                    words.update(str(v).split())
    leaked = sorted(raw & (values | words))
    assert leaked == []


def test_analytics_transcripts_hold_no_canary_pii_but_keep_ordinary_numbers(full_run: dict[str, Any]) -> None:
    analytics = {r["event_id"]: r for r in zone(full_run["lake"], "analytics")}
    vault = {r["event_id"]: r for r in zone(full_run["lake"], "vault")}
    for item in CANARY:
        row = analytics[f"canary-{item['id']}"]
        assert vault[f"canary-{item['id']}"]["transcript"] == item["text"]  # consented: kept in the vault
        for _label, value in item["pii"]:
            assert value not in row["transcript"], item["id"]
        for value in item["keep"]:
            assert value in row["transcript"], item["id"]
        assert row["has_recording"] is True


def test_no_recording_or_transcript_without_consent_in_any_zone(full_run: dict[str, Any]) -> None:
    states = states_of(full_run["traffic"])
    calls = {c["event_id"]: c for c in full_run["traffic"].calls}
    for name in ("vault", "analytics"):
        for row in zone(full_run["lake"], name):
            call = calls.get(row["event_id"])
            if call is None:
                continue  # a canary call: consented above
            d = decide(states.get(call["account_id"]), call["started_at"], DEFAULT_POLICY.consent)
            if row.get("transcript") is not None:
                assert d.transcription
            if row.get("recording_uri") is not None or row.get("has_recording"):
                assert d.recording


def test_worker_log_holds_no_personal_data(full_run: dict[str, Any]) -> None:
    log = full_run["log"]
    for c in full_run["traffic"].calls[:5_000]:
        for value in (c["caller"], c["callee"], c["caller_ip"], c["account_id"]):
            if value:
                assert value not in log
    assert not re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", log)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_kill_minus_nine_loses_and_duplicates_nothing(
    kafka_bootstrap: str, tmp_path: Path, seed: int
) -> None:
    kill_trial(kafka_bootstrap, tmp_path, seed)


def test_a_worker_of_two_processes_killed_minus_nine_loses_and_duplicates_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """`callpipe worker --processes 2`: the SIGKILL of the command takes both members with it,
    and the restarted command (two members again) lands every event once."""
    kill_trial(kafka_bootstrap, tmp_path, 6, processes=2)


def test_ingest_gives_the_same_rows_as_the_stream(full_run: dict[str, Any], tmp_path: Path) -> None:
    from pipeline.ingest import ingest_file, load_states
    from pipeline.settings import Settings

    traffic = full_run["traffic"]
    start = min(c["started_at"] for c in traffic.calls)
    calls = tmp_path / "calls.jsonl"
    every_call = [*full_run["canary"], *traffic.calls]
    calls.write_bytes(b"".join(codec.to_json(c, "CallEvent") + b"\n" for c in every_call))
    consent = tmp_path / "consent.jsonl"
    consents = [*traffic.consents, *canary_consents(full_run["canary"], start - HOUR)]
    consent.write_bytes(b"".join(codec.to_json(c, "ConsentEvent") + b"\n" for c in consents))
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(b"".join(codec.to_json(c, "PrivacyRequest") + b"\n" for c in traffic.requests))
    key_file = full_run["lake"].parent / "key.hex"
    settings = Settings(lake=tmp_path / "lake", key_file=key_file)
    states, _ = load_states([consent], [requests])
    ingest_file(calls, settings, settings.key(), states, int(time.time() * 1000))
    lineage = {"source_partition", "source_offset", "source_index"}
    for name in ("vault", "analytics"):
        stream_rows = {
            r["event_id"]: {k: v for k, v in r.items() if k not in lineage}
            for r in zone(full_run["lake"], name)
        }
        ingest_rows = {
            r["event_id"]: {k: v for k, v in r.items() if k not in lineage}
            for r in zone(tmp_path / "lake", name)
        }
        assert stream_rows == ingest_rows


def test_two_workers_share_the_partitions_and_land_each_event_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Nothing assumes a single worker: two in one consumer group share the partitions, one leaves
    mid-stream, the other takes its partitions over (some of them back) and carries on, and the
    lake holds every event exactly once. The traffic is published in two halves so that both
    workers have work before the leave and the survivor has work after it, whatever the timing."""
    prefix = f"two{random.randrange(1 << 30):x}."
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    start = int(time.time() * 1000) - 3 * HOUR
    traffic = generate_traffic(21, 8_000, start, 2 * HOUR, accounts=400)
    messages = records_to_messages(traffic.calls, "CallEvent", PARTITIONS)
    half = len(messages) // 2
    lake = tmp_path / "lake"
    env = worker_env(tmp_path, kafka_bootstrap)
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    first = start_worker(prefix, lake, env, logs[0])
    second = start_worker(prefix, lake, env, logs[1])
    try:
        wait_for_group(kafka_bootstrap, prefix + topics.STREAM_GROUP, members=2, timeout_s=120)
        publish(kafka_bootstrap, prefix + topics.CALLS, messages[:half])
        wait_for_events(lake, half, 120, first)
        for log in logs:
            assert "landed calls.raw" in log.read_text(), f"{log.name} took no part before the leave"
        stop(second)  # a graceful leave: its partitions move to the first worker
        assert second.returncode == 0
        publish(kafka_bootstrap, prefix + topics.CALLS, messages[half:])
        wait_for_events(lake, len(messages), 120, first)
    finally:
        stop(first)
        stop(second)
    for name in ("vault", "analytics"):
        ids = Counter(r["event_id"] for r in zone(lake, name))
        assert [i for i, n in ids.items() if n > 1] == []
    assert {r["event_id"] for r in zone(lake, "vault")} == {c["event_id"] for c in traffic.calls}


@pytest.mark.parametrize("trial", [1, 2, 3])
def test_a_worker_taking_over_partitions_that_never_landed_loses_nothing(
    kafka_bootstrap: str, tmp_path: Path, trial: int
) -> None:
    """The second worker leaves while it is still reading its partitions and before it has
    committed anything of them, so they move with no committed offset. faust drops what it
    fetched while a rebalance stopped the flow and seeks back to the committed offsets, which
    aiokafka skips for such partitions: CI lost a whole partition this way (7,442 of 8,000)."""
    prefix = f"mv{trial}{random.randrange(1 << 30):x}."
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    start = int(time.time() * 1000) - 3 * HOUR
    traffic = generate_traffic(40 + trial, 8_000, start, 2 * HOUR, accounts=400)
    lake = tmp_path / "lake"
    env = worker_env(tmp_path, kafka_bootstrap)
    first = start_worker(prefix, lake, env, tmp_path / "w1.log")
    slow = {**env, "CALLPIPE_FLUSH_SECONDS": "600", "CALLPIPE_FLUSH_ROWS": "1000000"}  # lands only at exit
    second_log = tmp_path / "w2.log"
    second = start_worker(prefix, lake, slow, second_log)
    try:
        wait_for_group(kafka_bootstrap, prefix + topics.STREAM_GROUP, members=2, timeout_s=120)
        publish(
            kafka_bootstrap,
            prefix + topics.CALLS,
            records_to_messages(traffic.calls, "CallEvent", PARTITIONS),
        )
        deadline = time.monotonic() + 60
        while "resumes at offset" not in second_log.read_text():
            assert time.monotonic() < deadline, "the second worker never started on its partitions"
            time.sleep(0.1)
        stop(second)
        wait_for_events(lake, len(traffic.calls), 120, first)
    finally:
        stop(first)
        stop(second)
    ids = Counter(r["event_id"] for r in zone(lake, "vault"))
    assert [i for i, n in ids.items() if n > 1] == []
    assert set(ids) == {c["event_id"] for c in traffic.calls}


def test_bad_consent_and_request_messages_become_dead_letters(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Bad input on the control streams never crashes the worker and never disappears."""
    prefix = f"ctl{random.randrange(1 << 30):x}."
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    start = int(time.time() * 1000) - 2 * HOUR
    traffic = generate_traffic(31, 500, start, HOUR, accounts=50)
    publish(
        kafka_bootstrap,
        prefix + topics.CONSENT,
        [(b"acct-x", b'{"account_id": "acct-x", "purpose": "fly"', 0)],
    )
    publish(kafka_bootstrap, prefix + topics.REQUESTS, [(b"acct-y", b"\x00\x00\x00\x03\xe7garbage", 1)])
    micro = {
        "account_id": "acct-z",
        "purpose": "analytics",
        "granted": False,
        "at": start * 1000,
        "source": "app",
    }
    publish(
        kafka_bootstrap, prefix + topics.CONSENT, [(b"acct-z", json.dumps(micro).encode(), 1)]
    )  # microseconds
    publish(
        kafka_bootstrap,
        prefix + topics.CONSENT,
        records_to_messages(traffic.consents, "ConsentEvent", PARTITIONS),
    )
    publish(
        kafka_bootstrap, prefix + topics.CALLS, records_to_messages(traffic.calls, "CallEvent", PARTITIONS)
    )
    lake = tmp_path / "lake"
    proc = start_worker(prefix, lake, worker_env(tmp_path, kafka_bootstrap), tmp_path / "w.log")
    try:
        wait_for_events(lake, 500, 120, proc)  # the worker kept going past the bad control messages
    finally:
        stop(proc)
    dead = consume_all(kafka_bootstrap, prefix + topics.DLQ)
    sources = sorted(
        (dict(m.headers)["callpipe.source.topic"].decode(), dict(m.headers)["callpipe.reason"].decode())
        for m in dead
    )
    assert sources == [
        (prefix + topics.CONSENT, "bad_time"),
        (prefix + topics.CONSENT, "malformed"),
        (prefix + topics.REQUESTS, "unknown_schema_id"),
    ]
