"""`callpipe demo`: the whole story on a fresh machine.

Broker up, a fresh set of topics, a pseudonymization key (mode 0600), a realistic day of
carrier traffic with consent, privacy requests and 1% malformed messages, one worker until the
lake holds every event, then what happened to each event and a few analyst queries on the
pseudonymized zone. The worker and (if the demo started it) the broker are stopped at the end.
The demo lives beside the broker provisioning because it drives it; the pipeline never imports it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from infra import kafka, security, topics
from pipeline.carrier.generate import generate_bad_messages, generate_traffic
from pipeline.carrier.produce import Shipment, publish
from pipeline.kafka_access import CARRIER, OPERATOR, WORKER
from pipeline.keys import create_key_file
from pipeline.sealed import ensure_keys
from pipeline.settings import Settings
from schemas.clock import DAY_MS
from schemas.topics import CALLS, CONSENT, REQUESTS
from sinks import crypt
from sinks.layout import glob
from sinks.read import duckdb_view, zone_files
from sinks.stats import StreamStats, read_stats

# Marks a lake the demo made: a rerun empties only such a folder (or an empty one), never a
# real lake, its audit trail or a checkout named by mistake.
DEMO_MARK = ".callpipe-demo"


class DemoRefused(Exception):
    """The demo's --lake names a folder it did not make."""


def _say(text: str) -> None:
    print(text, flush=True)


def check_lake(lake: Path) -> None:
    """Raise DemoRefused unless `lake` is absent, an empty folder, or a lake the demo made."""
    if not lake.exists() and not lake.is_symlink():
        return
    if lake.is_symlink() or not lake.is_dir():
        raise DemoRefused(
            f"--lake {lake} is a symbolic link or not a folder;"
            " name a new folder (the demo empties its lake first)"
        )
    if (lake / DEMO_MARK).is_file() or not any(lake.iterdir()):
        return
    raise DemoRefused(
        f"--lake {lake} holds files the demo did not write, and the demo empties its lake first;"
        " name a new folder (or remove this one yourself)"
    )


