"""consent.events for the jobs: read whole by `callpipe jobs requests` to find consent withdrawals
(`jobs.withdrawals`), with the stream's own reader.

The pass reads every partition of the topic up to the end offsets it finds at its start into a
`ControlState` (pipeline/stream/control.py's `ControlReader`, no consumer group), exactly as a
worker holds consent, and keeps the reader's snapshot under `CALLPIPE_HOME/state/` in a file of
its own (`consent-<prefix>.snapshot`; a worker's holds privacy.requests too), so a later pass
reads only what came after it. A broker or topic out of reach raises `TopicUnavailable`, naming
the topic and the exception type, never a value.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Mapping
from pathlib import Path

from jobs.requests_intake import ConsentReader
from jobs.requests_topic import TopicUnavailable
from pipeline.consent import AccountState, Stream
from pipeline.kafka_access import AccessError, KafkaAccess
from pipeline.kafka_metadata import topic_partitions
from pipeline.stream.control import ControlReader, ControlState, snapshot_path
from schemas.topics import CONSENT

TOPIC = CONSENT
SNAPSHOT = "consent"  # the snapshot's name beside the workers' `control-<prefix>.snapshot`


async def _read(
    access: KafkaAccess, topic: str, snapshot: Path | None, timeout_s: float
) -> dict[str, AccountState]:
    from aiokafka import AIOKafkaConsumer

    try:
        connect = access.aiokafka()
    except AccessError as exc:
        raise TopicUnavailable(str(exc)) from None
    state = ControlState(0, int(time.time() * 1000))
    reader = ControlReader(
        {Stream.CONSENT: topic},
        state,
        lambda: AIOKafkaConsumer(
            **connect,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        ),
        functools.partial(topic_partitions, access),
        snapshot=snapshot,
    )
    try:
        await asyncio.wait_for(reader.start(), timeout_s)
        ready = asyncio.ensure_future(reader.ready.wait())
        deadline = time.monotonic() + timeout_s
        while not ready.done():
            if reader.failed is not None:
                raise TopicUnavailable(f"cannot read {topic} ({type(reader.failed).__name__})")
            if time.monotonic() > deadline:
                raise TopicUnavailable(f"timed out reading {topic} up to its end offsets")
            await asyncio.wait({ready}, timeout=0.5)
    except TopicUnavailable:
        raise
    except Exception as exc:
        raise TopicUnavailable(f"cannot reach the broker to read {topic} ({type(exc).__name__})") from None
    finally:
        with contextlib.suppress(Exception):  # a reader that never started has nothing to stop
            await reader.stop()  # writes the snapshot when the topic was read to its end
    return state.accounts


def reader(
    access: KafkaAccess, home: Path | None, prefix: str = "", timeout_s: float = 120.0
) -> ConsentReader:
    """A `ConsentReader` over the prefixed topic: every account's consent history. `home`: where
    the snapshot is kept (None: none, the topic is read from its start at every pass)."""
    snapshot = None if home is None else snapshot_path(home, prefix, SNAPSHOT)

    def read() -> Mapping[str, AccountState]:
        return asyncio.run(_read(access, prefix + TOPIC, snapshot, timeout_s))

    return read
