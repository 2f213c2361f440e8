"""A direct erasure tells the running stream (`callpipe jobs erase --account ID` publishes its erase
request to privacy.requests before it touches the lake): on the real broker, with a worker
running, the subject's calls produced after the erasure are dropped and counted as `erased`, the
other accounts' calls land, the request is on the topic once under the ledger's id, and a later
`jobs requests` pass that reads it from the topic changes nothing."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from jobs import audit, erase_direct, ledger
from pipeline import codec
from pipeline.carrier.generate import generate_traffic
from pipeline.kafka_access import OPERATOR
from pipeline.keys import Domain, load_key
from schemas import topics
from sinks.stats import read_stats
from tests.e2e.test_requests_stream import zone_rows
from tests.support.ops_lake import callpipe_cmd
from tests.support.streamkit import (
    PARTITIONS,
    ROOT,
    access,
    consume_all,
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


def test_a_direct_erasure_stops_the_running_worker_landing_the_subject(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"ert{random.randrange(1 << 30):x}."
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    start = int(time.time() * 1000) - 26 * HOUR
    traffic = generate_traffic(31, 2_000, start, 24 * HOUR, accounts=60)
    subject = Counter(c["account_id"] for c in traffic.calls).most_common(1)[0][0]
    half = len(traffic.calls) // 2
    later = traffic.calls[half:]
    later_of_subject = sum(1 for c in later if c["account_id"] == subject)
    assert later_of_subject > 0
    env = worker_env(tmp_path, kafka_bootstrap)
    lake = tmp_path / "lake"
    job_env = {k: v for k, v in os.environ.items() if not k.startswith("CALLPIPE_")}
    job_env.update(env, CALLPIPE_LAKE=str(lake), PYTHONPATH=str(ROOT))
    operator = access(OPERATOR, kafka_bootstrap)  # the jobs connect as the operator, not the worker
    job_env.update(CALLPIPE_KAFKA_USER=OPERATOR, CALLPIPE_KAFKA_PASSWORD_FILE=str(operator.password_file))
    proc = start_worker(prefix, lake, env, tmp_path / "worker.log")
    try:
        publish(
            kafka_bootstrap,
            prefix + topics.CALLS,
            records_to_messages(traffic.calls[:half], "CallEvent", PARTITIONS),
        )
        wait_for_events(lake, half, 300, proc)
        assert zone_rows(lake, "vault", "account_id", subject)  # landed before the erasure
        erased_before = read_stats(lake).drops.get("erased", 0)
        done = subprocess.run(
            callpipe_cmd("jobs", "erase", "--account", subject, "--prefix", prefix),
            env=job_env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert b"privacy.requests: erase request published" in done.stdout
        assert subject.encode() not in done.stdout + done.stderr
        publish(kafka_bootstrap, prefix + topics.CALLS, records_to_messages(later, "CallEvent", PARTITIONS))
        wait_for_events(lake, len(traffic.calls), 300, proc)
        time.sleep(2)
    finally:
        stop(proc)
    stats = read_stats(lake)
    assert stats.drops.get("erased", 0) - erased_before == later_of_subject
    key = load_key(Path(env["CALLPIPE_KEY_FILE"]), "v1")
    assert zone_rows(lake, "vault", "account_id", subject) == []
    assert zone_rows(lake, "analytics", "account_token", key.token(Domain.ACCOUNT, subject)) == []
    # the other accounts' later calls landed, every one
    others = Counter(c["account_id"] for c in traffic.calls if c["account_id"] != subject)
    for account in list(others)[:5]:
        assert len(zone_rows(lake, "vault", "account_id", account)) == others[account]

    # on the topic once: the ledger's id, kind erase, the account id, keyed by it
    rid = erase_direct.request_id(audit.subject_ref(key, subject))
    messages = consume_all(kafka_bootstrap, prefix + topics.REQUESTS)
    assert len(messages) == 1 and messages[0].key == subject.encode()
    [record] = codec.decode_value(messages[0].value, "PrivacyRequest", headers=messages[0].headers).records
    assert (record["request_id"], record["kind"], record["account_id"]) == (rid, "erase", subject)
    folded = ledger.requests(lake)
    assert record["at"] == int(ledger.parse_time(folded[rid].requested_at).timestamp() * 1000)

    # a `jobs requests` pass reads it back and changes nothing: the ledger holds its id already
    before = (lake / "_requests").exists() and sorted(
        (str(p), p.read_bytes())
        for p in (lake / "_requests").rglob("*")
        if p.is_file() and "position" not in p.name
    )
    again = subprocess.run(
        callpipe_cmd("jobs", "requests", "--prefix", prefix, "--json"),
        env=job_env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 0, again.stderr.decode()
    result = orjson.loads(again.stdout)
    assert result["received"] == 0 and result["handled"] == {} and not result["enforced"]
    assert {r: q.status for r, q in ledger.requests(lake).items()} == {rid: "fulfilled"}
    assert before and before == sorted(
        (str(p), p.read_bytes())
        for p in (lake / "_requests").rglob("*")
        if p.is_file() and "position" not in p.name
    )