def run_demo(settings: Settings, *, events: int, seed: int, lake: Path, keep_broker: bool) -> int:
    check_lake(lake)
    home = settings.home / "demo"
    home.mkdir(parents=True, exist_ok=True)
    broker = kafka.broker_for(settings.home, settings.kafka_data_dir, settings.kafka_port)
    started_broker = kafka.running_pid(broker) is None
    t0 = time.monotonic()
    _say("1. broker")
    pid, _ = kafka.up(broker)
    _say(
        f"   Apache Kafka {kafka.KAFKA_VERSION} (KRaft) at {broker.bootstrap}, pid {pid} "
        f"({time.monotonic() - t0:.1f}s)"
    )
    # The demo's own secure broker: each step connects as its role (docs/ARCHITECTURE.md, Security).
    settings = replace(
        settings,
        bootstrap=broker.bootstrap,
        lake=lake,
        kafka_security="sasl_ssl",
        kafka_user=None,
        kafka_password_file=None,
        kafka_ca=None,
    )

    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    prefix = f"demo{stamp}."
    _say(f"2. topics ({settings.partitions} partitions, co-partitioned by account)")
    for o in asyncio.run(topics.create_topics(settings.kafka(OPERATOR), settings.partitions, prefix)):
        _say(f"   {o.name}")
    security.grant(broker.admin(), prefix)
    _say("   ACLs: carrier writes, worker reads and writes calls.dlq, operator reads calls.dlq")

    key_file = home / "key.hex"
    if not key_file.exists():
        create_key_file(key_file)
    _say(f"3. pseudonymization key {key_file} (mode {oct(key_file.stat().st_mode & 0o777)}; never printed)")
    vault_keys = settings.vault_key_file or home / "vault.keys"
    if not vault_keys.exists():
        crypt.create_key_file(vault_keys)
    crypt.configure(crypt.from_key_file(vault_keys))  # this process reads the vault back below
    _say(f"   vault master keys {vault_keys} (mode {oct(vault_keys.stat().st_mode & 0o777)}; never printed)")
    dlq_key, dlq_public = home / "dlq-operator.key", home / "dlq-operator.pub"
    ensure_keys(dlq_key, dlq_public)
    _say(f"   dead letters sealed to the operator key {dlq_key} (held apart; the worker has its public half)")

    check_lake(lake)  # again, now that it is about to go: nothing may have written it meanwhile
    if lake.exists():
        shutil.rmtree(lake)
    lake.mkdir(parents=True)
    (lake / DEMO_MARK).write_text("a lake `callpipe demo` made; a rerun of the demo empties it\n")
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    start_ms = int(day.timestamp() * 1000)
    bad_count = max(1, events // 100)
    traffic = generate_traffic(seed, events - bad_count, start_ms, DAY_MS, accounts=max(50, events // 20))
    bad = generate_bad_messages(seed, bad_count, start_ms)

    log_path = home / "worker.log"
    env = {
        **os.environ,
        "CALLPIPE_LAKE": str(lake),
        "CALLPIPE_KEY_FILE": str(key_file),
        **settings.kafka(WORKER).env(),
        "CALLPIPE_VAULT_KEY_FILE": str(vault_keys),
        "CALLPIPE_PARTITIONS": str(settings.partitions),
        "CALLPIPE_FLUSH_SECONDS": "2",
        "CALLPIPE_DLQ_PUBLIC_KEY": str(dlq_public),
    }
    _say(f"4. worker (log: {log_path})")
    # the log holds no message contents (pipeline/lograte.py), and still is the operator's only
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(log_fd, 0o600)  # an older demo's log may have been created 0644
    with os.fdopen(log_fd, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker", "--prefix", prefix],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        half = len(traffic.calls) // 2
        jobs = [
            Shipment(prefix + CONSENT, "ConsentEvent", traffic.consents),
            Shipment(prefix + REQUESTS, "PrivacyRequest", traffic.requests),
            Shipment(prefix + CALLS, "CallEvent", traffic.calls[:half], "avro", 1, bad=bad),
            Shipment(prefix + CALLS, "CallEvent", traffic.calls[half:], "json", 500),
        ]
        _say(f"5. carriers produce a day ({day:%Y-%m-%d}) of traffic")
        summary = asyncio.run(publish(settings.kafka(CARRIER), jobs))
        _say("   " + summary.line())
        total = events
        deadline = time.monotonic() + max(120.0, events / 200)
        stats = StreamStats()
        while time.monotonic() < deadline:
            stats = read_stats(lake)
            if stats.events_in >= total:
                break
            if worker.poll() is not None:
                _say(f"   the worker exited with status {worker.returncode}; see {log_path}")
                return 1
            time.sleep(1.0)
        took = time.monotonic() - t0
        _say(f"   the lake holds {stats.events_in} of {total} events ({took:.0f}s since start)")
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        if started_broker and not keep_broker:
            kafka.down(broker)
    _summary(lake, stats, total)
    _next_steps(
        lake, prefix, key_file, vault_keys, dlq_key, dlq_public, broker_left=not started_broker or keep_broker
    )
    return 0 if stats.events_in == total else 1


def _next_steps(
    lake: Path,
    prefix: str,
    key_file: Path,
    vault_keys: Path,
    dlq_key: Path,
    dlq_public: Path,
    *,
    broker_left: bool,
) -> None:
    """How to go on with the demo's lake: its keys and topics are its own, not the defaults the
    other commands read (README "After the demo")."""
    _say("8. to go on with this lake (its keys and topics are the demo's own), in this shell:")
    _say(
        f"   export CALLPIPE_LAKE={shlex.quote(str(lake))} CALLPIPE_KEY_FILE={shlex.quote(str(key_file))} \\"
    )
    _say(
        f"          CALLPIPE_VAULT_KEY_FILE={shlex.quote(str(vault_keys))}"
        f" CALLPIPE_DLQ_KEY_FILE={shlex.quote(str(dlq_key))}"
        f" CALLPIPE_DLQ_PUBLIC_KEY={shlex.quote(str(dlq_public))}"
    )
    _say(
        "   .venv/bin/callpipe jobs anonymize && .venv/bin/callpipe query 'SELECT * FROM calls_daily LIMIT 5'"
    )
    _say("   .venv/bin/callpipe jobs report --html report.html")
    if broker_left:
        _say(
            f"   .venv/bin/callpipe jobs requests --prefix {prefix}"
            "   # answer the subject requests waiting in the demo's topic (their deadlines run)"
        )
        _say(f"   .venv/bin/callpipe dlq inspect --prefix {prefix}   # the demo's dead letters, opened")
        _say(f"   .venv/bin/callpipe worker --prefix {prefix}   # go on streaming into this lake")
    else:
        _say(
            "   (the broker is stopped: run the demo with --keep-broker to answer its subject requests"
            " (`jobs requests --prefix`), open its dead letters and go on streaming)"
        )


def _summary(lake: Path, stats: StreamStats, total: int) -> None:
    con = duckdb.connect()
    vault = con.execute(f"SELECT count(*) FROM {duckdb_view(con, lake, 'vault')}").fetchall()[0]
    analytics = con.execute(f"SELECT count(*) FROM read_parquet('{glob(lake, 'analytics')}')").fetchall()[0]
    dead, drops = stats.dead_letters, stats.drops
    _say("6. what happened to every event")
    _say(f"   events in: {stats.events_in} (produced {total})")
    _say(f"   vault rows: {vault[0] if vault else 0}    analytics rows: {analytics[0] if analytics else 0}")
    encrypted = sum(crypt.is_encrypted(p) for p in zone_files(lake, "vault"))
    _say(f"   vault files encrypted at rest (Parquet modular encryption): {encrypted}")
    _say(f"   dead letters (calls.dlq) by reason: {dict(sorted(dead.items()))}")
    _say(f"   consent and subject outcomes: {dict(sorted(drops.items()))}")
    vault_rows = vault[0] if vault else 0
    # events past retention when they landed: nowhere (expired) or in analytics only
    past = drops.get("expired", 0) + drops.get("vault_expired", 0)
    accounted = vault_rows + sum(dead.values()) + drops.get("erased", 0) + past
    _say(
        f"   accounted: vault {vault_rows} + dead letters {sum(dead.values())} + erased"
        f" {drops.get('erased', 0)}" + (f" + past retention {past}" if past else "") + f" = {accounted}"
    )
    _say("7. an analyst's view (the pseudonymized zone: identifiers there are keyed tokens)")
    view = f"read_parquet('{glob(lake, 'analytics')}')"
    queries = {
        "calls per caller country calling code (top 5)": f"""
            SELECT '+' || caller_country AS calling_code, count(*) AS calls,
                   round(avg(duration_s), 1) AS avg_s
            FROM {view} GROUP BY 1 ORDER BY 2 DESC LIMIT 5""",
        "answer rate per carrier": f"""
            SELECT carrier_id, count(*) AS calls,
                   round(100.0 * avg(CASE WHEN status = 'answered' THEN 1 ELSE 0 END), 1) AS answered_pct
            FROM {view} GROUP BY 1 ORDER BY 1""",
        "busiest hours (UTC)": f"""
            SELECT hour(started_at) AS hour, count(*) AS calls FROM {view}
            GROUP BY 1 ORDER BY 2 DESC LIMIT 3""",
        "a redacted transcript": f"""
            SELECT left(transcript, 160) AS transcript FROM {view}
            WHERE transcript LIKE '%[PHONE]%' OR transcript LIKE '%[EMAIL]%' LIMIT 1""",
    }
    for title, sql in queries.items():
        _say(f"   -- {title}")
        result = con.sql(sql)
        _say("   " + " | ".join(result.columns))
        for row in result.fetchall():
            _say("   " + " | ".join(str(v) for v in row))
