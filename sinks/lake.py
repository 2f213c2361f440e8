"""The lake as a destination: one `LakeWriter` per source (a topic-partition, or an input file of
`callpipe ingest`) buffers the rows of both zones and lands each offset range exactly once.

A flush of offsets first..last writes, in this order:
  1. every file of the range (one per zone x dt x bucket) as a temp file beside its final name,
     each fsynced, then their folders fsynced: the temps are durable;
  2. the manifest `_manifest/<source>/<first>-<last>.json` (temp, fsync, rename, fsync): from this
     instant the range is committed, whatever happens next (if another writer committed any of
     these offsets meanwhile, the temps are removed instead and `RangeConflict` is raised);
  3. every temp renamed to its final name, then the folders fsynced.
Only then does `flush` return and may the caller commit offset last + 1 to Kafka.

One process at a time writes a source: `LakeWriter.open` takes a POSIX lock on
`_manifest/<source>/.writer.lock` for the writer's life (the kernel drops it when the process
dies), so a zombie worker or a second `callpipe ingest` of the same file gets `SourceBusy`
instead of deleting the first one's temp files in recovery.

`recover(lake, source)`, run when a writer opens, finishes or undoes an interrupted flush: temps
of a committed range are renamed (rolled forward), temps of an uncommitted range are deleted
(the range will be consumed again), and it returns the first offset the lake does not hold. The
consumer starts there; rows of offsets below it that still arrive (a consumer restarted from an
older committed offset) are dropped by the writer, so a replay never lands a row twice.

Final names tell where a file came from (`calls.raw-p003-o000000001200-o000000001799-vault.parquet`),
but the manifest is what counts (see sinks.lineage): compaction and erasure rename and delete files.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from sinks import files, lineage
from sinks.arrow import Part, analytics_table, buckets_of, partition, vault_table
from sinks.group_record import recover_groups
from sinks.layout import ANALYTICS, DIR_MODE, VAULT, ZONES, partition_dir, table_dir
from sinks.lineage import Manifest, ManifestFile

Row = Mapping[str, Any]
Hook = Callable[[str], None]  # called after each durable step; tests raise in it to simulate a crash

TEMP_RE = re.compile(
    r"^\.(?P<source>.+)-o(?P<first>\d{12,})-o(?P<last>\d{12,})-(?P<zone>[a-z]+)\.parquet\.tmp$"
)


def source_name(topic: str, partition: int) -> str:
    """The source name of a Kafka topic-partition, e.g. `calls.raw-p003`."""
    return lineage.check_source(f"{topic}-p{partition:03d}")


def file_source(path: Path) -> str:
    """The source name of an input file of `callpipe ingest`: its name and a hash of its content,
    so ingesting the same file twice lands its rows once, and different files never collide."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name).strip("._-")[:60] or "input"
    return lineage.check_source(f"ingest-{stem}-{digest.hexdigest()[:12]}")


LOCK_NAME = ".writer.lock"
WRITE_THREADS = 2  # Parquet encoding releases the GIL: a flush writes its files two at a time


class SourceBusy(RuntimeError):
    """Another process has this source open for writing."""


def claim(lake: Path, source: str) -> int:
    """Lock `source` for this process (a POSIX lock, released by `os.close` or process death);
    returns the lock's file descriptor."""
    folder = lineage.manifest_dir(lake, source)
    files.ensure_dir(lake, folder, lineage.MANIFEST_DIR_MODE)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SourceBusy(f"{source}: another process is writing this source") from None
    return fd


