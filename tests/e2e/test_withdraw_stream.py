"""Consent withdrawals on the real broker: consent produced to consent.events, calls through a
running worker, then `callpipe jobs requests` (as the operator) reads consent.events whole and
purges what each account's calls before its withdrawal held under the purpose: recordings and
transcripts nulled in the vault and in analytics, analytics rows removed; calls after a re-grant
and other accounts keep theirs. A call from before a withdrawal that lands after the purge (the
stream judges it at its own time, when consent was in force) is purged by the next pass."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from jobs import ledger
from pipeline.carrier.generate import generate_traffic
from pipeline.kafka_access import OPERATOR
from pipeline.keys import Domain, load_key
from pipeline.stream.control import snapshot_path
from schemas import topics
from tests.e2e.test_requests_stream import zone_rows
from tests.support.ops_lake import callpipe_cmd
from tests.support.streamkit import (
    PARTITIONS,
    ROOT,
    access,
    make_topics,
    publish,
    records_to_messages,
    start_worker,
    stop,
    wait_for_events,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
HOUR = 3_600_000


def consent(account: str, purpose: str, granted: bool, at: int) -> dict[str, Any]:
    return {"account_id": account, "purpose": purpose, "granted": granted, "at": at, "source": "app"}


def ms(row: dict[str, Any]) -> int:
    return int(row["started_at"].timestamp() * 1000)


def test_a_withdrawal_purges_what_the_earlier_calls_held_end_to_end(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"wd{random.randrange(1 << 30):x}."
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    start = int(time.time() * 1000) - 26 * HOUR
    traffic = generate_traffic(41, 3_000, start, 24 * HOUR, accounts=60)
    busiest = [a for a, _ in Counter(c["account_id"] for c in traffic.calls).most_common(5)]
    recorder, talker, objector, regranted, other = busiest
    calls = []
    for c in traffic.calls:  # every call of these accounts recorded and transcribed by the carrier
        if c["account_id"] in busiest:
            c = {**c, "recording_uri": f"s3://rec/{c['event_id']}.opus", "transcript": "thanks, talk soon"}
        calls.append(c)
    mine = {a: sorted(c["started_at"] for c in calls if c["account_id"] == a) for a in busiest}
    cut = {a: times[len(times) // 2] for a, times in mine.items()}  # calls on both sides
    first = start - HOUR
    regrant_at = cut[regranted] + 2 * HOUR
    events = [
        *(
            consent(a, p, True, first)
            for a in (recorder, other, regranted)
            for p in ("recording", "transcription")
        ),
        consent(talker, "transcription", True, first),
        consent(recorder, "recording", False, cut[recorder]),
        consent(talker, "transcription", False, cut[talker]),
        consent(objector, "analytics", False, cut[objector]),  # on by default: switched off
        consent(regranted, "recording", False, cut[regranted]),
        consent(regranted, "recording", True, regrant_at),
    ]
    assert any(t >= regrant_at for t in mine[regranted])

    env = worker_env(tmp_path, kafka_bootstrap)
    lake = tmp_path / "lake"
    job_env = {k: v for k, v in os.environ.items() if not k.startswith("CALLPIPE_")}
    job_env.update(env, CALLPIPE_LAKE=str(lake), PYTHONPATH=str(ROOT))
    job_env.update(access(OPERATOR, kafka_bootstrap).env())  # the pass runs as the operator

    def requests_pass() -> dict[str, Any]:
        done = subprocess.run(
            callpipe_cmd("jobs", "requests", "--prefix", prefix, "--json"),
            env=job_env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        result: dict[str, Any] = orjson.loads(done.stdout)
        return result

    proc = start_worker(prefix, lake, env, tmp_path / "worker.log")
    late = {
        **next(c for c in calls if c["account_id"] == recorder and c["started_at"] < cut[recorder]),
        "event_id": "late-call-of-before-the-withdrawal",
    }
    try:
        publish(
            kafka_bootstrap, prefix + topics.CONSENT, records_to_messages(events, "ConsentEvent", PARTITIONS)
        )
        publish(kafka_bootstrap, prefix + topics.CALLS, records_to_messages(calls, "CallEvent", PARTITIONS))
        wait_for_events(lake, len(calls), 300, proc)
        key = load_key(Path(env["CALLPIPE_KEY_FILE"]), "v1")

        def vault(account: str) -> list[dict[str, Any]]:
            return zone_rows(lake, "vault", "account_id", account)

        def analytics(account: str) -> dict[str, dict[str, Any]]:
            rows = zone_rows(lake, "analytics", "account_token", key.token(Domain.ACCOUNT, account))
            return {r["event_id"]: r for r in rows}

        # what the stream landed: the calls before each withdrawal hold what the purpose covered
        assert any(r["recording_uri"] for r in vault(recorder) if ms(r) < cut[recorder])
        assert any(r["transcript"] for r in vault(talker) if ms(r) < cut[talker])
        assert any(ms(r) < cut[objector] for r in analytics(objector).values())

        first_pass = requests_pass()
        assert first_pass["withdrawals_received"] == 4
        assert first_pass["handled"] == {"withdraw fulfilled": 4}

        # recording withdrawn: no recording of the calls before it, in either zone
        for account in (recorder, regranted):
            rows, flags = vault(account), analytics(account)
            before = [r for r in rows if ms(r) < cut[account]]
            assert before and all(r["recording_uri"] is None for r in before)
            assert all(flags[r["event_id"]]["has_recording"] is False for r in before)
        assert all(r["transcript"] for r in vault(recorder))  # transcription was not withdrawn
        # calls at or after the re-grant keep their recordings
        after_regrant = [r for r in vault(regranted) if ms(r) >= regrant_at]
        assert after_regrant and all(r["recording_uri"] for r in after_regrant)
        assert all(analytics(regranted)[r["event_id"]]["has_recording"] for r in after_regrant)
        # transcription withdrawn: transcripts gone from the vault and, redacted, from analytics
        talked = analytics(talker)
        for r in vault(talker):
            assert r["transcript"] is None if ms(r) < cut[talker] else True
            if ms(r) < cut[talker]:
                assert talked[r["event_id"]]["transcript"] is None
        assert all(r["recording_uri"] is None for r in vault(talker))  # never granted: the stream kept none
        # analytics switched off: no analytics row of the objector's calls before it; the vault keeps them
        assert all(ms(r) >= cut[objector] for r in analytics(objector).values())
        assert len(vault(objector)) == len(mine[objector])
        # another account keeps everything
        assert all(r["recording_uri"] and r["transcript"] for r in vault(other))
        assert all(r["has_recording"] for r in analytics(other).values())

        folded = ledger.requests(lake)
        assert sorted((r.kind, r.purpose, r.status) for r in folded.values()) == [
            ("withdraw", "analytics", "fulfilled"),
            ("withdraw", "recording", "fulfilled"),
            ("withdraw", "recording", "fulfilled"),
            ("withdraw", "transcription", "fulfilled"),
        ]

        # a call of before the withdrawal arrives late: judged at its time, it lands with its
        # recording, and the next pass purges it
        publish(kafka_bootstrap, prefix + topics.CALLS, records_to_messages([late], "CallEvent", PARTITIONS))
        wait_for_events(lake, len(calls) + 1, 300, proc)
        [landed] = [r for r in vault(recorder) if r["event_id"] == late["event_id"]]
        assert landed["recording_uri"] == late["recording_uri"]
        second_pass = requests_pass()
        assert second_pass["withdrawals_received"] == 0 and second_pass["withdrawals_enforced"] == 1
        [purged] = [r for r in vault(recorder) if r["event_id"] == late["event_id"]]
        assert purged["recording_uri"] is None
        assert analytics(recorder)[late["event_id"]]["has_recording"] is False
    finally:
        stop(proc)
    # the pass keeps its own snapshot of consent.events beside the worker's, and a pass from it
    # finds nothing new to record or purge
    home = Path(env["CALLPIPE_HOME"])
    assert snapshot_path(home, prefix, "consent").exists() and snapshot_path(home, prefix).exists()
    last = requests_pass()
    assert (last["withdrawals_received"], last["withdrawals_enforced"], last["handled"]) == (0, 0, {})
