"""The partitions a topic has on the broker now, through aiokafka's public admin API.

A reader without a consumer group assigns itself partitions, so it must learn them first. An
`AIOKafkaConsumer` cannot tell it through public API: `partitions_for_topic` only reads the
client's cached metadata (empty for a topic until the consumer has asked about it) and `topics()`
fetches fresh metadata but returns names only. `AIOKafkaAdminClient.describe_topics` sends a
Metadata request and returns the broker's answer as it is, partitions included.

It asks for every topic the principal may describe and picks the wanted ones out: a Metadata
request naming a topic asks the broker to create it if missing (aiokafka sets
allow_auto_topic_creation), and a broker with auto.create.topics.enable would then make a topic
that `callpipe topics create` was meant to make, with the broker's default partition count. Asking
for every topic is the request the consumer's own full metadata fetch sends, so it needs the same
rights (Describe on the topics): a topic the principal may not describe is left out, as is one that
does not exist or is still being created.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient

from pipeline.kafka_access import KafkaAccess


async def topic_partitions(access: KafkaAccess, topics: Iterable[str]) -> dict[str, frozenset[int]]:
    """The partition ids of each of `topics` that exists now, read fresh from the broker; a topic
    that is missing, being created or not describable by this principal has no entry."""
    wanted = set(topics)
    admin = AIOKafkaAdminClient(**access.aiokafka())
    await admin.start()
    try:
        described = await admin.describe_topics()  # every topic: see the module docstring
    finally:
        await admin.close()
    found: dict[str, frozenset[int]] = {}
    for topic in described:
        partitions = frozenset(p["partition"] for p in topic.get("partitions") or ())
        if topic["topic"] in wanted and not topic.get("error_code") and partitions:
            found[topic["topic"]] = partitions
    return found
