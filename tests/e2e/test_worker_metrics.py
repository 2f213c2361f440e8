"""What an operator sees of a running worker (`CALLPIPE_METRICS_PORT`), on the real broker:
`/readyz` once the control state is loaded and the group joined, `/metrics` counts equal to what
the lake's `_stats/`, its zones and calls.dlq hold, no lag once everything landed, and no
account id or phone number anywhere in what the endpoint answers. With `--processes 2`, each
member on its own port, the two together accounting for every event once."""

from __future__ import annotations

import random
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.carrier.generate import generate_bad_messages, generate_traffic
from schemas import topics
from schemas.clock import HOUR_MS
from sinks.stats import read_stats
from tests.support.streamkit import (
    PARTITIONS,
    consume_all,
    make_topics,
    partition_of,
    publish,
    records_to_messages,
    start_worker,
    stop,
    wait_for_events,
    worker_env,
    zone,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def free_ports(count: int) -> int:
    """A port such that it and the `count` - 1 after it are free now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + count > 65535:
            continue
        try:
            held = [socket.create_server(("127.0.0.1", port + i)) for i in range(count)]
        except OSError:
            continue
        for h in held:
            h.close()
        return port
    raise AssertionError("no free ports")


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port: int) -> dict[str, float]:
    status, text = get(port, "/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def by_label(samples: dict[str, float], name: str, label: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for key, value in samples.items():
        if key.startswith(name + "{") and f'{label}="' in key:
            out[key.split(f'{label}="', 1)[1].split('"', 1)[0]] += int(value)
    return out


def until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except (OSError, AssertionError):
            pass
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def traffic_set(seed: int) -> dict[str, Any]:
    start = int(time.time() * 1000) - 3 * HOUR_MS
    traffic = generate_traffic(seed, 800, start, 2 * HOUR_MS, accounts=80)
    bad = generate_bad_messages(seed, 7, start)  # one of each kind of undecodable call
    calls = records_to_messages(traffic.calls, "CallEvent", PARTITIONS)
    calls += [(b.account_id.encode(), b.value, partition_of(b.account_id, PARTITIONS)) for b in bad]
    random.Random(seed).shuffle(calls)
    return {"traffic": traffic, "bad": bad, "calls": calls, "events": len(traffic.calls) + len(bad)}


def test_metrics_and_readiness_of_a_worker(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"met{random.randrange(1 << 30):x}."
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    run = traffic_set(21)
    traffic, bad = run["traffic"], run["bad"]
    leak = "acct-metrics-canary-4711"  # the key of a control record that does not decode
    port = free_ports(1)
    lake = tmp_path / "lake"
    env = {**worker_env(tmp_path, kafka_bootstrap), "CALLPIPE_METRICS_PORT": str(port)}
    proc = start_worker(prefix, lake, env, tmp_path / "worker.log")
    try:
        until(lambda: get(port, "/readyz")[0] == 200, 90, "the worker never became ready")
        publish(
            kafka_bootstrap,
            prefix + topics.REQUESTS,
            records_to_messages(traffic.requests, "PrivacyRequest", PARTITIONS),
        )
        consents = records_to_messages(traffic.consents, "ConsentEvent", PARTITIONS)
        publish(
            kafka_bootstrap,
            prefix + topics.CONSENT,
            [*consents, (leak.encode(), b'{"account_id": "' + leak.encode(), 1)],
        )
        publish(kafka_bootstrap, prefix + topics.CALLS, run["calls"])
        wait_for_events(lake, run["events"], 180, proc)
        t = f'topic="{prefix}calls.raw"'
        until(
            lambda: scrape(port).get(f"callpipe_events_consumed_total{{{t}}}") == run["events"],
            30,
            "the metrics never counted every event the lake holds",
        )

        def caught_up() -> bool:
            got = scrape(port)
            lags = [
                v
                for k, v in got.items()
                if k.startswith(("callpipe_consumer_lag_messages{", "callpipe_unlanded_messages{"))
            ]
            return len(lags) == 2 * PARTITIONS and not any(lags)

        until(caught_up, 30, "lag did not come to 0 once everything landed")
        got = scrape(port)
        texts = [get(port, p)[1] for p in ("/metrics", "/healthz", "/readyz")]
        assert get(port, "/healthz")[0] == 200
    finally:
        stop(proc)
    stats = read_stats(lake)
    assert got[f"callpipe_events_consumed_total{{{t}}}"] == stats.events_in == run["events"]
    assert (
        got[f'callpipe_rows_landed_total{{{t},zone="vault"}}']
        == stats.written["vault"]
        == len(zone(lake, "vault"))
    )
    assert got[f'callpipe_rows_landed_total{{{t},zone="analytics"}}'] == len(zone(lake, "analytics"))
    dead = Counter(b.reason.value for b in bad)
    assert (
        by_label(got, "callpipe_events_dead_lettered_total", "reason") == dead == Counter(stats.dead_letters)
    )
    assert by_label(got, "callpipe_events_dropped_total", "reason") == Counter(stats.drops)
    assert stats.drops  # consent decisions took parts of calls away: counted the same in both
    assert got[f"callpipe_ranges_landed_total{{{t}}}"] == len(list((lake / "_stats").glob("*/*.json")))
    # sent: the calls' dead letters and the control record's, each in calls.dlq once
    dlq = Counter(
        dict(m.headers)["callpipe.reason"].decode() for m in consume_all(kafka_bootstrap, prefix + topics.DLQ)
    )
    assert by_label(got, "callpipe_dead_letters_sent_total", "reason") == dlq == dead + Counter(malformed=1)
    assert got["callpipe_dead_letters_pending"] == 0
    assert got['callpipe_control_records_total{outcome="applied",stream="consent"}'] == len(traffic.consents)
    assert got['callpipe_control_records_total{outcome="rejected",reason="malformed",stream="consent"}'] == 1
    assert got["callpipe_control_accounts"] > 0
    assert got["callpipe_worker_ready"] == 1 and got["callpipe_process_resident_memory_bytes"] > 0
    assert "ready" in texts[2] and '"partitions":[0,1,2,3]' in texts[2]
    # what the endpoint says holds no account id and no phone number
    secrets = {leak, *(b.account_id for b in bad)}
    for call in traffic.calls:
        secrets |= {call["account_id"], call["caller"], call["callee"]}
    secrets |= {s.lstrip("+") for s in secrets if s and s.startswith("+") and len(s) > 11}
    for text in texts:
        assert [s for s in secrets if s and s in text] == []


def test_each_member_of_a_two_process_worker_serves_on_its_own_port(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"mep{random.randrange(1 << 30):x}."
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    run = traffic_set(22)
    port = free_ports(2)
    lake = tmp_path / "lake"
    env = {
        **worker_env(tmp_path, kafka_bootstrap),
        "CALLPIPE_METRICS_PORT": str(port),
        "CALLPIPE_WORKER_PROCESSES": "2",
    }
    proc = start_worker(prefix, lake, env, tmp_path / "worker.log")
    try:
        until(lambda: all(get(port + i, "/readyz")[0] == 200 for i in range(2)), 90, "members never ready")
        publish(kafka_bootstrap, prefix + topics.CALLS, run["calls"])
        wait_for_events(lake, run["events"], 180, proc)
        name = f'callpipe_events_consumed_total{{topic="{prefix}calls.raw"}}'
        until(
            lambda: sum(scrape(port + i).get(name, 0) for i in range(2)) == run["events"],
            30,
            "events not counted once",
        )
        ready = [get(port + i, "/readyz")[1] for i in range(2)]
    finally:
        stop(proc)
    owned = [orjson.loads(r)["partitions"] for r in ready]
    assert sorted(owned[0] + owned[1]) == list(range(PARTITIONS))  # the group split them between the two
