"""Dead letters of erased subjects, withheld from `callpipe dlq inspect` and `dlq replay`.

calls.dlq is a Kafka log: erasure cannot remove a message from it. Its copies of an erased
subject's data stay sealed to the operator key until the topic's retention expires them (3 days,
infra/topics.py). Until then the operator tools, the only ones that open them, withhold them:
`inspect` neither prints nor exports them, `replay` never produces them again; both count them
(`withheld: N dead letter(s) of erased subjects`), never naming whom.

Whom to withhold comes from the lake's suppression list: the intake files of erase requests
under `<lake>/vault/requests/` (jobs/intake.py), which keep the raw account id of every subject
an erase request (from the topic, a file or `jobs erase --account`) named, done or still open,
for good. A dead letter is the subject's when
- its original Kafka key is the account id (carriers key single events by account), or
- its value holds the id, read as erasure reads a kept dead letter (`pipeline.raw_records`:
  every framing, a container file block by block, decompressed): as any string of what decodes,
  or as a JSON string (any escaping) or an Avro string anywhere in the bytes not compressed.
Matching errs towards withholding: a value that merely mentions the id is withheld too, and so
is one that cannot be read at all (a damaged compressed block), since it cannot be told.

Without a lake there is no suppression list, and the commands refuse rather than show or replay
what might be an erased subject's (pipeline/stream/cli.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson

from pipeline import raw_records
from pipeline.errors import CliError
from sinks.layout import MANIFESTS, REQUESTS, VAULT, VAULT_REQUESTS

ERASE = "erase"  # the kind of an erase request, as jobs/intake.py writes it
_STRING = re.compile(rb'"(?:[^"\\\r\n]|\\.){1,1024}"')  # a JSON string literal, escapes included


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _literal(quoted: bytes) -> str | None:
    """The text of a JSON string literal, its escapes read (None if they do not read)."""
    if b"\\" not in quoted:
        return quoted[1:-1].decode(errors="replace")
    try:
        text = orjson.loads(quoted)
    except orjson.JSONDecodeError:
        return None
    return text if isinstance(text, str) else None


@dataclass(frozen=True)
class Suppression:
    """The account ids whose dead letters are withheld (`repr` shows their number only)."""

    accounts: frozenset[str]

    def __repr__(self) -> str:
        return f"Suppression({len(self.accounts)} accounts)"

    def holds(self, raw: bytes, key: bytes | None) -> bool:
        """Whether a dead letter (its original bytes and key) is an erased subject's: read as
        `pipeline.raw_records` reads a kept dead letter (every framing; a container block by
        block, decompressed), any string of what decodes, or a JSON or Avro string of the bytes
        that are not compressed; what cannot be read at all (a damaged compressed block) is
        withheld, since it cannot be told."""
        if not self.accounts:
            return False
        if key is not None and key.decode(errors="replace").strip() in self.accounts:
            return True
        if not raw:
            return False
        found = raw_records.read(raw)
        if any(s in self.accounts for record in found.records for s in _strings(record)):
            return True
        return any(self._scan(part) for part in found.plain) or found.opaque > 0

    @cached_property
    def _avro(self) -> dict[int, tuple[bytes, frozenset[bytes]]]:
        """By encoded length: the Avro length prefix, and the ids of that length as bytes."""
        by_len: dict[int, set[bytes]] = {}
        for account in self.accounts:
            data = account.encode()
            by_len.setdefault(len(data), set()).add(data)
        return {n: (raw_records.write_long(n), frozenset(ids)) for n, ids in by_len.items()}

    def _scan(self, raw: bytes) -> bool:
        """Bytes not compressed: any JSON string (any escaping) or Avro string equal to an id
        (a pass over the bytes per distinct id length, not per id)."""
        for m in _STRING.finditer(raw):
            if _literal(m.group()) in self.accounts:
                return True
        for n, (prefix, ids) in self._avro.items():
            at = raw.find(prefix)
            while at >= 0:
                start = at + len(prefix)
                if raw[start : start + n] in ids:
                    return True
                at = raw.find(prefix, at + 1)
        return False


def _is_lake(lake: Path) -> bool:
    return lake.is_dir() and any((lake / name).is_dir() for name in (VAULT, MANIFESTS, REQUESTS))


def load(lake: Path) -> Suppression:
    """The lake's suppression list. Raises CliError (one line, no id) when `lake` is no lake or
    an intake file cannot be read: withholding would then be guesswork."""
    if not _is_lake(lake):
        raise CliError(
            f"no lake at {lake}: dead letters of erased subjects cannot be withheld without its "
            "suppression list; set CALLPIPE_LAKE or --lake"
        )
    folder = lake.joinpath(*VAULT_REQUESTS)
    accounts: set[str] = set()
    try:
        paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
        for path in paths:
            try:
                doc = orjson.loads(path.read_bytes())
            except orjson.JSONDecodeError:
                raise CliError(
                    f"{path}: not an intake file; cannot tell whose dead letters to withhold"
                ) from None
            if isinstance(doc, dict) and doc.get("kind") == ERASE and doc.get("account_id") is not None:
                accounts.add(str(doc["account_id"]))
    except OSError as exc:
        raise CliError(
            f"{folder}: cannot read the suppression list ({exc.strerror}); dead letters of erased "
            "subjects cannot be withheld"
        ) from None
    return Suppression(frozenset(accounts))


NONE = Suppression(frozenset())


def withheld_line(n: int) -> str:
    return f"withheld: {n} dead letter(s) of erased subjects"
