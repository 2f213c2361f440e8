"""The record of a group flush (`sinks.group`), `<lake>/_groups/<group>.json`, and its recovery:
`recover_groups`, run by `sinks.lake.recover` before anything else, finishes a committed group or
undoes one that only got as far as its intent. The steps and why they are safe are described in
`sinks.group`; this module holds what recovery needs, so the writer (`sinks.lake`) can run it
without importing the group writer that builds on it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import orjson

from sinks import files, lineage
from sinks.layout import GROUPS_DIR
from sinks.lineage import Manifest

GROUPS_DIR_MODE = 0o700
RECORD_MODE = 0o600
INTENT_SUFFIX = ".intent.json"
COMMITTED_SUFFIX = ".json"
LOCK_NAME = ".lock"

Hook = Callable[[str], None]


def groups_dir(lake: Path) -> Path:
    return lake / GROUPS_DIR


def group_name(source: str, first: int, last: int, members: int) -> str:
    return f"{lineage.check_source(source)}-o{first:012d}-o{last:012d}-x{members}"


def group_file_name(group: str, zone: str) -> str:
    return f"{group}-{zone}.parquet"


@contextmanager
def _records_locked(lake: Path) -> Iterator[Path]:
    """The groups folder, locked against other recoveries (held briefly, never while flushing)."""
    folder = groups_dir(lake)
    files.ensure_dir(lake, folder, GROUPS_DIR_MODE)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        os.close(fd)


def record_bytes(group: str, members: Sequence[Manifest], paths: Sequence[str]) -> bytes:
    return orjson.dumps(
        {
            "version": 1,
            "group": group,
            "members": [orjson.loads(m.to_json()) for m in members],
            "files": list(paths),
        }
    )


def _parse(data: bytes) -> tuple[list[Manifest], list[str]]:
    body = orjson.loads(data)
    return [Manifest.from_json(orjson.dumps(m)) for m in body["members"]], list(body["files"])


def complete(lake: Path, record: Path, members: Sequence[Manifest], paths: Sequence[str], hook: Hook) -> None:
    """Steps 4 and 5 of a committed group (again, after a crash: every step is idempotent)."""
    for manifest in members:
        if (manifest.first, manifest.last) not in set(lineage.held_ranges(lake, manifest.source)):
            lineage.write_manifest(lake, manifest)
        hook("manifest_written")
    renamed: list[Path] = []
    for path in paths:
        final = lake / path
        temp = files.temp_path(final)
        if temp.exists():
            renamed.append(files.publish(temp, final))
            hook("renamed")
    files.sync_all(lake, renamed, {p.parent for p in renamed})
    hook("published")
    files.remove_durably([record])


def recover_groups(lake: Path, source: str) -> None:
    """Finish (committed) or undo (intent only) every interrupted group flush `source` took part
    in. The caller holds the lock of `source`, so the writer of such a group is gone."""
    if not groups_dir(lake).is_dir():
        return
    with _records_locked(lake) as folder:
        for record in sorted(folder.iterdir()):
            if not record.name.endswith(COMMITTED_SUFFIX) or record.name.startswith("."):
                continue
            try:
                members, paths = _parse(record.read_bytes())
            except FileNotFoundError:
                continue
            if source not in {m.source for m in members}:
                continue
            if record.name.endswith(INTENT_SUFFIX):
                files.remove_durably([files.temp_path(lake / p) for p in paths])
                files.remove_durably([record])
            else:
                complete(lake, record, members, paths, lambda _step: None)
