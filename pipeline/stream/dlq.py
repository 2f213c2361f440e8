"""`callpipe dlq keygen|inspect|replay`: the operator's repair loop over sealed dead letters.

    keygen    create the operator key, or add a new version (rotation) (pipeline/sealed.py)
    inspect   read calls.dlq (all of it, or from an offset, a count), open each dead letter with
              the operator key and print its reason, coordinates and original bytes, or export
              them with `--out DIR` for repair: `<p>-<offset>.json` (what and where) beside
              `<p>-<offset>.value` (the original bytes), mode 0600 in a 0700 folder
    replay    produce the `.value` files of an export folder (edited, or deleted for messages not
              to replay) into their source topic and partition, with their original key; each
              in one Kafka transaction with its record in calls.dlq.replayed, so a dead letter
              replayed twice lands once: the second replay finds the record and skips it

The worker then takes a replayed message like any other: landed once, or dead-lettered again
with its reason if the repair did not fix it.

Both withhold the dead letters of erased subjects (pipeline/stream/withhold.py): calls.dlq keeps
them until its retention expires them, but no operator sees, exports or replays them after the
erasure; they are counted, never named.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.errors import CliError
from pipeline.kafka_access import KafkaAccess
from pipeline.kafka_metadata import topic_partitions
from pipeline.sealed import OperatorKeys, unseal
from pipeline.stream.withhold import Suppression
from schemas.topics import DLQ, REPLAY_TXN, REPLAYED
from sinks import files

TRANSACTIONAL_ID = REPLAY_TXN
POLL_MS = 500


@dataclass(frozen=True)
class Letter:
    """One dead letter, opened: where it is in calls.dlq, why, where it came from, what it was."""

    partition: int
    offset: int
    headers: dict[str, str]
    raw: bytes
    key: bytes | None

    @property
    def name(self) -> str:
        return f"{self.partition}-{self.offset}"

    @property
    def stub(self) -> bool:
        """Whether calls.dlq holds no bytes of it (kept in the lake, or withheld): nothing to replay."""
        return not self.raw and ("callpipe.kept" in self.headers or "callpipe.withheld" in self.headers)

    def describe(self) -> dict[str, Any]:
        h = self.headers
        index = h.get("callpipe.source.index")
        return {
            "dlq": {"partition": self.partition, "offset": self.offset},
            "reason": h.get("callpipe.reason"),
            "stage": h.get("callpipe.stage"),
            "field": h.get("callpipe.field"),  # the schema field it failed on, where known (a name)
            "source": {
                "topic": h.get("callpipe.source.topic"),
                "partition": int(h.get("callpipe.source.partition", "-1")),
                "offset": int(h.get("callpipe.source.offset", "-1")),
                "index": int(index) if index is not None else None,
            },
            "format": h.get("callpipe.format"),
            "size": int(h["callpipe.size"]) if "callpipe.size" in h else len(self.raw),
            "sha256": h.get("callpipe.sha256"),
            "kept": h.get("callpipe.kept"),  # too large for calls.dlq: the bytes are in the lake
            "withheld": h.get("callpipe.withheld"),  # bytes not kept: a credential could not be removed
            "key_b64": base64.b64encode(self.key).decode() if self.key is not None else None,
        }


def _consumer(access: KafkaAccess) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **access.aiokafka(),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )


async def _read(
    access: KafkaAccess, topic: str, partition: int | None, offset: int | None, count: int | None
) -> list[Any]:
    """Records of `topic` from `offset` (default: the start) to the end as it was when the read
    began, at most `count`, in partition then offset order."""
    # looked up among all topics: naming a missing one would have the broker create it
    parts = (await topic_partitions(access, [topic])).get(topic)
    if not parts:
        raise CliError(f"topic {topic} does not exist")
    consumer = _consumer(access)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(parts) if partition is None or p == partition]
        if not tps:
            raise CliError(f"topic {topic} has no partition {partition}")
        consumer.assign(tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begin[tp], offset) if offset is not None else begin[tp])
        out: list[Any] = []
        open_tps = {tp for tp in tps if await consumer.position(tp) < end[tp]}
        while open_tps and (count is None or len(out) < count):
            batches = await consumer.getmany(*open_tps, timeout_ms=POLL_MS)
            for tp, records in batches.items():
                out.extend(r for r in records if r.offset < end[tp])
            for tp in list(open_tps):
                if await consumer.position(tp) >= end[tp]:
                    open_tps.discard(tp)
        out.sort(key=lambda r: (r.partition, r.offset))
        return out[:count] if count is not None else out
    finally:
        await consumer.stop()


def open_letters(records: Sequence[Any], keys: OperatorKeys) -> list[Letter]:
    out = []
    for r in records:
        headers = [(k, bytes(v)) for k, v in (r.headers or ())]
        opened = unseal(keys, r.value or b"", headers)
        text = {k: v.decode(errors="replace") for k, v in headers if k not in _BINARY}
        out.append(Letter(r.partition, r.offset, text, opened.raw, opened.key))
    return out


_BINARY = {"callpipe.dek", "callpipe.source.key"}


@dataclass(frozen=True)
class Inspected:
    letters: list[Letter]  # opened, none of them an erased subject's
    withheld: int  # read, but an erased subject's: neither shown nor exported


def withhold(letters: Sequence[Letter], suppression: Suppression) -> Inspected:
    shown = [letter for letter in letters if not suppression.holds(letter.raw, letter.key)]
    return Inspected(shown, len(letters) - len(shown))


def inspect(
    access: KafkaAccess,
    keys: OperatorKeys,
    suppression: Suppression,
    *,
    prefix: str = "",
    partition: int | None = None,
    offset: int | None = None,
    count: int | None = None,
) -> Inspected:
    """At most `count` dead letters read from calls.dlq, opened; an erased subject's withheld."""
    records = asyncio.run(_read(access, prefix + DLQ, partition, offset, count))
    return withhold(open_letters(records, keys), suppression)


