"""Dead letters kept in the lake, and a subject's records among them.

`<lake>/_rejects/<source>/<first>-<last>.jsonl` (mode 0600) holds rejected input as raw bytes
(base64): what `callpipe ingest` rejects, and what the stream worker could not hand to calls.dlq
(too large for it). One JSON line per dead letter: reason, stage, offset, index, raw_b64; a dead
letter whose bytes were withheld (a credential that could not be taken out of them,
`pipeline.reasons.Withheld`) has an empty raw_b64 and `withheld`, `size` and `sha256` instead.

An access request must show them and an erasure must remove them; retention expires them
(`jobs.retention_rejects`). A rejected record failed validation, so it cannot be parsed
reliably: `find` asks the caller's `match` of each raw record whether it is the subject's
(`pipeline.raw_records.holds_subject` decodes what it can and searches the rest), and counts
apart the dead letters that cannot be told (`unattributed`): they are never reported as searched.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from sinks import files
from sinks.layout import REJECTS

REJECTS_DIR = REJECTS
FILE_MODE = 0o600
DIR_MODE = 0o700


class DeadLetterLike(Protocol):
    """What is kept of a dead letter (`pipeline.reasons.Rejection` has these)."""

    @property
    def reason(self) -> str: ...
    @property
    def stage(self) -> str: ...
    @property
    def offset(self) -> int: ...
    @property
    def index(self) -> int | None: ...
    @property
    def raw(self) -> bytes: ...


def write_rejects(lake: Path, source: str, first: int, last: int, dead: Sequence[DeadLetterLike]) -> Path:
    """Keep the dead letters of offsets first..last of `source`, durably, under their range name."""
    lines = b"".join(orjson.dumps(_entry(d)) + b"\n" for d in dead)
    final = lake / REJECTS_DIR / source / f"{first:012d}-{last:012d}.jsonl"
    return files.write_bytes(lines, final, mode=FILE_MODE, root=lake, dir_mode=DIR_MODE)


def _entry(d: DeadLetterLike) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "reason": str(d.reason),
        "stage": str(d.stage),
        "offset": d.offset,
        "index": d.index,
        "raw_b64": base64.b64encode(d.raw).decode(),
    }
    digest = getattr(d, "sha256", "")
    if not d.raw and digest:  # withheld: what it was, not what it held
        entry.update(withheld=True, size=getattr(d, "size", 0), sha256=digest)
    return entry


def files_in(lake: Path) -> list[Path]:
    """Every dead-letter file of the lake, in name order."""
    return sorted((lake / REJECTS_DIR).glob("*/*.jsonl"))


def raw_of(line: bytes) -> bytes | None:
    """The raw record of one line (b"" when withheld); None for a line that does not read."""
    try:
        raw = orjson.loads(line)["raw_b64"]
        return base64.b64decode(raw, validate=True) if isinstance(raw, str) else None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Hits:
    path: Path
    lines: list[bytes]  # every line of the file
    matching: list[int]  # indexes of the subject's lines


@dataclass(frozen=True)
class Found:
    """A subject's dead letters, and how many dead letters could not be told (whose they are)."""

    hits: list[Hits]
    unattributed: int  # undecodable and unsearchable (damaged compressed bytes), or unreadable lines

    @property
    def count(self) -> int:
        return sum(len(h.matching) for h in self.hits)


Match = Callable[[bytes], "bool | None"]  # a raw record -> the subject's, not, or cannot tell


def find(lake: Path, match: Match) -> Found:
    """The dead letters `match` says are the subject's, file by file, and a count of those it
    cannot tell about (a line that does not read counts there too): `find_each` for one subject."""

    def one(raw: bytes) -> dict[int, bool | None]:
        verdict = match(raw)
        return {} if verdict is False else {0: verdict}

    return find_each(lake, one, [0])[0]


K = TypeVar("K", bound=Hashable)
MatchEach = Callable[[bytes], "Mapping[K, bool | None]"]  # a raw record -> verdicts not False, by key


def find_each(lake: Path, match: MatchEach[K], keys: Iterable[K]) -> dict[K, Found]:
    """`find` for many subjects in one read of `_rejects/`: `match` gives, for one raw record, the
    verdict of each key whose verdict is not False (absent: False), so `find_each(lake, m, keys)[k]`
    is `find(lake, lambda raw: m(raw).get(k, False))` for every k, each file read once."""
    keys = list(dict.fromkeys(keys))
    if not keys:  # nobody to look for: nothing read
        return {}
    hits: dict[K, list[Hits]] = {k: [] for k in keys}
    unattributed = dict.fromkeys(keys, 0)
    unreadable = 0
    for path in files_in(lake):
        lines = path.read_bytes().splitlines()
        matching: dict[K, list[int]] = {}
        for i, line in enumerate(lines):
            raw = raw_of(line)
            if raw is None:
                unreadable += 1
                continue
            if not raw:  # withheld: no one's, as `find` judges it
                continue
            for k, verdict in match(raw).items():
                if k not in hits:
                    continue
                if verdict is None:
                    unattributed[k] += 1
                elif verdict:
                    matching.setdefault(k, []).append(i)
        for k, found in matching.items():
            hits[k].append(Hits(path, lines, found))
    return {k: Found(hits[k], unattributed[k] + unreadable) for k in keys}


def export_entries(hits: list[Hits]) -> list[dict[str, Any]]:
    """The subject's dead letters: reason, stage, offset, and the raw record (text when UTF-8)."""
    out = []
    for h in hits:
        for i in h.matching:
            entry = orjson.loads(h.lines[i])
            raw = base64.b64decode(entry.pop("raw_b64"))
            try:
                entry["raw"] = raw.decode()
            except UnicodeDecodeError:
                entry["raw_b64"] = base64.b64encode(raw).decode()
            entry["file"] = f"{h.path.parent.name}/{h.path.name}"
            out.append(entry)
    return out


def write_without(hits: Hits, temp: Path) -> int:
    """Write `hits.path` minus the subject's lines to `temp` (0600, fsynced); returns lines kept."""
    drop = set(hits.matching)
    kept = [line + b"\n" for i, line in enumerate(hits.lines) if i not in drop]
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        files.write_synced(fd, b"".join(kept))
    finally:
        os.close(fd)
    return len(kept)
