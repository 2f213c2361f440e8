"""Several sources landed as one flush: one file per zone x dt x bucket holding the rows of every
source of the group, committed for all of them at one instant. `callpipe ingest` lands many input
files (each its own source, see `sinks.lake.file_source`) and months of days this way, so a
backfill writes a few large files per partition instead of one small file per input file, day,
bucket and flush.

The per-source manifests stay the source of truth (`sinks.lineage`), but writing several of them
is not atomic, so a group commits through a record of its own, `<lake>/_groups/<group>.json`:
  1. the intent `<group>.intent.json` (written durably): members (source, first, last, and the
     files holding their rows) and the group's files;
  2. every file as a temp beside its final name, written in parallel without fsync, then one
     `syncfs` of the lake's file system (or an fsync of each temp and folder where there is no
     syncfs): the temps are durable;
  3. the intent renamed to `<group>.json`, the folder fsynced: from this instant every member's
     range is committed (if any member's range was committed meanwhile, the temps and the intent
     are removed instead and `RangeConflict` is raised);
  4. each member's manifest written (`_manifest/<source>/<first>-<last>.json`, as a single-source
     flush writes it), every temp renamed to its final name, one more sync;
  5. the record deleted.

A writer holds the lock of every member source (`sinks.lake.claim`) for the whole flush. So a
process that holds the lock of any member knows the group's writer is gone, and `recover_groups`
(sinks.group_record), run by `sinks.lake.recover` before anything else, may finish the group (a
committed record: steps 4 and 5 again, idempotent) or undo it (an intent: its temps and the intent
deleted; every member's range will be consumed again). A kill -9 at any moment thus leaves the
lake in its old or its new state for every member at once, as readers see it (they read only
final names).

Group files are named `<first member>-o<first>-o<last>-x<members>-<zone>.parquet`; their lineage
metadata lists the ranges of every member of the group.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from sinks import files, lineage
from sinks.group_record import (
    COMMITTED_SUFFIX,
    GROUPS_DIR_MODE,
    INTENT_SUFFIX,
    RECORD_MODE,
    Hook,
    complete,
    group_file_name,
    group_name,
    groups_dir,
    record_bytes,
)
from sinks.lake import WRITE_THREADS, Flushed, LakeWriter, RangeConflict, zone_parts
from sinks.layout import ANALYTICS, DIR_MODE, VAULT, partition_dir
from sinks.lineage import Manifest, ManifestFile

MEMBER_COLUMN = "__member"


def _with_member(table: pa.Table, member: int) -> pa.Table:
    return table.append_column(MEMBER_COLUMN, pa.array([member] * table.num_rows, pa.int32()))


def land_together(writers: Sequence[LakeWriter], *, hook: Hook | None = None) -> list[Flushed]:
    """Land the staged rows of several `sinks.lake.LakeWriter`s (one per source, all open in this
    process, all on one lake) as one group flush; returns a `Flushed` per source that had a range.
    Any failure marks every writer broken (open new ones: they recover)."""
    hook = hook or (lambda _step: None)
    for writer in writers:
        writer.stage()
    staged = [s for s in (w.staged() for w in writers) if s is not None]
    if not staged:
        return []
    lake: Path = writers[0].lake
    try:
        parts = zone_parts(
            pa.concat_tables([_with_member(s.vault, i) for i, s in enumerate(staged)]),
            pa.concat_arrays([s.buckets for s in staged]),
            pa.concat_tables([_with_member(s.analytics, i) for i, s in enumerate(staged)]),
            writers[0].buckets,
        )
        lead = staged[0]
        group = group_name(lead.source, lead.first, lead.last, len(staged))
        metadata = lineage.lineage_metadata({s.source: [(s.first, s.last)] for s in staged})
        entries: list[list[ManifestFile]] = [[] for _ in staged]
        jobs: list[tuple[pa.Table, Path, str]] = []
        folders: set[Path] = set()
        for zone, part in parts:
            folder = partition_dir(lake, zone, part.dt, part.bucket)
            folders |= files.ensure_dir(lake, folder, DIR_MODE[zone])
            final = folder / group_file_name(group, zone)
            path = str(final.relative_to(lake))
            counts = pc.value_counts(part.table[MEMBER_COLUMN]).to_pylist()
            for entry in counts:
                entries[entry["values"]].append(ManifestFile(zone, path, entry["counts"]))
            table = files.table_metadata(part.table.drop_columns([MEMBER_COLUMN]), metadata)
            jobs.append((table, final, zone))
        members = [Manifest(s.source, s.first, s.last, tuple(entries[i])) for i, s in enumerate(staged)]
        paths = [str(final.relative_to(lake)) for _t, final, _z in jobs]
        records = groups_dir(lake)
        files.ensure_dir(lake, records, GROUPS_DIR_MODE)
        intent = records / f"{group}{INTENT_SUFFIX}"
        files.write_bytes(
            record_bytes(group, members, paths), intent, mode=RECORD_MODE, root=lake, dir_mode=GROUPS_DIR_MODE
        )
        hook("intent_written")
        temps: list[Path] = []
        with ThreadPoolExecutor(WRITE_THREADS) as pool:
            for temp in pool.map(lambda job: files.write_temp_parquet(*job, sync=False), jobs):
                temps.append(temp)
                hook("temp_written")
        files.sync_all(lake, temps, folders | {final.parent for _t, final, _z in jobs})
        hook("temps_durable")
        for s in staged:
            if any(a <= s.last and s.first <= b for a, b in lineage.held_ranges(lake, s.source)):
                files.remove_durably(temps)
                files.remove_durably([intent])
                raise RangeConflict(
                    f"{s.source}: offsets {s.first}..{s.last} were committed by another writer"
                )
        committed = records / f"{group}{COMMITTED_SUFFIX}"
        os.replace(intent, committed)
        files.fsync_dir(records)
        hook("committed")
        complete(lake, committed, members, paths, hook)
    except BaseException:
        for writer in writers:
            writer.broken()
        raise
    by_source = {w.source: w for w in writers}
    out = []
    for s, manifest in zip(staged, members, strict=True):
        by_source[s.source].landed(s.last)
        rows = {VAULT: 0, ANALYTICS: 0}
        for f in manifest.files:
            rows[f.zone] += f.rows
        out.append(Flushed(s.source, s.first, s.last, tuple(lake / f.path for f in manifest.files), rows))
    return out
