"""Crash-safe replacement of lake files: an intent journal under `<lake>/_jobs/`.

Retention, erase and compact change many files at once. A job killed at any moment (SIGKILL,
power loss) must leave the lake in its old or its new state, and the next run must finish the
work. The mechanism, in the order a job goes through it:

1. Lock. `job_lock(lake)` takes an exclusive `flock` on `<lake>/_jobs/.lock` for the job's
   lifetime (the kernel drops it when the process dies), then runs `recover(lake)`.
2. Plan. The job decides every change before touching anything: files to replace (new content
   for an existing name), files to add, files to remove, day partitions to drop.
3. Pending journal. `Change.begin()` writes `<lake>/_jobs/<run>.json` with state "pending" and the
   full list of operations, atomically (temp, fsync, rename, fsync of the folder). From here on a
   crash is rolled back: recovery deletes the run's temp files and the journal.
4. Temps. New content goes to hidden temp files beside their targets (`.<name>.<run>.tmp`: no
   reader's `*.parquet` glob sees them), each fsynced, then their folders are fsynced.
5. Commit. The journal is rewritten atomically with state "committed". This single rename is the
   moment the new state is decided. A crash after it is rolled forward.
6. Apply. Temps are renamed over their targets (`os.replace`, atomic per file), removed files are
   unlinked, dropped partitions are renamed to a hidden trash folder (one atomic rename) and then
   deleted; the touched folders are fsynced. Every step is idempotent, so recovery simply runs
   them again: a temp that is gone was already renamed, a path that is gone was already removed.
7. Done. The caller records the run in the audit trail (with the journal's run id, so recovery
   can tell whether that already happened), then the journal is deleted.

So the lake as callpipe reads it (every job takes the lock and recovers first) is always the old
or the new state. A reader that lists files directly, between a crash after step 5 and the next
job start, can see a committed change half applied; `pending(lake)` tells it so, and any callpipe
job (or `recover`) completes it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pyarrow as pa

from jobs import audit
from sinks.files import write_table
from sinks.layout import DIR_MODE, FILE_MODE

JOBS_DIR = "_jobs"
PENDING = "pending"
COMMITTED = "committed"


class JobBusy(RuntimeError):
    """Another job holds the lake's lock."""


def jobs_dir(lake: Path) -> Path:
    return lake / JOBS_DIR


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


WORKERS = 8  # file rewrites are bound by fsync latency and pyarrow (both release the GIL)
T = TypeVar("T")
R = TypeVar("R")


def parallel(
    fn: Callable[[T], R], items: Sequence[T], progress: Callable[[int, int], None] | None = None
) -> list[R]:
    """`[fn(x) for x in items]` on a thread pool, in order; the first error is raised (after the
    running calls finish). `progress(done, total)` is called from this thread."""
    if len(items) <= 1:
        out = [fn(x) for x in items]
        if progress and items:
            progress(1, 1)
        return out
    with ThreadPoolExecutor(max_workers=min(WORKERS, len(items))) as pool:
        futures = [pool.submit(fn, x) for x in items]
        for done, _ in enumerate(as_completed(futures), 1):
            if progress:
                progress(done, len(items))
        return [f.result() for f in futures]


def make_dirs(folder: Path, mode: int) -> None:
    """mkdir -p where every folder created gets `mode` (vault folders are 0700 all the way down)."""
    if folder.is_dir():
        return
    make_dirs(folder.parent, mode)
    try:
        folder.mkdir(mode=mode)
    except FileExistsError:
        return
    os.chmod(folder, mode)  # mkdir's mode is filtered by the umask


def write_parquet(table: pa.Table, path: Path, zone: str, metadata: dict[bytes, bytes] | None = None) -> None:
    """Write one lake file the way the stream sink does (`sinks.files.parquet_options`: zstd,
    statistics, a Bloom filter on the zone's subject column, the declared sort order; a vault file
    encrypted when vault keys are configured, `sinks.files.write_table`), with the zone's file
    mode; fsynced. The table's schema metadata (lineage included) is kept. `path` must
    not be visible to readers yet (a temp name): renaming it into place is the caller's job.
    """
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update(metadata)
        table = table.replace_schema_metadata(merged)
    if zone in path.parts:
        zone_root = Path(*path.parts[: len(path.parts) - path.parts[::-1].index(zone)])
        make_dirs(zone_root.parent, 0o755)
    make_dirs(path.parent, DIR_MODE.get(zone, 0o755))
    write_table(table, path, zone)
    os.chmod(path, FILE_MODE.get(zone, 0o644))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, orjson.dumps(doc))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass
