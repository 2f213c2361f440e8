"""Durable, atomic files: a file appears in the lake whole or not at all.

A file is written as a temp file beside its final name (`.<name>.tmp`, in the same folder so the
rename never crosses a file system), created with its final mode, fsynced, renamed, and the folder
fsynced so the new name survives a power cut. The stream sink splits these steps (write and fsync
every temp, commit a manifest, then rename) so a whole offset range lands or none of it;
`write_parquet` and `write_bytes` do all of them for one file, for the jobs that replace files.

Readers never see temp files: the lake's globs match `*.parquet`, and temp names start with a dot
and end in `.tmp`.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.zones import SUBJECT_COLUMN
from sinks import crypt
from sinks.arrow import SORT_COLUMNS
from sinks.layout import DIR_MODE, FILE_MODE

TEMP_SUFFIX = ".tmp"
ROW_GROUP_ROWS = 128 * 1024  # per row group: statistics and bloom filters prune at this grain
BLOOM_FPP = 0.01
# Below this many rows a file is written without dictionary encoding: for the small files of a
# backfill's many days it is a third of the writing time and the files come out no larger.
DICTIONARY_MIN_ROWS = 1_000
# Columns unique per event by their nature (an id, a time in milliseconds, an offset): a
# dictionary would hold every value once more, so they are written plain: files a tenth smaller
# and written in 5-12% less time (docs/BENCHMARKS.md, "Results: numbers read natively").
PLAIN_COLUMNS = frozenset({"event_id", "started_at", "answered_at", "ended_at", "source_offset"})


def temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{TEMP_SUFFIX}")


def final_path(temp: Path) -> Path:
    if not (temp.name.startswith(".") and temp.name.endswith(TEMP_SUFFIX)):
        raise ValueError("not a temp file name")
    return temp.with_name(temp.name[1 : -len(TEMP_SUFFIX)])


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(root: Path, path: Path, mode: int) -> set[Path]:
    """Create `path` and its missing parents below the existing `root`, each with `mode`.

    Returns the folders whose entries changed (parents of created folders), to be fsynced.
    Only the missing folders are created (found by walking up from `path`): a backfill creates
    thousands of day x bucket folders under a few existing ones.
    """
    changed: set[Path] = set()
    if os.path.isdir(path):
        return changed
    depth = len(path.relative_to(root).parts)  # ValueError when `path` is not below `root`
    missing = [path]
    while len(missing) < depth and not os.path.isdir(missing[-1].parent):
        missing.append(missing[-1].parent)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            continue
        os.chmod(folder, mode)  # mkdir's mode is filtered by the umask
        changed.add(folder.parent)
    return changed


def make_dirs(folder: Path, mode: int) -> set[Path]:
    """mkdir -p where every folder created gets `mode` (vault folders are 0700 all the way down):
    `ensure_dir` below the nearest folder that exists."""
    root = folder
    while not root.is_dir():
        root = root.parent
    return ensure_dir(root, folder, mode)


def parquet_options(zone: str, table: pa.Table) -> dict[str, Any]:
    """How every lake file of a zone is written: zstd, statistics, a bloom filter on the account
    column sized to its distinct values, the sort order declared in the footer, and dictionary
    encoding unless the file is small (and never of PLAIN_COLUMNS)."""
    account = SUBJECT_COLUMN[zone]
    distinct = pc.count_distinct(table.column(account)).as_py() if table.num_rows else 1
    order = [(account, "ascending"), *((name, "ascending") for name in SORT_COLUMNS)]
    return {
        "compression": "zstd",
        "use_dictionary": (
            _dictionary_columns(table.schema.remove_metadata())
            if table.num_rows >= DICTIONARY_MIN_ROWS
            else False
        ),
        "write_statistics": True,
        "row_group_size": ROW_GROUP_ROWS,
        "bloom_filter_options": {account: {"ndv": max(1, min(distinct, ROW_GROUP_ROWS)), "fpp": BLOOM_FPP}},
        "sorting_columns": pq.SortingColumn.from_ordering(table.schema, order),
        "store_schema": True,
    }


@cache
def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """The Parquet column paths of `schema` written with a dictionary: all but PLAIN_COLUMNS'
    (nested ones by their leaves' paths, as the writer names them)."""
    empty = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), empty)
    written = pq.ParquetFile(pa.BufferReader(empty.getvalue())).schema
    paths = (written.column(i).path for i in range(len(written)))
    return [path for path in paths if path.split(".")[0] not in PLAIN_COLUMNS]


def write_table(table: pa.Table, where: Any, zone: str) -> None:
    """`pq.write_table` of one lake file of `zone` (`parquet_options`); a vault file is encrypted
    when vault keys are configured (`sinks.crypt`): pyarrow writes no Bloom filter into an
    encrypted file, so vault lookups prune by statistics only."""
    options = parquet_options(zone, table)
    extra, metadata = crypt.write_options(zone)
    if extra:
        del options["bloom_filter_options"]
        options.update(extra)
        table = table_metadata(table, metadata)
    pq.write_table(table, where, **options)


