"""The stream benchmark's baseline consumes with either Kafka client (aiokafka, confluent-kafka)
from the real broker as the worker's principal, and each lands every event once; so does the
baseline in several processes (the one a worker of several processes is compared with)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.bench.passthrough import CLIENTS, run_passthrough, run_passthrough_processes
from pipeline.carrier.generate import HOUR_MS, generate_traffic
from pipeline.kafka_access import WORKER
from schemas import topics
from tests.support.streamkit import access, make_topics, partition_of, publish, records_to_messages

PARTITIONS = 3


def test_each_client_lands_every_event_once(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    make_topics(kafka_bootstrap, topic_prefix, PARTITIONS)
    calls = generate_traffic(11, 600, int(time.time() * 1000) - 26 * HOUR_MS, HOUR_MS, accounts=50).calls
    topic = topic_prefix + topics.CALLS
    publish(kafka_bootstrap, topic, records_to_messages(calls, "CallEvent", PARTITIONS))
    for client in CLIENTS:
        out = tmp_path / client
        result = run_passthrough(
            access(WORKER, kafka_bootstrap),
            topic,
            PARTITIONS,
            len(calls),
            out,
            flush_rows=250,
            flush_seconds=10,
            timeout_s=60,
            client=client,
        )
        ids = [
            i for f in sorted(out.glob("*.parquet")) for i in pq.read_table(f).column("event_id").to_pylist()
        ]
        assert sorted(ids) == sorted(c["event_id"] for c in calls), client
        assert result.events == len(calls) and sum(c.events for c in result.commits) == len(calls)


def test_the_baseline_in_two_processes_lands_every_event_once(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    make_topics(kafka_bootstrap, topic_prefix, PARTITIONS)
    calls = generate_traffic(12, 600, int(time.time() * 1000) - 26 * HOUR_MS, HOUR_MS, accounts=50).calls
    topic = topic_prefix + topics.CALLS
    messages = records_to_messages(calls, "CallEvent", PARTITIONS, batch=40)
    publish(kafka_bootstrap, topic, messages)
    per_partition = Counter(partition_of(rec["account_id"], PARTITIONS) for rec in calls)
    result = run_passthrough_processes(
        access(WORKER, kafka_bootstrap),
        topic,
        per_partition,
        tmp_path,
        2,
        flush_rows=250,
        flush_seconds=10,
        timeout_s=60,
    )
    files = sorted(tmp_path.glob("process-*/*.parquet"))
    assert {f.parent.name for f in files} == {"process-0", "process-1"}  # both processes landed
    ids = [i for f in files for i in pq.read_table(f).column("event_id").to_pylist()]
    assert sorted(ids) == sorted(c["event_id"] for c in calls)
    assert result.events == len(calls) and {c.source for c in result.commits} == {"p000", "p001", "p002"}


def test_the_baseline_into_columns_lands_every_event_once(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Decoding into columns (single and batch Avro messages), and JSON messages it does not
    take into columns decoded to dicts beside them: every event once, in the columns' schema."""
    make_topics(kafka_bootstrap, topic_prefix, PARTITIONS)
    calls = generate_traffic(13, 900, int(time.time() * 1000) - 26 * HOUR_MS, HOUR_MS, accounts=50).calls
    topic = topic_prefix + topics.CALLS
    messages = [
        *records_to_messages(calls[:400], "CallEvent", PARTITIONS),
        *records_to_messages(calls[400:800], "CallEvent", PARTITIONS, batch=40),
        *records_to_messages(calls[800:], "CallEvent", PARTITIONS, fmt="json"),
    ]
    publish(kafka_bootstrap, topic, messages)
    result = run_passthrough(
        access(WORKER, kafka_bootstrap),
        topic,
        PARTITIONS,
        len(calls),
        tmp_path,
        flush_rows=250,
        flush_seconds=10,
        timeout_s=60,
        columns=True,
    )
    tables = [pq.read_table(f) for f in sorted(tmp_path.glob("*.parquet"))]
    ids = [i for t in tables for i in t.column("event_id").to_pylist()]
    assert sorted(ids) == sorted(c["event_id"] for c in calls)
    assert result.events == len(calls) and sum(c.events for c in result.commits) == len(calls)
    assert all(t.schema.field("started_at").type == pa.timestamp("ms", tz="UTC") for t in tables)