class Change:
    """One job's set of file operations, applied all-or-nothing through the journal."""

    lake: Path
    job: str
    run: str = field(default_factory=lambda: uuid.uuid4().hex)
    replaces: list[tuple[str, str]] = field(default_factory=list)  # (tmp, dst), relative to the lake
    removes: list[str] = field(default_factory=list)
    drops: list[tuple[str, str]] = field(default_factory=list)  # (partition dir, trash dir)
    info: dict[str, Any] = field(default_factory=dict)  # what recovery needs to audit the run

    def temp_for(self, dst: Path) -> Path:
        """Plan new content for `dst` (absolute, inside the lake); returns the temp path to write."""
        rel = dst.relative_to(self.lake)
        tmp = rel.with_name(f".{rel.name}.{self.run[:12]}.tmp")
        self.replaces.append((str(tmp), str(rel)))
        return self.lake / tmp

    def remove(self, path: Path) -> None:
        self.removes.append(str(path.relative_to(self.lake)))

    def drop(self, partition: Path) -> None:
        rel = partition.relative_to(self.lake)
        trash = rel.with_name(f".trash-{self.run[:12]}-{rel.name}")
        self.drops.append((str(rel), str(trash)))

    @property
    def empty(self) -> bool:
        return not (self.replaces or self.removes or self.drops)

    @property
    def journal(self) -> Path:
        return jobs_dir(self.lake) / f"{self.run}.json"

    def _doc(self, state: str) -> dict[str, Any]:
        return {
            "run": self.run,
            "job": self.job,
            "state": state,
            "replaces": self.replaces,
            "removes": self.removes,
            "drops": self.drops,
            "info": self.info,
        }

    def begin(self) -> None:
        """Step 3: the pending journal, before any temp file exists."""
        jobs_dir(self.lake).mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_json_atomic(self.journal, self._doc(PENDING))

    def commit(self) -> None:
        """Steps 4 (folder fsync) and 5: the single atomic switch to the new state."""
        parallel(fsync_dir, sorted({(self.lake / tmp).parent for tmp, _ in self.replaces}))
        _write_json_atomic(self.journal, self._doc(COMMITTED))

    def apply(self) -> None:
        """Step 6; idempotent."""
        _apply(self.lake, self._doc(COMMITTED))

    def finish(self) -> None:
        """Step 7: forget the journal (after the audit entry is written)."""
        self.journal.unlink(missing_ok=True)
        fsync_dir(self.journal.parent)

    def rollback(self) -> None:
        _rollback(self.lake, self._doc(PENDING))
        self.journal.unlink(missing_ok=True)


def _apply(lake: Path, doc: dict[str, Any]) -> None:
    touched: set[Path] = set()
    for tmp, dst in doc["replaces"]:
        src = lake / tmp
        if src.exists():
            os.replace(src, lake / dst)
        touched.add((lake / dst).parent)
    for rel in doc["removes"]:
        path = lake / rel
        path.unlink(missing_ok=True)
        touched.add(path.parent)
    for rel, trash in doc["drops"]:
        part, bin_ = lake / rel, lake / trash
        if part.exists() and not bin_.exists():
            os.replace(part, bin_)
            touched.add(part.parent)
    parallel(fsync_dir, sorted(f for f in touched if f.exists()))
    for _rel, trash in doc["drops"]:
        shutil.rmtree(lake / trash, ignore_errors=True)


def _rollback(lake: Path, doc: dict[str, Any]) -> None:
    for tmp, _dst in doc["replaces"]:
        (lake / tmp).unlink(missing_ok=True)


def pending(lake: Path) -> list[dict[str, Any]]:
    """Journals left by killed jobs (state pending or committed), oldest first."""
    folder = jobs_dir(lake)
    if not folder.is_dir():
        return []
    docs = []
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            docs.append(orjson.loads(path.read_bytes()))
        except orjson.JSONDecodeError:
            continue  # cannot happen with atomic writes; a foreign file is left alone
    return docs


Audit = Callable[[dict[str, Any]], None]


def recover(lake: Path, audit: Audit | None = None) -> list[tuple[str, str]]:
    """Finish what killed jobs left: roll committed journals forward, pending ones back.

    `audit(doc)` is called for each rolled-forward run so its entry can be written if missing.
    Returns (run, "forward" | "back") for each journal handled. Call it under `job_lock`.
    """
    done = []
    for doc in pending(lake):
        journal = jobs_dir(lake) / f"{doc['run']}.json"
        if doc.get("state") == COMMITTED:
            _apply(lake, doc)
            if audit is not None:
                audit(doc)
            done.append((doc["run"], "forward"))
        else:
            _rollback(lake, doc)
            done.append((doc["run"], "back"))
        journal.unlink(missing_ok=True)
        fsync_dir(journal.parent)
    return done


def audit_recovered(lake: Path) -> Audit:
    """The audit callback of `recover`: writes the rolled-forward run's entry unless it exists."""

    def write(doc: dict[str, Any]) -> None:
        if any(e.get("run") == doc["run"] for e in audit.read(lake)):
            return
        info = doc.get("info", {})
        audit.record(
            lake,
            job=doc["job"],
            params=info.get("params", {}),
            counts=info.get("counts", {}),
            files=info.get("files", []),
            duration_s=0.0,
            outcome="recovered",
            run=doc["run"],
        )

    return write


def run_change(change: Change, write: Callable[[], None]) -> None:
    """Steps 3 to 6 for a planned change: `write()` writes every temp (paths from `temp_for`)."""
    if change.empty:
        return
    change.begin()
    try:
        write()
    except BaseException:
        change.rollback()
        raise
    change.commit()
    change.apply()


@contextmanager
def job_lock(lake: Path, on_recover: Audit | None = None) -> Iterator[list[tuple[str, str]]]:
    """Hold the lake's job lock, recovering killed jobs first (auditing what they committed);
    yields what recovery did."""
    folder = jobs_dir(lake)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobBusy("another callpipe job is running on this lake") from None
        yield recover(lake, on_recover or audit_recovered(lake))
    finally:
        os.close(fd)
