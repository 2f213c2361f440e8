"""The stream's counters in the lake: `<lake>/_stats/<source>/<first>-<last>.json`, one file of
counts per landed offset range of each source, written by the stream worker and `callpipe ingest`
(pipeline.stream.runner) just before the range's manifest, and read here by everything that shows
them (the report, `callpipe ingest`, the demo, the benchmarks).

A range's counts count only once its manifest exists (sinks.lineage): a stats file without one is
the leftover of an interrupted flush, whose offsets will be consumed and counted again.

On disk a count is named `<kind>.<reason>` for the outcomes with a reason (`dead_letter.malformed`,
`drop.erased`, `consent_rejected.bad_time`) and by itself otherwise (`events_in`, `vault`). The
names are built by the functions below and parsed once, by `StreamStats.from_counts`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from sinks import files, lineage
from sinks.layout import ANALYTICS, STATS, VAULT

DEAD_LETTER = "dead_letter"  # events sent to calls.dlq (or kept in _rejects/), by reason
DROP = "drop"  # events the chain dropped (consent, erasure, restriction, retention), by reason
REJECTED = ("consent_rejected", "requests_rejected")  # bad control records (`callpipe ingest`)
CONTROL_APPLIED = ("consent_events", "privacy_requests")  # control records applied (`callpipe ingest`)


def dead_letter(reason: str) -> str:
    return f"{DEAD_LETTER}.{reason}"


def drop(reason: str) -> str:
    return f"{DROP}.{reason}"


def rejected(kind: str, reason: str) -> str:
    """A bad record of the consent (`consent`) or request (`requests`) control stream."""
    return f"{kind}_rejected.{reason}"


@dataclass(frozen=True)
class StreamStats:
    """The counters of committed ranges, by what they mean."""

    sources: int = 0
    events_in: int = 0  # events of every message consumed, good or bad
    messages: int = 0
    written: dict[str, int] = field(default_factory=dict)  # rows routed to each zone
    dead_letters: dict[str, int] = field(default_factory=dict)  # by reason
    drops: dict[str, int] = field(default_factory=dict)  # by reason
    control: dict[str, int] = field(default_factory=dict)  # control records applied or rejected
    other: dict[str, int] = field(default_factory=dict)  # any other count, by its name

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], sources: int = 0) -> StreamStats:
        written: dict[str, int] = {}
        dead: dict[str, int] = {}
        drops: dict[str, int] = {}
        control: dict[str, int] = {}
        other: dict[str, int] = {}
        for name, value in sorted(counts.items()):
            kind, _, reason = name.partition(".")
            if kind == DEAD_LETTER and reason:
                dead[reason] = value
            elif kind == DROP and reason:
                drops[reason] = value
            elif (kind in REJECTED and reason) or name in CONTROL_APPLIED:
                control[name] = value
            elif name in (VAULT, ANALYTICS):
                written[name] = value
            elif name not in ("events_in", "messages"):
                other[name] = value
        return cls(
            sources=sources,
            events_in=counts.get("events_in", 0),
            messages=counts.get("messages", 0),
            written=written,
            dead_letters=dead,
            drops=drops,
            control=control,
            other=other,
        )

    @property
    def dead(self) -> int:
        """Events sent to the dead letters, all reasons."""
        return sum(self.dead_letters.values())


def stats_path(lake: Path, source: str, first: int, last: int) -> Path:
    return lake / STATS / source / f"{first:012d}-{last:012d}.json"


def write_stats(lake: Path, source: str, first: int, last: int, counts: Mapping[str, int]) -> Path:
    doc = orjson.dumps({"source": source, "first": first, "last": last, "counts": dict(counts)})
    return files.write_bytes(
        doc, stats_path(lake, source, first, last), mode=0o600, root=lake, dir_mode=0o700
    )


def read_stats(lake: Path) -> StreamStats:
    """Totals of every committed range's stats (a stats file whose range has no manifest is
    the leftover of an interrupted flush and does not count)."""
    total: Counter[str] = Counter()
    root = lake / STATS
    if not root.is_dir():
        return StreamStats()
    sources = 0
    for source_dir in sorted(root.iterdir()):
        if not source_dir.is_dir():
            continue
        sources += 1
        held = set(lineage.held_ranges(lake, source_dir.name))
        for path in source_dir.glob("*.json"):
            doc = orjson.loads(path.read_bytes())
            if (doc["first"], doc["last"]) in held:
                total.update(doc["counts"])
    return StreamStats.from_counts(total, sources)
