"""`callpipe bench control`: the control state at carrier scale (1M accounts; --quick: 100k).

Fresh prefixed control topics get three consent events per account (one per purpose) and an
erase request for one account in fifty, as single-event Avro messages spread over the
partitions. Then, each in a fresh child process (so its memory is the state's alone):
  full read    a ControlReader with no snapshot reads every partition up to its end: the start-up
               of a worker without a snapshot, its events/s, and the resident memory the state
               adds (VmRSS after minus before, per account);
  resume       a ControlReader given the snapshot the full read wrote: the start-up of a restart.
The figure that matters is the ratio of the two start-up times, measured in the same run.
After the full read, the child also times the worker's look-ups against the state it holds
(`_lookups`): `ControlState.states_for` over batches of 500 account ids as a runner asks for them,
`decide` on each state found at a time in the account's history, and the chain's table by time
(`Decisions`, built and read); figures to compare as ratios within one run.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import codec
from pipeline.bench import kafka
from pipeline.bench.common import proc_memory_kib, table
from pipeline.consent import PURPOSES, Stream
from pipeline.kafka_access import CARRIER, OPERATOR, WORKER, KafkaAccess
from pipeline.settings import Settings
from schemas import topics

T0 = 1_780_000_000_000
ERASE_EVERY = 50


def _topics(prefix: str) -> dict[Stream, str]:
    return {Stream.CONSENT: prefix + topics.CONSENT, Stream.REQUESTS: prefix + topics.REQUESTS}


async def _produce(access: KafkaAccess, prefix: str, accounts: int, partitions: int) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**access.aiokafka(), linger_ms=20, max_batch_size=1 << 20, acks=1)
    await producer.start()
    sent = 0
    try:
        pending = []
        for i in range(accounts):
            account = f"acct-{i:08d}"
            recs = [
                (
                    "ConsentEvent",
                    {
                        "account_id": account,
                        "purpose": p,
                        "granted": (i + n) % 3 != 0,
                        "at": T0 + i * 3 + n,
                        "source": "app",
                    },
                )
                for n, p in enumerate(PURPOSES)
            ]
            if i % ERASE_EVERY == 0:
                recs.append(
                    (
                        "PrivacyRequest",
                        {
                            "request_id": f"req-{i}",
                            "account_id": account,
                            "kind": "erase",
                            "at": T0 + i * 3 + 2,
                            "requested_by": "subject",
                        },
                    )
                )
            for name, rec in recs:
                topic = _topics(prefix)[Stream.CONSENT if name == "ConsentEvent" else Stream.REQUESTS]
                value = codec.encode([rec], name, "avro", 1)[0]
                pending.append(await producer.send(topic, value=value, partition=sent % partitions))
                sent += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def _lookups(state: Any, accounts: int) -> dict[str, float]:
    """Look-ups per second against a loaded `ControlState` (ids as fresh strings, as decoded
    records carry them; one in ten unknown), each the best of five passes (the machine is shared)."""
    from pipeline.consent import Decisions, decide
    from pipeline.policy import ConsentDefaults

    rng = random.Random(7)
    known = list(state.accounts)
    ids = [(rng.choice(known) if n % 10 else f"none-{n:08d}") + "." for n in range(100_000)]
    states = [s for s in state.states_for({a[:-1] for a in ids}).values()]
    at = [T0 + rng.randrange(3 * accounts) for _ in states]
    defaults = ConsentDefaults()

    def states_for() -> None:
        for i in range(0, len(ids), 500):
            state.states_for({a[:-1] for a in ids[i : i + 500]})

    def judge() -> None:
        for s, t in zip(states, at, strict=True):
            decide(s, t, defaults)

    def table() -> None:
        for s, t in zip(states, at, strict=True):
            Decisions(s, defaults).at(t)

    def best(work: Callable[[], None]) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return min(times)

    return {
        "states_for_per_s": len(ids) / best(states_for),
        "decide_per_s": len(states) / best(judge),
        "table_per_s": len(states) / best(table),
    }


def _read(access: KafkaAccess, prefix: str, snapshot: str) -> dict[str, Any]:
    """In a child process: read the control topics (from the snapshot if there is one)."""
    from aiokafka import AIOKafkaConsumer

    from pipeline.kafka_metadata import topic_partitions
    from pipeline.stream.control import ControlReader, ControlState

    async def go() -> dict[str, Any]:
        before = proc_memory_kib(os.getpid()).get("VmRSS", 0)
        state = ControlState(2_000, 0)
        reader = ControlReader(
            _topics(prefix),
            state,
            lambda: AIOKafkaConsumer(
                **access.aiokafka(),
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=4 << 20,
            ),
            functools.partial(topic_partitions, access),
            snapshot=Path(snapshot),
        )
        started = time.monotonic()
        await reader.start()
        await reader.ready.wait()
        ready_s = time.monotonic() - started
        after = proc_memory_kib(os.getpid()).get("VmRSS", 0)
        lookups = {} if reader.resumed_from_snapshot else _lookups(state, len(state.accounts))
        saved = time.monotonic()
        await reader.stop()  # writes the snapshot when anything was read
        return {
            **lookups,
            "ready_s": ready_s,
            "records": state.counts["consent_applied"] + state.counts["requests_applied"],
            "accounts": len(state.accounts),
            "rss_added_mib": (after - before) / 1024,
            "snapshot_write_s": time.monotonic() - saved,
            "resumed": reader.resumed_from_snapshot,
        }

    return asyncio.run(go())


def run(settings: Settings, quick: bool) -> dict[str, Any]:
    accounts = 100_000 if quick else 1_000_000
    partitions = settings.partitions
    operator, worker = settings.kafka(OPERATOR), settings.kafka(WORKER)
    kafka.probe(operator)
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    work = Path(tempfile.mkdtemp(prefix="callpipe-bench-control-"))
    snapshot = work / "control.snapshot"
    kafka.make_topics(settings, prefix)
    try:
        started = time.monotonic()
        records = asyncio.run(_produce(settings.kafka(CARRIER), prefix, accounts, partitions))
        produce_s = time.monotonic() - started
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1, maxtasksperchild=1) as pool:
            full = pool.apply(_read, (worker, prefix, str(snapshot)))
        size_mib = snapshot.stat().st_size / (1 << 20)
        with ctx.Pool(1, maxtasksperchild=1) as pool:
            resume = pool.apply(_read, (worker, prefix, str(snapshot)))
    finally:
        kafka.delete_topics(operator, prefix)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "accounts": accounts,
        "records": records,
        "partitions": partitions,
        "produce_s": produce_s,
        "full": full,
        "resume": resume,
        "snapshot_mib": size_mib,
        "startup_ratio": full["ready_s"] / max(resume["ready_s"], 1e-9),
        "bytes_per_account": full["rss_added_mib"] * (1 << 20) / max(full["accounts"], 1),
    }


def render(f: dict[str, Any]) -> str:
    full, resume = f["full"], f["resume"]
    rows = [
        [
            "full read (no snapshot)",
            round(full["ready_s"], 1),
            round(full["records"] / max(full["ready_s"], 1e-9)),
            full["records"],
            round(full["rss_added_mib"]),
        ],
        [
            "resume from snapshot",
            round(resume["ready_s"], 1),
            "",
            resume["records"],
            round(resume["rss_added_mib"]),
        ],
    ]
    return "\n".join(
        [
            f"Control state: {f['accounts']:,} accounts, {f['records']:,} control records over "
            f"{f['partitions']} partitions",
            table(["start-up", "ready after s", "records/s", "records read", "memory added MiB"], rows),
            f"start-up ratio full/resume: {f['startup_ratio']:.1f}x; snapshot {f['snapshot_mib']:.0f} MiB, "
            f"written in {full['snapshot_write_s']:.1f}s; state ~{f['bytes_per_account']:.0f} B per account",
            f"look-ups: states_for {full['states_for_per_s']:,.0f} accounts/s, "
            f"decide {full['decide_per_s']:,.0f}/s, table by time (Decisions, built and read) "
            f"{full['table_per_s']:,.0f}/s",
        ]
    )
