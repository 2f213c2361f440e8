"""The local broker and the topic declarations, against the real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from infra import topics
from pipeline.kafka_access import OPERATOR
from tests.streamkit import access

pytestmark = pytest.mark.integration


def callpipe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_kafka_up_is_idempotent_and_status_reports_it(kafka_bootstrap: str) -> None:
    if not os.environ.get("CALLPIPE_HOME"):
        pytest.fail("run through `bash infra/dev.sh test`, which starts the broker from infra/")
    again = callpipe("kafka", "up")
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    status = callpipe("kafka", "status")
    assert status.returncode == 0
    assert status.stdout.startswith("kafka up: " + kafka_bootstrap)


def test_topics_create_is_idempotent_and_co_partitioned(kafka_bootstrap: str, topic_prefix: str) -> None:
    first = asyncio.run(topics.create_topics(access(OPERATOR, kafka_bootstrap), 3, topic_prefix))
    assert [o.name for o in first] == [topic_prefix + t.name for t in topics.TOPICS]
    assert all(o.created and o.partitions == 3 for o in first)
    second = asyncio.run(topics.create_topics(access(OPERATOR, kafka_bootstrap), 3, topic_prefix))
    assert not any(o.created for o in second)
    with pytest.raises(topics.TopicError, match="co-partitioned"):
        asyncio.run(topics.create_topics(access(OPERATOR, kafka_bootstrap), 5, topic_prefix))


def test_topic_configs_keep_consent_history(kafka_bootstrap: str, topic_prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    asyncio.run(topics.create_topics(access(OPERATOR, kafka_bootstrap), 2, topic_prefix))

    async def configs() -> dict[str, dict[str, str]]:
        admin = AIOKafkaAdminClient(**access(OPERATOR, kafka_bootstrap).aiokafka())
        await admin.start()
        try:
            names = [topic_prefix + t.name for t in topics.TOPICS]
            res = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
            out: dict[str, dict[str, str]] = {}
            for response in res:
                for _code, _msg, _type, name, entries in response.resources:
                    out[name.removeprefix(topic_prefix)] = {e[0]: e[1] for e in entries}
            return out
        finally:
            await admin.close()

    got = asyncio.run(configs())
    assert got["consent.events"]["cleanup.policy"] == "delete"
    assert got["consent.events"]["retention.ms"] == "-1"
    assert got["privacy.requests"]["retention.ms"] == "-1"
    assert int(got["calls.dlq"]["retention.ms"]) < int(got["calls.raw"]["retention.ms"])


def test_unreachable_broker_is_one_clear_line() -> None:
    out = callpipe("topics", "create", env={"CALLPIPE_BOOTSTRAP": "127.0.0.1:1"})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "callpipe: error: no Kafka broker answers at 127.0.0.1:1 to operator over sasl_ssl"
    ]
