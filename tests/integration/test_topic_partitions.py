"""Partition lookups on the real broker (pipeline.kafka_metadata): a `callpipe jobs requests` pass
reads every partition privacy.requests has when it starts, partitions added since the last pass
included, and looking up a missing topic never creates it (the test broker auto-creates topics)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from jobs import requests_topic
from pipeline import codec
from pipeline.kafka_access import ADMIN, OPERATOR
from pipeline.kafka_metadata import topic_partitions
from schemas import topics
from tests.support.streamkit import access, grow, make_topics, publish

pytestmark = pytest.mark.integration

T0 = 1_780_000_000_000


def requests_to(partitions: list[int], first: int) -> list[tuple[bytes | None, bytes, int]]:
    """One erase request per entry, produced to that partition explicitly."""
    out = []
    for n, partition in enumerate(partitions, start=first):
        rec: dict[str, Any] = {
            "request_id": f"r-{n}",
            "account_id": f"acct-{n:05d}",
            "kind": "erase",
            "at": T0 + n,
            "corrections": None,
        }
        out.append((None, codec.encode([rec], "PrivacyRequest", "avro", 1)[0], partition))
    return out


def test_a_requests_pass_reads_the_partitions_added_since_the_last_pass(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    make_topics(kafka_bootstrap, topic_prefix, 2)
    topic = topic_prefix + topics.REQUESTS
    read = requests_topic.reader(access(OPERATOR, kafka_bootstrap), topic, timeout_s=60)
    publish(kafka_bootstrap, topic, requests_to([0, 1], 0))

    first = read({})
    assert sorted(r["request_id"] for r in first.records) == ["r-0", "r-1"]
    assert first.position == {0: 1, 1: 1}

    grow(kafka_bootstrap, topic, 4)
    publish(kafka_bootstrap, topic, requests_to([0, 2, 3, 3], 2))

    assert first.position is not None
    second = read(first.position)
    assert sorted(r["request_id"] for r in second.records) == ["r-2", "r-3", "r-4", "r-5"]
    assert second.position == {0: 2, 1: 1, 2: 1, 3: 2}


def test_a_missing_topic_is_reported_and_not_created(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = topic_prefix + topics.REQUESTS  # no make_topics: it does not exist
    read = requests_topic.reader(access(OPERATOR, kafka_bootstrap), topic, timeout_s=10)
    with pytest.raises(requests_topic.TopicUnavailable, match="does not exist"):
        read({})
    time.sleep(1)  # an auto-created topic would show by now
    assert asyncio.run(topic_partitions(access(ADMIN, kafka_bootstrap), [topic])) == {}
