"""callpipe's topics, declared idempotently.

They are created with one partition count, but nothing depends on co-partitioning: every worker
reads consent.events and privacy.requests whole (docs/ARCHITECTURE.md), so carriers may use any
partitioner and another partition count. Both keep their whole history (no compaction:
event-time consent decisions need every change). calls.raw and calls.dlq have bounded
retention; the dead letters hold raw personal data, so theirs is short.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.kafka_access import KafkaAccess

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    config: dict[str, str] = field(default_factory=dict)
    co_partitioned: bool = True


TOPICS = (
    TopicSpec("calls.raw", {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}),
    TopicSpec("consent.events", {"cleanup.policy": "delete", "retention.ms": "-1"}),
    TopicSpec("privacy.requests", {"cleanup.policy": "delete", "retention.ms": "-1"}),
    TopicSpec("calls.dlq", {"cleanup.policy": "delete", "retention.ms": str(3 * DAY_MS)}),
)


class TopicError(RuntimeError):
    pass


@dataclass(frozen=True)
class TopicOutcome:
    name: str
    partitions: int
    created: bool


async def _partition_counts(admin: Any, names: list[str], timeout_s: float) -> dict[str, int]:
    """Partition counts of the topics; a topic just created may report none for a moment while
    its metadata propagates, so ask again until every one has partitions or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        if all(counts.get(n, 0) > 0 for n in names) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.2)


async def create_topics(
    access: KafkaAccess, partitions: int, prefix: str = "", timeout_s: float = 30.0
) -> list[TopicOutcome]:
    """Create the missing topics; check that existing co-partitioned ones have `partitions`."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**access.aiokafka(), request_timeout_ms=int(timeout_s * 1000))
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # a refused connection is reported below as one line
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except Exception:
        await admin.close()
        raise TopicError(
            f"no Kafka broker answers at {access.bootstrap} to {access.user} over {access.security}"
        ) from None
    finally:
        quiet.setLevel(level)
    try:
        existing = set(await admin.list_topics())
        wanted = [NewTopic(prefix + t.name, partitions, 1, topic_configs=t.config) for t in TOPICS]
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            response = await admin.create_topics(missing)
            for name, code, *_ in response.topic_errors:
                if code not in (0, 36):  # 36: already exists (a concurrent create)
                    raise TopicError(f"creating topic {name} failed with Kafka error code {code}")
        counts = await _partition_counts(admin, [prefix + t.name for t in TOPICS], timeout_s)
        outcomes = []
        for spec in TOPICS:
            name = prefix + spec.name
            have = counts.get(name, 0)
            if spec.co_partitioned and have != partitions:
                raise TopicError(
                    f"topic {name} has {have} partitions but CALLPIPE_PARTITIONS is {partitions}; "
                    "co-partitioned topics must match (recreate the topic or change the setting)"
                )
            outcomes.append(TopicOutcome(name, have, name in {t.name for t in missing}))
        return outcomes
    finally:
        await admin.close()
