"""Data-subject requests on the real broker (issue 11): erase, access, restrict, object and rectify
requests produced to privacy.requests mid-stream; after the worker and one `callpipe jobs
requests` pass (which reads privacy.requests itself, no consumer group), the lake holds no row
of the erased subject in any zone, the access export holds every vault row of its subject, the
rectified values are in place, and the ledger shows every request fulfilled."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from jobs import ledger
from pipeline.carrier.generate import generate_traffic
from pipeline.keys import Domain, load_key
from schemas import topics
from tests.support.ops_lake import callpipe_cmd, zone_source
from tests.support.streamkit import (
    PARTITIONS,
    ROOT,
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
NEW_NUMBER = "+442071838750"


def zone_rows(lake: Path, zone: str, column: str, value: str) -> list[dict[str, Any]]:
    con = duckdb.connect()
    sql = f"SELECT * FROM {zone_source(con, lake, zone)} WHERE {column} = $v"
    table = con.sql(sql, params={"v": value}).to_arrow_table()
    return sorted(table.to_pylist(), key=lambda r: r["event_id"])


def test_requests_produced_mid_stream_are_fulfilled_end_to_end(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"req{random.randrange(1 << 30):x}."
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    start = int(time.time() * 1000) - 26 * HOUR
    traffic = generate_traffic(23, 6_000, start, 24 * HOUR, accounts=150)
    busiest = [a for a, _ in Counter(c["account_id"] for c in traffic.calls).most_common(5)]
    erased, accessed, restricted, objected, rectified = busiest
    at = start + 12 * HOUR

    def request(rid: str, kind: str, account: str, corrections: Any = None) -> dict[str, Any]:
        return {"request_id": rid, "account_id": account, "kind": kind, "at": at, "corrections": corrections}

    requests = [
        request("s-erase", "erase", erased),
        request("s-access", "access", accessed),
        request("s-restrict", "restrict", restricted),
        request("s-object", "object", objected),
        request(
            "s-rectify", "rectify", rectified, [{"attribute": "own_number", "old": None, "new": NEW_NUMBER}]
        ),
    ]
    env = worker_env(tmp_path, kafka_bootstrap)
    lake = tmp_path / "lake"
    half = len(traffic.calls) // 2
    proc = start_worker(prefix, lake, env, tmp_path / "worker.log")
    try:
        publish(
            kafka_bootstrap,
            prefix + topics.CALLS,
            records_to_messages(traffic.calls[:half], "CallEvent", PARTITIONS),
        )
        publish(
            kafka_bootstrap,
            prefix + topics.REQUESTS,
            records_to_messages(requests, "PrivacyRequest", PARTITIONS),
        )
        publish(
            kafka_bootstrap,
            prefix + topics.CALLS,
            records_to_messages(traffic.calls[half:], "CallEvent", PARTITIONS),
        )
        wait_for_events(lake, len(traffic.calls), 300, proc)
        time.sleep(2)
    finally:
        stop(proc)
    key = load_key(Path(env["CALLPIPE_KEY_FILE"]), "v1")
    access_before = zone_rows(lake, "vault", "account_id", accessed)
    assert access_before and zone_rows(lake, "vault", "account_id", rectified)

    job_env = {k: v for k, v in os.environ.items() if not k.startswith("CALLPIPE_")}
    job_env.update(env, CALLPIPE_LAKE=str(lake), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        callpipe_cmd("jobs", "requests", "--prefix", prefix, "--json"),
        env=job_env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result = orjson.loads(done.stdout)
    assert result["received"] == len(requests)

    # erased: no row in any zone, nor in the dead letters
    assert zone_rows(lake, "vault", "account_id", erased) == []
    assert zone_rows(lake, "analytics", "account_token", key.token(Domain.ACCOUNT, erased)) == []
    # access: the export holds every vault row the subject had
    export = orjson.loads((lake / "_outbox" / "access-s-access.json").read_bytes())
    assert sorted(r["event_id"] for r in export["vault"]) == [r["event_id"] for r in access_before]
    # restrict, object: no analytics rows left; the vault keeps the restricted subject's rows
    for account in (restricted, objected):
        assert zone_rows(lake, "analytics", "account_token", key.token(Domain.ACCOUNT, account)) == []
    assert zone_rows(lake, "vault", "account_id", restricted)
    # rectify: the own line's number is the new one in the vault and, as a token, in analytics
    for row in zone_rows(lake, "vault", "account_id", rectified):
        assert row["caller" if row["direction"] == "outbound" else "callee"] == NEW_NUMBER
    for row in zone_rows(lake, "analytics", "account_token", key.token(Domain.ACCOUNT, rectified)):
        side = "caller" if row["direction"] == "outbound" else "callee"
        assert row[f"{side}_token"] == key.token(Domain.PHONE, NEW_NUMBER)
    # the ledger: every request fulfilled, with its timestamps
    folded = ledger.requests(lake)
    assert {rid: r.status for rid, r in folded.items()} == {r["request_id"]: "fulfilled" for r in requests}
    for r in folded.values():
        assert r.received_at and r.started_at and r.fulfilled_at and r.deadline
        assert r.source == "topic"
    # a second pass reads nothing new (the position is in the ledger's area) and changes nothing
    again = subprocess.run(
        callpipe_cmd("jobs", "requests", "--prefix", prefix, "--json"),
        env=job_env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 0, again.stderr.decode()
    assert orjson.loads(again.stdout)["received"] == 0
