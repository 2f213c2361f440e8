"""Dead letters kept in the lake, and a subject's records among them.

`<lake>/_rejects/<source>/<first>-<last>.jsonl` (mode 0600) holds rejected input as raw bytes
(base64): what `callpipe ingest` rejects, and what the stream worker could not hand to calls.dlq
(too large for it). One JSON line per dead letter: reason, stage, offset, index, raw_b64. An
access request must show them and an erasure must remove them. A rejected record
failed validation, so it cannot be parsed reliably; it is matched on the account id as the two
wire formats carry a string: JSON `"<id>"` (quoted, so `A1` does not match `A10`) and Avro (the
zigzag-varint length, then the bytes). A record that merely mentions the id inside a longer JSON
string does not match; one whose Avro bytes happen to contain the encoded id does (erring
towards removal).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
    lines = b"".join(
        orjson.dumps(
            {
                "reason": str(d.reason),
                "stage": str(d.stage),
                "offset": d.offset,
                "index": d.index,
                "raw_b64": base64.b64encode(d.raw).decode(),
            }
        )
        + b"\n"
        for d in dead
    )
    final = lake / REJECTS_DIR / source / f"{first:012d}-{last:012d}.jsonl"
    return files.write_bytes(lines, final, mode=FILE_MODE, root=lake, dir_mode=DIR_MODE)


def _avro_string(value: bytes) -> bytes:
    n = len(value) << 1  # zigzag of a non-negative length
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out) + value


def matches(raw: bytes, account_id: str) -> bool:
    value = account_id.encode()
    return b'"' + value + b'"' in raw or _avro_string(value) in raw


@dataclass(frozen=True)
class Hits:
    path: Path
    lines: list[bytes]  # every line of the file
    matching: list[int]  # indexes of the subject's lines


def find(lake: Path, account_id: str) -> list[Hits]:
    out = []
    for path in sorted((lake / REJECTS_DIR).glob("*/*.jsonl")):
        lines = path.read_bytes().splitlines()
        matching = []
        for i, line in enumerate(lines):
            try:
                raw = base64.b64decode(orjson.loads(line)["raw_b64"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if matches(raw, account_id):
                matching.append(i)
        if matching:
            out.append(Hits(path, lines, matching))
    return out


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
