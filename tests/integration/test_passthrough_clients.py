"""The stream benchmark's baseline consumes with either Kafka client (aiokafka, confluent-kafka)
from the real broker as the worker's principal, and each lands every event once."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.bench.passthrough import CLIENTS, run_passthrough
from pipeline.carrier.generate import HOUR_MS, generate_traffic
from pipeline.kafka_access import WORKER
from schemas import topics
from tests.support.streamkit import access, make_topics, publish, records_to_messages

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