def export(letters: Sequence[Letter], out: Path) -> list[Path]:
    """Write each letter's description and original bytes for repair (mode 0600, folder 0700).
    A stub (its bytes kept in the lake, or withheld) gets no `.value` file: `replay` then lists it
    as missing instead of producing an empty message."""
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    out.chmod(0o700)
    written = []
    for letter in letters:
        doc = letter.describe()
        doc["value_file"] = None if letter.stub else f"{letter.name}.value"
        written.append(
            files.write_bytes(
                orjson.dumps(doc, option=orjson.OPT_INDENT_2),
                out / f"{letter.name}.json",
                mode=0o600,
                root=out,
                dir_mode=0o700,
            )
        )
        if not letter.stub:
            files.write_bytes(letter.raw, out / f"{letter.name}.value", mode=0o600, root=out, dir_mode=0o700)
    return written


# ---------------------------------------------------------------- replay


@dataclass(frozen=True)
class Replayed:
    replayed: list[str]  # dead letters produced now (`<p>-<offset>`)
    already: list[str]  # replayed before: skipped
    missing_value: list[str]  # described, but their `.value` file was removed: not replayed
    withheld: list[str]  # an erased subject's (by key or value): never produced again


def _ledger_key(dlq_topic: str, partition: int, offset: int) -> bytes:
    return f"{dlq_topic}:{partition}:{offset}".encode()


async def _replay(access: KafkaAccess, prefix: str, folder: Path, suppression: Suppression) -> Replayed:
    dlq_topic, ledger = prefix + DLQ, prefix + REPLAYED
    docs = []
    for path in sorted(folder.glob("*.json")):
        try:
            doc = orjson.loads(path.read_bytes())
            if not isinstance(doc["dlq"]["offset"], int) or not doc["source"]["topic"]:
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise CliError(f"{path}: not a dead letter exported by `callpipe dlq inspect --out`") from None
        docs.append((path, doc))
    producer = AIOKafkaProducer(
        **access.aiokafka(),
        transactional_id=TRANSACTIONAL_ID + (f".{prefix}" if prefix else ""),
        enable_idempotence=True,
        acks="all",
        max_request_size=16 * 1024 * 1024,
    )
    # Started (fencing any earlier replay with the same id) before the ledger is read: what an
    # earlier replay committed is then in the ledger, what it had not is aborted.
    await producer.start()
    try:
        done = {r.key for r in await _read(access, ledger, None, None, None)}
        replayed, already, missing, withheld = [], [], [], []
        for path, doc in docs:
            p, o = doc["dlq"]["partition"], doc["dlq"]["offset"]
            name = f"{p}-{o}"
            value_path = path.with_name(doc.get("value_file") or f"{name}.value")
            if not value_path.exists():
                missing.append(name)
                continue
            value = value_path.read_bytes()
            key = base64.b64decode(doc["key_b64"]) if doc.get("key_b64") else None
            if suppression.holds(value, key):  # exported before the erasure, or edited into one
                withheld.append(name)
                continue
            ledger_key = _ledger_key(dlq_topic, p, o)
            if ledger_key in done:
                already.append(name)
                continue
            source = doc["source"]
            record = orjson.dumps(
                {
                    "to": {"topic": source["topic"], "partition": source["partition"]},
                    "size": len(value),
                    "at_ms": int(time.time() * 1000),
                }
            )
            async with producer.transaction():
                await producer.send(
                    source["topic"],
                    value=value,
                    key=key,
                    partition=source["partition"] if source["partition"] >= 0 else None,
                    headers=[("callpipe.replay.of", ledger_key)],
                )
                await producer.send(ledger, value=record, key=ledger_key)
            done.add(ledger_key)
            replayed.append(name)
        return Replayed(replayed, already, missing, withheld)
    finally:
        await producer.stop()


def replay(access: KafkaAccess, folder: Path, suppression: Suppression, *, prefix: str = "") -> Replayed:
    if not folder.is_dir():
        raise CliError(f"{folder}: no such folder (export dead letters with `callpipe dlq inspect --out`)")
    return asyncio.run(_replay(access, prefix, folder, suppression))
