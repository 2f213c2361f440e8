"""Rebuilding `<lake>/_manifest/` from the lineage the lake's files carry, after it was lost (a
restore without it, a mistaken delete): `callpipe jobs rebuild-manifests`.

Without manifests a worker resumes every source at offset 0 and would land again every row the
lake already holds. Every lake file of both zones records the offset ranges whose rows it holds
(`callpipe.lineage`, sinks.lineage); this job writes a manifest (listing no files) for each such
range no manifest covers, durably as a flush commits one, so a writer opened afterwards resumes
after the last of them and drops replayed rows below it. Ranges are written as the files record
them (`lineage.recorded_ranges`): a flush's own range unless compaction merged it, so the
range's `_stats/` record, matched by range, counts again.

Never beside a writer. A worker or `callpipe ingest` flushing while manifests are written would
race them (a flush's conflict check reads manifest names). The job takes the writer lock of every
source it sees (`sinks.lake.claim`: those with a `_manifest/<source>/` folder, then those the files
name) and the jobs' lock (`jobs.replace.job_lock`: compaction, erasure and retention replace the
files being read), holds them while it reads and writes, and raises `Busy` if one is taken. A
dry run only tests the locks (`sinks.lake.is_busy`) and creates nothing. A writer that was
running when `_manifest/` was deleted holds its lock on the deleted file, which no check can see:
stop every worker and ingest first. Run it in a process of its own (the CLI): a POSIX lock
belongs to the process, and closing the job's descriptor would drop a writer's lock held there.

What cannot be recovered. A range that landed no row (every event dead-lettered or dropped), or
whose rows were all erased (erasure deletes a file that held only the subject), is in no file.
Below a source's last recovered offset it becomes a gap nobody reads again: harmless, it holds no
row (`gaps` lists them). Past it, the range is read again when the worker resumes: its events go
through the chain once more, their dead letters are sent and counted again, and rows land that
the chain lets through today (a subject erased through privacy.requests stays out; rows removed
by `callpipe jobs erase --account` alone land again: run that erase again once the workers have
caught up).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import audit
from jobs.replace import JobBusy, job_lock, jobs_dir, parallel
from sinks import lineage
from sinks.lake import SourceBusy, claim, is_busy
from sinks.layout import ZONES
from sinks.lineage import Range
from sinks.read import zone_files

JOB = "rebuild-manifests"


class Busy(RuntimeError):
    """A writer or another job is running on the lake: rebuilding now would race it."""


@dataclass(frozen=True)
class SourceResult:
    source: str
    held_before: list[Range]  # manifests that survived (merged)
    written: list[Range]  # manifests written (or, in a dry run, to write)
    next_offset: int  # where a writer of the source resumes afterwards
    gaps: list[Range]  # offsets below next_offset no manifest covers: no row of them is in the lake


@dataclass(frozen=True)
class RebuildResult:
    dry_run: bool
    files_read: dict[str, int]  # per zone
    sources: list[SourceResult]

    @property
    def ranges_written(self) -> int:
        return sum(len(s.written) for s in self.sources)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "files_read": self.files_read,
            "ranges_written": self.ranges_written,
            "sources": [
                {
                    "source": s.source,
                    "held_before": [list(r) for r in s.held_before],
                    "written": [list(r) for r in s.written],
                    "next_offset": s.next_offset,
                    "gaps": [list(r) for r in s.gaps],
                }
                for s in self.sources
            ],
        }


def run(lake: Path, *, dry_run: bool = False) -> RebuildResult:
    """Write the manifests the files' lineage shows and `_manifest/` lacks (none when `dry_run`).
    Raises `Busy` when a writer or a job is running; `crypt.VaultKeyError` when vault files are
    encrypted and no (or the wrong) vault keys are configured."""
    started = time.monotonic()
    locked: list[str] = []
    with ExitStack() as held:
        if dry_run:
            _test_locks(lake)
        else:
            locked = lineage.sources(lake)
            held.enter_context(_locked(lake, locked))
        paths = {zone: zone_files(lake, zone) for zone in ZONES}
        every = [p for zone in ZONES for p in paths[zone]]
        found = lineage.recorded_ranges(parallel(lineage.read_lineage, every))
        if not dry_run:  # sources the files name whose folder was gone: locked before writing
            held.enter_context(_locked(lake, sorted(set(found) - set(locked)), jobs=False))
        before = {s: lineage.merge_ranges(lineage.held_ranges(lake, s)) for s in found}
        missing = lineage.missing_ranges(lake, found)
        if not dry_run:
            lineage.write_ranges(lake, missing)
        result = RebuildResult(
            dry_run,
            {zone: len(paths[zone]) for zone in ZONES},
            [_source(s, before[s], missing.get(s, [])) for s in sorted(found)],
        )
    if not dry_run:
        audit.record(
            lake,
            job=JOB,
            params={},
            counts={"sources": len(result.sources), "ranges_written": result.ranges_written},
            files=[],
            duration_s=time.monotonic() - started,
            outcome="ok",
        )
    return result


def _source(source: str, before: list[Range], written: list[Range]) -> SourceResult:
    after = lineage.merge_ranges([*before, *written])
    next_offset = after[-1][1] + 1 if after else 0
    gaps = [(a[1] + 1, b[0] - 1) for a, b in itertools.pairwise(after)]
    if after and after[0][0] > 0:
        gaps.insert(0, (0, after[0][0] - 1))
    return SourceResult(source, before, written, next_offset, gaps)


@contextmanager
def _locked(lake: Path, sources: list[str], *, jobs: bool = True) -> Iterator[None]:
    """Hold the jobs' lock (when `jobs`) and the writer lock of every source in `sources`."""
    with ExitStack() as stack:
        if jobs:
            try:
                stack.enter_context(job_lock(lake))
            except JobBusy:
                raise Busy("another callpipe job is running on this lake") from None
        for source in sources:
            try:
                fd = claim(lake, source)
            except SourceBusy:
                raise Busy(f"{source}: a worker or ingest is writing this source; stop it first") from None
            stack.callback(os.close, fd)
        yield


def _test_locks(lake: Path) -> None:
    """Raise `Busy` if a job or a writer holds its lock; takes nothing for longer than the test."""
    import fcntl

    lock = jobs_dir(lake) / ".lock"
    if lock.exists():
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy("another callpipe job is running on this lake") from None
        finally:
            os.close(fd)
    for source in lineage.sources(lake):
        if is_busy(lake, source):
            raise Busy(f"{source}: a worker or ingest is writing this source; stop it first")
