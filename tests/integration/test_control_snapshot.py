"""The control snapshot on the real broker: a restart reads only what came after the snapshot and
ends with the same state as a full read; a snapshot that does not match the logs is not used."""

from __future__ import annotations

import asyncio
import functools
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from pipeline import codec
from pipeline.consent import Stream
from pipeline.kafka_access import WORKER
from pipeline.kafka_metadata import topic_partitions
from pipeline.stream.control import ControlReader, ControlState, load_snapshot, save_snapshot
from schemas import topics
from tests.support.streamkit import access, grow, make_topics, publish

pytestmark = pytest.mark.integration

T0 = 1_780_000_000_000
PURPOSES = ("recording", "transcription", "analytics")


def consents(first: int, count: int, seed: int) -> list[dict[str, Any]]:
    return [
        {
            "account_id": f"acct-{i:05d}",
            "purpose": PURPOSES[(i + seed) % 3],
            "granted": (i * 7 + seed) % 3 != 0,
            "at": T0 + i * 10 + seed,
            "source": "app",
        }
        for i in range(first, first + count)
    ]


def messages(records: list[dict[str, Any]], partitions: int) -> list[tuple[bytes | None, bytes, int]]:
    """Spread over the partitions by position, as a carrier naming partitions explicitly would."""
    return [
        (None, codec.encode([rec], "ConsentEvent", "avro", 1)[0], n % partitions)
        for n, rec in enumerate(records)
    ]


def topics_of(prefix: str) -> dict[Stream, str]:
    return {Stream.CONSENT: prefix + topics.CONSENT, Stream.REQUESTS: prefix + topics.REQUESTS}


async def read(bootstrap: str, prefix: str, snapshot: Path | None) -> ControlReader:
    state = ControlState(2_000, 0)
    reader = ControlReader(
        topics_of(prefix),
        state,
        lambda: AIOKafkaConsumer(
            **access(WORKER, bootstrap).aiokafka(),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=500,  # partitions added are seen within half a second
        ),
        functools.partial(topic_partitions, access(WORKER, bootstrap)),
        snapshot=snapshot,
    )
    await reader.start()
    await asyncio.wait_for(reader.ready.wait(), 60)
    return reader


def test_a_restart_reads_only_the_tail_and_a_foreign_snapshot_is_refused(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    make_topics(kafka_bootstrap, topic_prefix, 3)
    consent_topic = topic_prefix + topics.CONSENT
    publish(kafka_bootstrap, consent_topic, messages(consents(0, 1_500, 0), 3))
    path = tmp_path / "state" / "control.snapshot"

    async def scenario() -> None:
        first = await read(kafka_bootstrap, topic_prefix, path)
        await first.stop()
        assert not first.resumed_from_snapshot
        assert first.state.counts["consent_applied"] == 1_500
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

        await asyncio.to_thread(publish, kafka_bootstrap, consent_topic, messages(consents(1_000, 700, 1), 3))
        resumed = await read(kafka_bootstrap, topic_prefix, path)
        whole = await read(kafka_bootstrap, topic_prefix, None)
        await resumed.stop()
        await whole.stop()
        assert resumed.resumed_from_snapshot
        assert resumed.state.counts["consent_applied"] == 700  # only what came after the snapshot
        assert whole.state.counts["consent_applied"] == 2_200
        assert resumed.state.accounts == whole.state.accounts
        assert len(whole.state.accounts) == 1_700
        assert resumed.state.watermarks.event_times() == whole.state.watermarks.event_times()

        # The same topic names with other contents (a re-created topic, another broker): the
        # record at each snapshot position has another fingerprint, so the snapshot is not used.
        other = topic_prefix.rstrip(".") + "x."
        await asyncio.to_thread(make_topics, kafka_bootstrap, other, 3)
        await asyncio.to_thread(
            publish, kafka_bootstrap, other + topics.CONSENT, messages(consents(0, 2_200, 2), 3)
        )
        snap = load_snapshot(path, topics_of(topic_prefix))
        assert snap is not None
        snap.topics = {s.value: t for s, t in topics_of(other).items()}
        snap.positions = {(other + topics.CONSENT, p): pos for (_, p), pos in snap.positions.items()}
        foreign = tmp_path / "foreign.snapshot"
        save_snapshot(foreign, snap)
        refused = await read(kafka_bootstrap, other, foreign)
        fresh = await read(kafka_bootstrap, other, None)
        await refused.stop()
        await fresh.stop()
        assert not refused.resumed_from_snapshot
        assert refused.state.accounts == fresh.state.accounts
        assert refused.state.counts["consent_applied"] == 2_200

    asyncio.run(scenario())


def test_a_partition_added_to_a_control_topic_while_the_reader_runs_is_read_from_its_start(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A carrier grows consent.events from 2 to 4 partitions while a worker runs: the consent
    it then writes to the new partitions is applied, with what the old ones carry, no restart."""
    make_topics(kafka_bootstrap, topic_prefix, 2)
    consent_topic = topic_prefix + topics.CONSENT
    publish(kafka_bootstrap, consent_topic, messages(consents(0, 40, 0), 2))

    async def scenario() -> None:
        reader = await read(kafka_bootstrap, topic_prefix, None)
        try:
            assert reader.state.counts["consent_applied"] == 40
            await asyncio.to_thread(grow, kafka_bootstrap, consent_topic, 4)
            added = [
                (None, codec.encode([rec], "ConsentEvent", "avro", 1)[0], 2 + n % 2)
                for n, rec in enumerate(consents(40, 10, 0))
            ]
            await asyncio.to_thread(publish, kafka_bootstrap, consent_topic, added)
            await asyncio.to_thread(publish, kafka_bootstrap, consent_topic, messages(consents(50, 10, 0), 2))
            for _ in range(300):
                if reader.state.counts["consent_applied"] >= 60:
                    break
                await asyncio.sleep(0.1)
            assert reader.state.counts["consent_applied"] == 60
            assert {f"acct-{i:05d}" for i in range(60)} <= set(reader.state.accounts)
            assert {p for (_stream, p) in reader.state.watermarks.event_times()} >= {2, 3}
        finally:
            await reader.stop()

    asyncio.run(scenario())