def _open_new(path: Path, mode: int) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # also when a stale temp of the same name existed
    return fd


def write_temp_parquet(table: pa.Table, final: Path, zone: str, *, sync: bool = True) -> Path:
    """Write `table` to the temp file of `final` and fsync it (unless `sync` is false: the caller
    makes many temps durable at once with `sync_all`); returns the temp path.

    The table's schema metadata becomes the file's key-value metadata (see sinks.lineage).
    """
    temp = temp_path(final)
    os.close(_open_new(temp, FILE_MODE[zone]))
    # Arrow's own file, not a Python file object: Parquet encoding and every write run without
    # the GIL, so the group flush's threads write in parallel (a Python file takes the GIL per write).
    with pa.OSFile(str(temp), "wb") as out:
        write_table(table, out, zone)
    if sync:
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return temp


def write_parquet_file(table: pa.Table, path: Path, zone: str) -> Path:
    """Write `table` to `path` (a name readers do not see yet; the jobs' temps) with the zone's
    file mode from the moment it exists and its Parquet options (`write_table`: a vault file is
    encrypted when vault keys are configured), fsynced. Arrow writes the path itself, without the
    GIL: the jobs rewrite many files at once on a thread pool."""
    os.close(_open_new(path, FILE_MODE.get(zone, 0o644)))
    write_table(table, str(path), zone)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def write_temp_bytes(data: bytes, final: Path, mode: int) -> Path:
    temp = temp_path(final)
    fd = _open_new(temp, mode)
    with open(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    return temp


def publish(temp: Path, final: Path | None = None) -> Path:
    """Rename a durable temp file to its final name (the caller fsyncs the folder)."""
    target = final_path(temp) if final is None else final
    os.replace(temp, target)
    return target


def fsync_dirs(paths: Iterable[Path]) -> None:
    for path in sorted(set(paths)):
        fsync_dir(path)


def _syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


SYNCFS = _syncfs()


def sync_all(root: Path, paths: Iterable[Path], folders: Iterable[Path]) -> None:
    """Make written files and folder entries durable at once: one `syncfs` of the file system
    holding `root` (Linux: it waits for every dirty page and the journal, and reports write-back
    errors), or, without it, an fsync of each file and then of each folder. Thousands of small
    files cost one call instead of an fsync each; the price is waiting for other writers' dirty
    data on the same file system too, so the stream's flushes of a few files keep their fsyncs."""
    if SYNCFS is not None:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dirs(folders)


def write_parquet(table: pa.Table, final: Path, zone: str, *, lake: Path) -> Path:
    """Write one lake file atomically and durably (temp, fsync, rename, fsync of the folder),
    creating its folders with the zone's mode. For jobs that replace files; keep the lineage
    metadata of the files replaced (`sinks.lineage.carry_lineage`)."""
    changed = ensure_dir(lake, final.parent, DIR_MODE[zone])
    temp = write_temp_parquet(table, final, zone)
    publish(temp, final)
    fsync_dirs({final.parent, *changed})
    return final


def write_bytes(data: bytes, final: Path, *, mode: int, root: Path, dir_mode: int) -> Path:
    """Write a small file atomically and durably (manifests, audit records)."""
    changed = ensure_dir(root, final.parent, dir_mode)
    temp = write_temp_bytes(data, final, mode)
    publish(temp, final)
    fsync_dirs({final.parent, *changed})
    return final


def write_synced(fd: int, data: bytes) -> None:
    """Write all of `data` to an open file (os.write may write less than asked) and fsync it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def append_durably(data: bytes, path: Path, mode: int) -> Path:
    """Append whole lines to an append-only file (audit trail, request ledger) and fsync it. A
    torn last line left by a killed writer is closed first, so it stays one unreadable line that
    `read_json_lines` skips; the folder is fsynced when the file is new. The folder must exist."""
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, mode)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        write_synced(fd, data)
    finally:
        os.close(fd)
    if created:
        fsync_dirs({path.parent})
    return path


def read_json_lines(path: Path) -> list[Any]:
    """The JSON values of an append-only file, oldest first; torn or empty lines are skipped."""
    if not path.exists():
        return []
    out = []
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        try:
            out.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            continue
    return out


def remove_durably(paths: Iterable[Path]) -> None:
    """Delete files (missing ones are fine) and fsync their folders."""
    folders: set[Path] = set()
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        folders.add(path.parent)
    fsync_dirs(folders)


def table_metadata(table: pa.Table, extra: Mapping[bytes, bytes]) -> pa.Table:
    """`table` with `extra` added to its schema metadata (written as Parquet key-value metadata)."""
    merged = dict(table.schema.metadata or {})
    merged.update(extra)
    return table.replace_schema_metadata(merged)