def is_busy(lake: Path, source: str) -> bool:
    """Whether another process holds `source`'s writer lock, creating nothing: the lock is taken
    and dropped at once. Never call it in a process that has the source open (a POSIX lock is the
    process's: closing any descriptor of the file drops it)."""
    try:
        fd = os.open(lineage.manifest_dir(lake, source) / LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        return False  # no lock file: no process opened the source since `_manifest/` was made
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def file_name(source: str, first: int, last: int, zone: str) -> str:
    return f"{source}-o{first:012d}-o{last:012d}-{zone}.parquet"


def _temps(lake: Path, source: str) -> list[tuple[Path, int, int]]:
    found: list[tuple[Path, int, int]] = []
    for zone in ZONES:
        for temp in table_dir(lake, zone).glob(f"dt=*/bucket=*/.{source}-o*.tmp"):
            match = TEMP_RE.match(temp.name)
            if match and match["source"] == source:
                found.append((temp, int(match["first"]), int(match["last"])))
    return found


def recover(lake: Path, source: str) -> int:
    """Finish or undo an interrupted flush of `source` (its own, or a group's it took part in:
    sinks.group); the first offset the lake does not hold."""
    recover_groups(lake, source)
    folder = lineage.manifest_dir(lake, source)
    if folder.is_dir():
        files.remove_durably(p for p in folder.iterdir() if p.name.endswith(files.TEMP_SUFFIX))
    held = set(lineage.held_ranges(lake, source))
    published: set[Path] = set()
    orphans: list[Path] = []
    for temp, first, last in _temps(lake, source):
        if (first, last) in held:
            published.add(files.publish(temp).parent)
        else:
            orphans.append(temp)
    files.fsync_dirs(published)
    files.remove_durably(orphans)
    return max((last for _first, last in held), default=-1) + 1


class WriterSettings(Protocol):
    """What a writer takes from the settings (`pipeline.settings.Settings` has these): the sinks
    know the shape, not the module that reads the environment."""

    @property
    def buckets(self) -> int: ...
    @property
    def flush_rows(self) -> int: ...
    @property
    def flush_seconds(self) -> float: ...


@dataclass(frozen=True)
class Flushed:
    """What one flush committed."""

    source: str
    first: int
    last: int
    files: tuple[Path, ...]
    rows: Mapping[str, int]  # per zone


class RangeConflict(RuntimeError):
    """Another writer committed offsets of this range first (two workers on one partition, or one
    input file ingested twice at once); this writer's files were removed. Open a new writer."""


class WriterBroken(RuntimeError):
    """A flush failed part-way (or the writer was closed); open a new writer, which recovers."""


class LakeWriter:
    """Buffers the rows of one source and lands them by offset range.

    Feed it with `add` (rows of both zones, plus how far the source has been consumed), ask
    `due(now)` after each batch, `flush()` when due, then commit offset `next_offset` to Kafka.
    `now` is any monotonic clock in seconds, given by the caller.
    """

    def __init__(
        self,
        lake: Path,
        source: str,
        *,
        next_offset: int,
        buckets: int,
        flush_rows: int,
        flush_seconds: float,
        hook: Hook | None = None,
        lock_fd: int | None = None,
    ) -> None:
        self.lake = lake
        self._lock_fd = lock_fd
        self.source = lineage.check_source(source)
        self.buckets = buckets
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._hook = hook or (lambda _step: None)
        self._next = next_offset
        self._through = next_offset - 1
        self._vault: list[Row] = []
        self._tokens: list[str] = []
        self._analytics: list[Row] = []
        # what `add_tables` gave, already Arrow: (vault, its buckets, analytics) per call
        self._chunks: list[tuple[pa.Table, pa.Array, pa.Table]] = []
        self._since: float | None = None
        self._broken = False
        # rows of offsets next_offset..staged_through, already converted to Arrow (see `stage`)
        self._staged: list[tuple[pa.Table, pa.Array, pa.Table]] = []
        self._staged_rows = 0
        self._staged_through = next_offset - 1
        self.replayed_rows = 0  # rows dropped because the lake already held their offset

    @classmethod
    def open(
        cls, lake: Path, source: str, settings: WriterSettings, *, hook: Hook | None = None
    ) -> LakeWriter:
        """Lock `source` for this process, recover it in `lake` (created if missing) and return a
        writer that continues where the lake ends. Raises `SourceBusy` if another process has it."""
        lake.mkdir(parents=True, exist_ok=True)
        fd = claim(lake, source)
        try:
            next_offset = recover(lake, source)
        except BaseException:
            os.close(fd)
            raise
        return cls(
            lake,
            source,
            next_offset=next_offset,
            buckets=settings.buckets,
            flush_rows=settings.flush_rows,
            flush_seconds=settings.flush_seconds,
            hook=hook,
            lock_fd=fd,
        )

    def close(self) -> None:
        """Release the source's lock. Buffered rows not yet flushed are dropped (their offsets are
        not committed, so they are consumed again)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._broken = True

    def __enter__(self) -> LakeWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_lock_fd", None) is not None:
            os.close(self._lock_fd)  # type: ignore[arg-type]

    @property
    def next_offset(self) -> int:
        """The first offset the lake does not hold: where consumption resumes, what to commit."""
        return self._next

    @property
    def through(self) -> int:
        """The last offset handed over with `add(through=...)` (next_offset - 1 when none)."""
        return self._through

    @property
    def pending_rows(self) -> int:
        chunks = sum(v.num_rows + a.num_rows for v, _b, a in self._chunks)
        return len(self._vault) + len(self._analytics) + chunks + self._staged_rows

    def add(
        self,
        *,
        vault: Sequence[Row] = (),
        analytics: Sequence[Row] = (),
        vault_tokens: Sequence[str] = (),
        through: int | None = None,
        now: float,
    ) -> None:
        """Buffer rows. `vault_tokens[i]` is the account token of `vault[i]` (the same token its
        analytics row carries as account_token), so both rows of an event share a bucket.
        `through`: every message of the source up to this offset has been handed over (its rows
        are in this call or an earlier one, or it yields none). Rows of later offsets wait for it;
        rows of offsets the lake already holds (a replay) are dropped and counted.
        """
        if len(vault_tokens) != len(vault):
            raise ValueError("one account token per vault row is required")
        old_vault, (vault, vault_tokens) = _split(vault, vault_tokens, self._next - 1)
        old_analytics, (analytics, _) = _split(analytics, None, self._next - 1)
        self.replayed_rows += len(old_vault[0]) + len(old_analytics[0])
        if vault or analytics:
            self._vault.extend(vault)
            self._tokens.extend(vault_tokens)
            self._analytics.extend(analytics)
            if self._since is None:
                self._since = now
        if through is not None and through > self._through:
            self._through = through
            if self._since is None:
                self._since = now

    def add_tables(self, *, vault: pa.Table, buckets: pa.Array, analytics: pa.Table, now: float) -> None:
        """`add` for rows the chain already made tables of (pipeline/chain_tables.py): `vault` and
        `analytics` of their zones' schemas, `buckets[i]` the bucket of `vault`'s row i (its
        account token's, as `analytics`' rows are bucketed by their account_token column). What
        is handed over (`through`) still goes through `add`. Rows of offsets the lake already
        holds are dropped and counted, as `add` does."""
        if len(buckets) != vault.num_rows:
            raise ValueError("one bucket per vault row is required")
        (vault, buckets, analytics), replayed = _later(vault, buckets, analytics, self._next - 1)
        if replayed is not None:
            self.replayed_rows += replayed[0].num_rows + replayed[2].num_rows
        rows = vault.num_rows + analytics.num_rows
        if rows:
            self._chunks.append((vault, buckets, analytics))
            if self._since is None:
                self._since = now

    def due(self, now: float) -> bool:
        """Whether a flush is due: enough rows, or the oldest buffered input is old enough."""
        if self._through < self._next:
            return False
        if self.pending_rows >= self.flush_rows:
            return True
        return self._since is not None and now - self._since >= self.flush_seconds

    def stage(self) -> None:
        """Convert the buffered rows of offsets up to `through` to Arrow now (far smaller than row
        dicts), to land later with `flush` or, with other sources' rows, `land_together`."""
        if self._broken:
            raise WriterBroken("a previous flush failed or the writer was closed; open a new writer")
        last = self._through
        if last <= self._staged_through:
            return
        (vault, tokens), (vault_later, tokens_later) = _split(self._vault, self._tokens, last)
        (analytics, _), (analytics_later, _) = _split(self._analytics, None, last)
        if vault or analytics:
            self._staged.append(
                (vault_table(vault), buckets_of(tokens, self.buckets), analytics_table(analytics))
            )
            self._staged_rows += len(vault) + len(analytics)
        if self._chunks:
            vault_t = pa.concat_tables([v for v, _b, _a in self._chunks])
            buckets_t = pa.concat_arrays([b for _v, b, _a in self._chunks])
            analytics_t = pa.concat_tables([a for _v, _b, a in self._chunks])
            later, upto = _later(vault_t, buckets_t, analytics_t, last)
            if upto is not None:
                self._staged.append(upto)
                self._staged_rows += upto[0].num_rows + upto[2].num_rows
            self._chunks = [later] if later[0].num_rows or later[2].num_rows else []
        self._staged_through = last
        self._vault, self._tokens, self._analytics = vault_later, tokens_later, analytics_later

    def staged(self) -> Staged | None:
        """The staged range next_offset..staged_through and its rows; None when nothing is staged."""
        first, last = self._next, self._staged_through
        if last < first:
            return None
        if self._staged:
            vault = pa.concat_tables([v for v, _b, _a in self._staged])
            buckets = pa.concat_arrays([b for _v, b, _a in self._staged])
            analytics = pa.concat_tables([a for _v, _b, a in self._staged])
        else:
            vault, buckets, analytics = vault_table([]), pa.array([], pa.int32()), analytics_table([])
        return Staged(self.source, first, last, vault, buckets, analytics)

    def landed(self, last: int) -> None:
        """The staged range through `last` is committed: drop it and move next_offset past it."""
        if last != self._staged_through:
            raise ValueError("only the whole staged range can be landed")
        self._next = last + 1
        self._staged, self._staged_rows = [], 0
        if not (self._vault or self._analytics or self._chunks) and self._through <= last:
            self._since = None

    def broken(self) -> None:
        """A flush of this writer's rows failed part-way: refuse further flushes."""
        self._broken = True

    def flush(self) -> Flushed | None:
        """Land offsets next_offset..through durably; None when nothing new was consumed."""
        staged = self.prepare()
        if staged is None:
            return None
        flushed = self.write(staged)
        self.landed(staged.last)
        return flushed

    def prepare(self) -> Staged | None:
        """`flush` in three steps, for a caller that keeps adding while a range lands: the range
        next_offset..through staged now (None when nothing new was consumed), written by `write`
        (in any thread: it reads only the staged tables), then `landed`. Rows and offsets added
        meanwhile belong to the next range; no second range is prepared before `landed`."""
        self.stage()
        if not (self._vault or self._analytics or self._chunks):
            self._since = None  # the staged input's clock is done; the next input starts one
        return self.staged()

    def write(self, staged: Staged) -> Flushed:
        """Land a prepared range durably (see `prepare`); a failure breaks the writer."""
        try:
            return self._land(staged)
        except BaseException:
            self._broken = True
            raise

    def _land(self, staged: Staged) -> Flushed:
        first, last = staged.first, staged.last
        metadata = lineage.lineage_metadata({self.source: [(first, last)]})
        temps: list[tuple[Path, Path]] = []
        entries: list[ManifestFile] = []
        folders: set[Path] = set()
        rows = {VAULT: 0, ANALYTICS: 0}
        jobs: list[tuple[pa.Table, Path, str]] = []
        for zone, part in zone_parts(staged.vault, staged.buckets, staged.analytics, self.buckets):
            folder = partition_dir(self.lake, zone, part.dt, part.bucket)
            folders |= files.ensure_dir(self.lake, folder, DIR_MODE[zone]) | {folder}
            final = folder / file_name(self.source, first, last, zone)
            jobs.append((files.table_metadata(part.table, metadata), final, zone))
            entries.append(ManifestFile(zone, str(final.relative_to(self.lake)), part.table.num_rows))
            rows[zone] += part.table.num_rows
        # A range's files (a zone x day x bucket each) are written and fsynced two at a time:
        # Parquet encoding and the fsync wait run without the GIL.
        with ThreadPoolExecutor(WRITE_THREADS) as pool:
            for temp, (_table, final, _zone) in zip(
                pool.map(lambda job: files.write_temp_parquet(*job), jobs), jobs, strict=True
            ):
                temps.append((temp, final))
                self._hook("temp_written")
        files.fsync_dirs(folders)
        self._hook("temps_durable")
        if any(a <= last and first <= b for a, b in lineage.held_ranges(self.lake, self.source)):
            files.remove_durably(temp for temp, _final in temps)
            raise RangeConflict(f"{self.source}: offsets {first}..{last} were committed by another writer")
        lineage.write_manifest(self.lake, Manifest(self.source, first, last, tuple(entries)))
        self._hook("manifest_written")
        for temp, final in temps:
            files.publish(temp, final)
            self._hook("renamed")
        files.fsync_dirs({final.parent for _temp, final in temps})
        self._hook("published")
        return Flushed(self.source, first, last, tuple(final for _temp, final in temps), rows)


@dataclass(frozen=True)
class Staged:
    """A source's offsets first..last ready to land: its vault rows with their buckets, and its
    analytics rows (bucketed by their account_token column)."""

    source: str
    first: int
    last: int
    vault: pa.Table
    buckets: pa.Array
    analytics: pa.Table

    @property
    def rows(self) -> int:
        return self.vault.num_rows + self.analytics.num_rows


def zone_parts(
    vault: pa.Table, vault_buckets: pa.Array, analytics: pa.Table, buckets: int
) -> list[tuple[str, Part]]:
    """The rows of both zones split into their (dt, bucket) partitions."""
    parts = [(VAULT, p) for p in partition(vault, VAULT, vault_buckets)]
    analytics_buckets = buckets_of(analytics["account_token"], buckets)
    parts += [(ANALYTICS, p) for p in partition(analytics, ANALYTICS, analytics_buckets)]
    return parts


Split = tuple[list[Row], list[str]]


def _split(rows: Sequence[Row], tokens: Sequence[str] | None, last: int) -> tuple[Split, Split]:
    """(rows of offsets up to `last`, rows of later offsets), each with its tokens if given."""
    offsets = [row["source_offset"] for row in rows]
    if not offsets or max(offsets) <= last:
        return (list(rows), list(tokens or ())), ([], [])
    if min(offsets) > last:
        return ([], []), (list(rows), list(tokens or ()))
    upto = [i for i, offset in enumerate(offsets) if offset <= last]
    later = [i for i, offset in enumerate(offsets) if offset > last]
    return (
        ([rows[i] for i in upto], [tokens[i] for i in upto] if tokens else []),
        ([rows[i] for i in later], [tokens[i] for i in later] if tokens else []),
    )


Chunk = tuple[pa.Table, pa.Array, pa.Table]


def _later(vault: pa.Table, buckets: pa.Array, analytics: pa.Table, last: int) -> tuple[Chunk, Chunk | None]:
    """(the rows of offsets after `last`, the rows up to it or None when there are none): the
    vault rows with their buckets, and the analytics rows, split by their source_offset."""
    vault_offsets, analytics_offsets = vault["source_offset"], analytics["source_offset"]
    least, most = _span(vault_offsets, analytics_offsets)
    if least > last:
        return (vault, buckets, analytics), None
    if most <= last:
        # the usual flush: every row is in range, and filtering by an all-true mask would copy them
        return (vault.slice(0, 0), buckets.slice(0, 0), analytics.slice(0, 0)), (vault, buckets, analytics)
    vault_later = pc.greater(vault_offsets, last).combine_chunks()
    analytics_later = pc.greater(analytics_offsets, last).combine_chunks()
    vault_upto, analytics_upto = pc.invert(vault_later), pc.invert(analytics_later)
    return (
        (vault.filter(vault_later), buckets.filter(vault_later), analytics.filter(analytics_later)),
        (vault.filter(vault_upto), buckets.filter(vault_upto), analytics.filter(analytics_upto)),
    )


def _span(*columns: pa.ChunkedArray) -> tuple[float, float]:
    """The least and the greatest offset of the columns (no rows: +inf, -inf, so a range of
    nothing is both all later and all in range)."""
    least, most = float("inf"), float("-inf")
    for column in columns:
        found = pc.min_max(column).as_py()
        if found["min"] is not None:
            least, most = min(least, found["min"]), max(most, found["max"])
    return least, most


def held(lake: Path) -> dict[str, int]:
    """For every source in the lake, the first offset it does not hold (no recovery is done)."""
    found = {s: lineage.held_ranges(lake, s) for s in lineage.sources(lake)}
    return {s: ranges[-1][1] + 1 for s, ranges in found.items() if ranges}
