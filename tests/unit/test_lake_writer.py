"""sinks.lake and friends on real files: atomic landing, modes, recovery, exactly once across
crashes at every step of a flush, lineage that survives file replacement, bloom filters that
DuckDB uses. Every lake is read back with both pyarrow and DuckDB."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.settings import Settings
from schemas import topics
from sinks import crypt, files, lineage
from sinks.arrow import analytics_table
from sinks.lake import (
    LakeWriter,
    RangeConflict,
    SourceBusy,
    WriterBroken,
    file_name,
    file_source,
    held,
    recover,
    source_name,
)
from sinks.layout import ANALYTICS, VAULT, ZONES, bucket_of, partition_dir, table_dir
from sinks.read import duckdb_view, read_zone, zone_files
from tests.support.sink_rows import T0, Event, event, events

SOURCE = "calls.raw-p003"
SETTINGS = Settings(buckets=4, flush_rows=40, flush_seconds=1e9)
SMALL = Settings(buckets=1, flush_rows=16, flush_seconds=1e9)  # few files per flush: crash tests
HERE = Path(__file__).resolve().parent


class Crash(Exception):
    """Stands in for the process dying at a step of a flush."""


def feed(
    lake: Path,
    evs: Sequence[Event],
    *,
    hook: Callable[[str], None] | None = None,
    start: int | None = None,
    batch: int = 7,
    settings: Settings = SETTINGS,
    source: str = SOURCE,
) -> LakeWriter:
    """Consume `evs` like the worker does: from the lake's next offset (or `start`), in batches,
    flushing when due and at the end."""
    writer = LakeWriter.open(lake, source, settings, hook=hook)
    position = writer.next_offset if start is None else start
    for k in range(position, len(evs), batch):
        chunk = evs[k : k + batch]
        writer.add(
            vault=[e.vault for e in chunk],
            analytics=[e.analytics for e in chunk],
            vault_tokens=[e.token for e in chunk],
            through=chunk[-1].offset,
            now=0.0,
        )
        if writer.due(0.0):
            writer.flush()
    writer.flush()
    return writer


def duck_ids(lake: Path, zone: str) -> list[str]:
    con = duckdb.connect()
    duckdb_view(con, lake, zone)
    return [r[0] for r in con.execute(f"SELECT event_id FROM {zone}").fetchall()]


def assert_exactly_once(lake: Path, evs: Sequence[Event]) -> None:
    expected = sorted(e.vault["event_id"] for e in evs)
    for zone in ZONES:
        arrow_ids = read_zone(lake, zone, columns=["event_id"]).column("event_id").to_pylist()
        for ids in (arrow_ids, duck_ids(lake, zone)):
            twice = [eid for eid, n in Counter(ids).items() if n > 1]
            assert not twice, f"{zone}: {len(twice)} event ids twice"
            assert sorted(ids) == expected
    leftovers = [p for p in lake.rglob("*") if p.name.endswith(files.TEMP_SUFFIX)]
    assert leftovers == []


def test_flush_lands_every_row_in_its_partition_readable_by_pyarrow_and_duckdb(lake: Path) -> None:
    evs = events(100, accounts=30, days=3)
    writer = feed(lake, evs)
    assert writer.next_offset == 100
    assert_exactly_once(lake, evs)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    duckdb_view(con, lake, ANALYTICS)
    misplaced = con.execute("SELECT count(*) FROM analytics WHERE dt <> CAST(started_at AS DATE)").fetchone()
    assert misplaced == (0,)
    for path in zone_files(lake, ANALYTICS):
        bucket = int(path.parent.name.removeprefix("bucket="))
        tokens = set(pq.read_table(path, columns=["account_token"]).column(0).to_pylist())
        assert {bucket_of(t, SETTINGS.buckets) for t in tokens} == {bucket}


def test_file_names_hold_source_range_and_zone(lake: Path) -> None:
    evs = events(10)
    writer = LakeWriter.open(lake, SOURCE, SETTINGS)
    writer.add(
        vault=[e.vault for e in evs],
        analytics=[e.analytics for e in evs],
        vault_tokens=[e.token for e in evs],
        through=9,
        now=0,
    )
    flushed = writer.flush()
    assert flushed is not None and (flushed.first, flushed.last) == (0, 9)
    assert flushed.rows == {VAULT: 10, ANALYTICS: 10}
    for path in flushed.files:
        zone = path.relative_to(lake).parts[0]
        assert (
            path.name
            == file_name(SOURCE, 0, 9, zone)
            == f"{SOURCE}-o000000000000-o000000000009-{zone}.parquet"
        )
    manifest = lineage.read_manifest(lake, SOURCE, 0, 9)
    assert sorted(lake / f.path for f in manifest.files) == sorted(flushed.files)
    assert sum(f.rows for f in manifest.files) == 20


def test_vault_is_private_and_analytics_readable(lake: Path) -> None:
    feed(lake, events(30))
    for zone, dir_mode, file_mode in ((VAULT, 0o700, 0o600), (ANALYTICS, 0o755, 0o644)):
        folders = [table_dir(lake, zone).parent, table_dir(lake, zone)]
        folders += [p for p in table_dir(lake, zone).rglob("*") if p.is_dir()]
        assert {stat.S_IMODE(p.stat().st_mode) for p in folders} == {dir_mode}
        assert {stat.S_IMODE(p.stat().st_mode) for p in zone_files(lake, zone)} == {file_mode}
    manifests = lake / lineage.MANIFEST_DIR
    assert stat.S_IMODE(manifests.stat().st_mode) == 0o700


def test_files_carry_zstd_statistics_bloom_filter_sort_order_and_lineage(lake: Path) -> None:
    feed(lake, events(60))
    for zone, account in ((VAULT, "account_id"), (ANALYTICS, "account_token")):
        for path in zone_files(lake, zone):
            meta = crypt.parquet_file(path).metadata  # the vault's footer is encrypted
            index = meta.schema.names.index(account)
            column = meta.row_group(0).column(index)
            assert column.compression == "ZSTD"
            assert column.is_stats_set
            # pyarrow writes no Bloom filter into an encrypted file (the vault, sinks/files.py)
            assert (column.to_dict()["bloom_filter_offset"] is None) == (zone == VAULT)
            assert [s.column_index for s in meta.row_group(0).sorting_columns][:1] == [index]
            ranges = lineage.read_lineage(path)
            assert list(ranges) == [SOURCE]
            [(first, last)] = ranges[SOURCE]
            assert path.name == file_name(SOURCE, first, last, zone)


def test_duckdb_skips_row_groups_by_bloom_filter(lake: Path) -> None:
    """Many accounts in one partition, in many files: an account that is in none of them (but
    inside every file's min/max) scans nothing; one in a single file scans one row group.
    DuckDB's own Parquet reader does this, so on a plaintext vault (CALLPIPE_VAULT_ENCRYPTION=off):
    an encrypted vault is scanned through pyarrow, which prunes by statistics only."""
    with crypt.configured(None):
        _bloom_filter_skips(lake)


def _bloom_filter_skips(lake: Path) -> None:
    settings = Settings(buckets=1, flush_rows=200, flush_seconds=1e9)
    writer = LakeWriter.open(lake, SOURCE, settings)
    evs = [event(i, account=f"acct-{(i * 7919) % 5000:05d}", started_at=T0 + i) for i in range(2000)]
    for k in range(0, 2000, 200):
        chunk = evs[k : k + 200]
        writer.add(
            vault=[e.vault for e in chunk],
            analytics=[],
            vault_tokens=[e.token for e in chunk],
            through=chunk[-1].offset,
            now=0,
        )
        writer.flush()
    assert len(zone_files(lake, VAULT)) == 10
    present = Counter(e.vault["account_id"] for e in evs)
    once = next(a for a, n in sorted(present.items()) if n == 1 and "acct-01000" < a < "acct-04000")
    absent = next(f"acct-{i:05d}" for i in range(2500, 5000) if f"acct-{i:05d}" not in present)

    def scan(account: str) -> tuple[int, int, int]:
        con = duckdb.connect()
        duckdb_view(con, lake, VAULT)
        con.execute("PRAGMA enable_profiling = 'json'")
        con.execute(f"PRAGMA profiling_output = '{lake.parent / 'profile.json'}'")
        (count,) = con.execute("SELECT count(*) FROM vault WHERE account_id = ?", [account]).fetchone() or (
            0,
        )
        con.execute("PRAGMA disable_profiling")
        profile = json.loads((lake.parent / "profile.json").read_text())
        node = profile["operator"][0]
        while node.get("type") != "TABLE_SCAN":
            node = node["children"][0]
        return count, node["row_groups_scanned"], node["total_row_groups_to_scan"]

    assert scan(absent) == (0, 0, 10)
    assert scan(once) == (1, 1, 10)


def test_recover_tells_where_the_lake_ends(lake: Path) -> None:
    assert recover(lake, SOURCE) == 0
    feed(lake, events(50))
    assert recover(lake, SOURCE) == 50
    assert held(lake) == {SOURCE: 50}
    ranges = lineage.held_ranges(lake, SOURCE)
    assert lineage.merge_ranges(ranges) == [(0, 49)]


def test_a_restarted_writer_continues_without_overlap(lake: Path) -> None:
    evs = events(90)
    feed(lake, evs[:50])
    writer = feed(lake, evs)
    assert writer.next_offset == 90
    assert_exactly_once(lake, evs)


def test_replay_from_an_older_committed_offset_lands_nothing_twice(lake: Path) -> None:
    evs = events(90)
    feed(lake, evs[:60])
    writer = feed(lake, evs, start=0)  # the consumer group's offset lagged behind the lake
    assert writer.replayed_rows == 2 * 60
    assert_exactly_once(lake, evs)


def test_rows_past_the_consumed_offset_wait_for_it(lake: Path) -> None:
    """The chain may emit a later call before an earlier one it still holds (event-time order)."""
    evs = events(6)
    writer = LakeWriter.open(lake, SOURCE, SETTINGS)
    first, rest = [evs[0], evs[3], evs[4]], [evs[1], evs[2], evs[5]]  # 1 and 2 held back by the chain
    writer.add(vault=[e.vault for e in first], vault_tokens=[e.token for e in first], through=0, now=0)
    flushed = writer.flush()
    assert flushed is not None and flushed.rows[VAULT] == 1 and writer.pending_rows == 2
    assert read_zone(lake, VAULT).column("event_id").to_pylist() == [evs[0].vault["event_id"]]
    writer.add(vault=[e.vault for e in rest], vault_tokens=[e.token for e in rest], through=5, now=1)
    writer.flush()
    ids = read_zone(lake, VAULT).column("event_id").to_pylist()
    assert sorted(ids) == sorted(e.vault["event_id"] for e in evs)
    assert lineage.held_ranges(lake, SOURCE) == [(0, 0), (1, 5)]


@pytest.mark.parametrize(
    ("rows", "through", "age", "due"),
    [
        (0, None, 100.0, False),  # nothing consumed
        (0, 4, 5.0, False),  # consumed, young
        (0, 4, 10.0, True),  # consumed, old: commit the range even without rows
        (39, 38, 1.0, False),
        (40, 39, 1.0, True),  # flush_rows reached
        (40, None, 100.0, False),  # rows, but no offset handed over yet
    ],
)
def test_due_by_rows_or_age(lake: Path, rows: int, through: int | None, age: float, due: bool) -> None:
    writer = LakeWriter.open(lake, SOURCE, Settings(flush_rows=40, flush_seconds=10.0))
    evs = events(rows)
    writer.add(vault=[e.vault for e in evs], vault_tokens=[e.token for e in evs], through=through, now=100.0)
    assert writer.due(100.0 + age) is due


def test_a_consumed_range_without_rows_is_committed(lake: Path) -> None:
    writer = LakeWriter.open(lake, SOURCE, SETTINGS)
    writer.add(through=41, now=0)
    flushed = writer.flush()
    assert flushed is not None and flushed.files == ()
    assert recover(lake, SOURCE) == 42
    assert writer.flush() is None


def test_two_writers_on_one_source_never_both_land_a_range(lake: Path) -> None:
    """A zombie worker that lost its partition, or one file ingested twice at once."""
    evs = events(30)
    one = LakeWriter.open(lake, SOURCE, SETTINGS)
    two = LakeWriter.open(lake, SOURCE, SETTINGS)
    for writer, upto in ((one, 20), (two, 30)):
        chunk = evs[:upto]
        writer.add(
            vault=[e.vault for e in chunk],
            analytics=[e.analytics for e in chunk],
            vault_tokens=[e.token for e in chunk],
            through=upto - 1,
            now=0,
        )
    one.flush()
    with pytest.raises(RangeConflict):
        two.flush()
    with pytest.raises(WriterBroken):
        two.flush()
    assert_exactly_once(lake, evs[:20])
    feed(lake, evs)
    assert_exactly_once(lake, evs)


HOLDER = """
import sys, time
from pathlib import Path
from pipeline.settings import Settings
from sinks.lake import LakeWriter
writer = LakeWriter.open(Path(sys.argv[1]), sys.argv[2], Settings())
print("open", flush=True)
sys.stdin.read()
"""


def test_a_source_open_in_another_process_is_busy_until_that_process_ends(lake: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lake), SOURCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        with pytest.raises(SourceBusy):
            LakeWriter.open(lake, SOURCE, SETTINGS)
        LakeWriter.open(lake, "calls.raw-p004", SETTINGS).close()  # other sources are free
    finally:
        holder.kill()
        holder.wait()
    with LakeWriter.open(lake, SOURCE, SETTINGS) as writer:
        assert writer.next_offset == 0
    with pytest.raises(WriterBroken):
        writer.flush()


def test_vault_rows_need_their_account_tokens(lake: Path) -> None:
    writer = LakeWriter.open(lake, SOURCE, SETTINGS)
    with pytest.raises(ValueError, match="token"):
        writer.add(vault=[events(1)[0].vault], now=0)


def test_a_failed_flush_breaks_the_writer(lake: Path) -> None:
    def fail(step: str) -> None:
        raise Crash(step)

    writer = LakeWriter.open(lake, SOURCE, SETTINGS, hook=fail)
    evs = events(3)
    writer.add(vault=[e.vault for e in evs], vault_tokens=[e.token for e in evs], through=2, now=0)
    with pytest.raises(Crash):
        writer.flush()
    with pytest.raises(WriterBroken):
        writer.flush()


def test_crash_at_every_step_then_replay_gives_each_event_exactly_once(tmp_path: Path) -> None:
    """Three flushes of four files each (2 zones x 2 days): a crash after every step of each."""
    evs = events(24, accounts=5, days=2)
    steps: list[str] = []
    feed(tmp_path / "dry", evs, hook=steps.append, settings=SMALL)
    assert {"temp_written", "temps_durable", "manifest_written", "renamed", "published"} <= set(steps)
    assert steps.count("published") == 2 and steps.count("renamed") == 8  # several files per range
    for at in range(len(steps)):
        for resume in ("lake", "zero"):
            lake = tmp_path / f"crash-{at}-{resume}"
            lake.mkdir()
            calls = 0

            def crash(step: str, at: int = at) -> None:
                nonlocal calls
                calls += 1
                if calls == at + 1:
                    raise Crash(step)

            with pytest.raises(Crash):
                feed(lake, evs, hook=crash, settings=SMALL)
            feed(lake, evs, start=0 if resume == "zero" else None, settings=SMALL)
            assert_exactly_once(lake, evs)


CHILD = """
import os, sys
from pathlib import Path
sys.path[:0] = [sys.argv[3], str(Path(sys.argv[3]).parents[1])]
from pipeline.settings import Settings
from sinks import crypt
from tests.support.sink_rows import events
crypt.configure(Settings.from_env().vault_crypto())  # as the CLI does
from test_lake_writer import SMALL, feed
target, lake = sys.argv[1], Path(sys.argv[2])
count = 0
def hook(step):
    global count
    if step == target:
        count += 1
        if count == 2:
            os._exit(137)
feed(lake, events(40, accounts=5, days=2), hook=hook, settings=SMALL)
"""


@pytest.mark.parametrize(
    "step", ["temp_written", "temps_durable", "manifest_written", "renamed", "published"]
)
def test_killed_process_recovers_exactly_once(lake: Path, step: str) -> None:
    """A real process exit (no unwinding, no finally) at the second occurrence of each step."""
    done = subprocess.run([sys.executable, "-c", CHILD, step, str(lake), str(HERE)], check=False, timeout=120)
    assert done.returncode == 137
    evs = events(40, accounts=5, days=2)
    feed(lake, evs, settings=SMALL)
    assert_exactly_once(lake, evs)


def test_recover_rolls_forward_committed_temps_and_drops_the_rest(lake: Path) -> None:
    evs = events(20)
    feed(lake, evs[:10])
    # A committed range whose renames did not happen, and an uncommitted one.
    committed = partition_dir(lake, VAULT, "2025-11-29", 1) / file_name(SOURCE, 10, 14, VAULT)
    orphan = partition_dir(lake, VAULT, "2025-11-29", 1) / file_name(SOURCE, 15, 19, VAULT)
    table = analytics_table([])  # any table will do for the file mechanics
    files.ensure_dir(lake, committed.parent, 0o700)
    files.write_temp_parquet(table, committed, ANALYTICS)
    files.write_temp_parquet(table, orphan, ANALYTICS)
    lineage.write_manifest(lake, lineage.Manifest(SOURCE, 10, 14, ()))
    (lineage.manifest_dir(lake, SOURCE) / ".000000000015-000000000019.json.tmp").write_text("{}")
    other = files.temp_path(committed.with_name(file_name("calls.raw-p003-o1", 10, 14, VAULT)))
    other.write_bytes(b"another source's temp is left alone")
    assert recover(lake, SOURCE) == 15
    assert committed.exists() and not files.temp_path(committed).exists()
    assert not files.temp_path(orphan).exists() and not orphan.exists()
    assert other.exists()
    assert not any(p.name.endswith(".tmp") for p in lineage.manifest_dir(lake, SOURCE).iterdir())


def test_ranges_survive_files_being_replaced_or_deleted(lake: Path) -> None:
    """Erasure may delete a file outright: the range stays held, so a replay does not bring the
    erased rows back. Compaction keeps the lineage in the new file's metadata."""
    evs = events(80, accounts=4, days=1)
    feed(lake, evs)
    by_folder = Counter(p.parent for p in zone_files(lake, ANALYTICS))
    folder = by_folder.most_common(1)[0][0]
    olds = [p for p in zone_files(lake, ANALYTICS) if p.parent == folder]
    assert len(olds) > 1  # several flushes' files, compacted into one
    before = sorted(read_zone(lake, ANALYTICS).column("event_id").to_pylist())
    merged = pa.concat_tables([pq.read_table(p).replace_schema_metadata(None) for p in olds])
    expected = lineage.combined_lineage(olds)
    compacted = files.write_parquet(
        lineage.carry_lineage(merged, olds), folder / "compacted-0.parquet", ANALYTICS, lake=lake
    )
    files.remove_durably(olds)
    assert lineage.read_lineage(compacted) == expected
    assert len(expected[SOURCE]) == 1 and expected[SOURCE][0][1] - expected[SOURCE][0][0] > 1
    assert sorted(read_zone(lake, ANALYTICS).column("event_id").to_pylist()) == before
    erased = zone_files(lake, VAULT)
    files.remove_durably(erased)
    assert recover(lake, SOURCE) == 80
    writer = feed(lake, evs, start=0)
    assert writer.replayed_rows == 160
    assert zone_files(lake, VAULT) == []


def test_lost_manifests_are_rebuilt_from_file_metadata(lake: Path) -> None:
    evs = events(70)
    feed(lake, evs)
    flushed = lineage.held_ranges(lake, SOURCE)
    assert len(flushed) > 1
    shutil.rmtree(lake / lineage.MANIFEST_DIR)
    assert recover(lake, SOURCE) == 0
    every = [p for zone in ZONES for p in zone_files(lake, zone)]
    # each flush's own range, as its files record it (its _stats/ record matches it again)
    assert lineage.rebuild_manifests(lake, every) == {SOURCE: flushed}
    assert lineage.rebuild_manifests(lake, every) == {}
    assert recover(lake, SOURCE) == 70
    feed(lake, evs, start=0)
    assert_exactly_once(lake, evs)


def test_lineage_metadata_written_by_duckdb_is_read_back(lake: Path) -> None:
    target = lake / "by-duckdb.parquet"
    text = lineage.lineage_json({SOURCE: [(5, 9), (0, 4)], "ingest-x-abc": [(0, 0)]})
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT 1 AS x) TO '{target}' (FORMAT parquet, KV_METADATA {{'callpipe.lineage': '{text}'}})"
    )
    assert lineage.read_lineage(target) == {SOURCE: [(0, 9)], "ingest-x-abc": [(0, 0)]}


def test_source_names(tmp_path: Path) -> None:
    assert source_name(topics.CALLS, 3) == "calls.raw-p003"
    one, two = tmp_path / "day 1.jsonl", tmp_path / "copy.jsonl"
    one.write_text('{"event_id": "a"}\n')
    two.write_text('{"event_id": "a"}\n')
    assert file_source(one) == file_source(one) and file_source(one).startswith("ingest-day_1.jsonl-")
    assert file_source(one).rsplit("-", 1)[1] == file_source(two).rsplit("-", 1)[1]
    for bad in ("", "../x", "a/b", ".hidden", "a b"):
        with pytest.raises(ValueError):
            lineage.check_source(bad)


def test_empty_zone_reads_as_empty(lake: Path) -> None:
    assert read_zone(lake, VAULT).num_rows == 0
    con = duckdb.connect()
    duckdb_view(con, lake, ANALYTICS, "a")
    assert con.execute("SELECT count(*) FROM a").fetchone() == (0,)
    assert "dt" in [d[0] for d in con.execute("SELECT * FROM a").description]


def test_manifest_round_trips() -> None:
    m = lineage.Manifest(SOURCE, 3, 7, (lineage.ManifestFile(VAULT, "vault/calls/x.parquet", 5),))
    assert lineage.Manifest.from_json(m.to_json()) == m


def test_ensure_dir_creates_only_missing_folders_with_mode_and_names_changed_parents(tmp_path: Path) -> None:
    (tmp_path / "vault").mkdir()
    bucket = tmp_path / "vault" / "calls" / "dt=2026-01-01" / "bucket=03"
    changed = files.ensure_dir(tmp_path, bucket, 0o700)
    assert changed == {tmp_path / "vault", bucket.parent.parent, bucket.parent}
    for folder in (bucket, bucket.parent, bucket.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert files.ensure_dir(tmp_path, bucket, 0o700) == set()  # nothing new: nothing to fsync
    sibling = bucket.parent / "bucket=04"
    assert files.ensure_dir(tmp_path, sibling, 0o700) == {bucket.parent}
    with pytest.raises(ValueError):
        files.ensure_dir(tmp_path / "vault", tmp_path / "elsewhere" / "x", 0o700)


@pytest.mark.parametrize("through", [-1, 0, 2, 5])
def test_tables_of_later_offsets_wait_and_the_rest_land_whole(lake: Path, through: int) -> None:
    """Rows the chain made tables of split at the handed-over offset like rows do: none, some,
    or all of them waiting (all landing at once is the usual flush, and takes no copy)."""
    from sinks.arrow import buckets_of, vault_table

    evs = events(6)
    writer = LakeWriter.open(lake, SOURCE, SETTINGS)
    vault = vault_table([e.vault for e in evs])
    analytics = analytics_table([e.analytics for e in evs])
    writer.add_tables(vault=vault, buckets=buckets_of([e.token for e in evs], 4), analytics=analytics, now=0)
    writer.add(through=through, now=0)
    flushed = writer.flush()
    landed = [e for e in evs if e.offset <= through]
    assert (flushed.rows if flushed else {VAULT: 0, ANALYTICS: 0}) == {
        VAULT: len(landed),
        ANALYTICS: len(landed),
    }
    assert sorted(duck_ids(lake, VAULT)) == sorted(e.vault["event_id"] for e in landed)
    assert writer.pending_rows == 2 * (len(evs) - len(landed))
    writer.add(through=5, now=1)
    writer.flush()
    assert_exactly_once(lake, evs)


def test_columns_unique_per_event_are_written_plain_the_others_with_a_dictionary(lake: Path) -> None:
    """Ids, times and offsets: a dictionary would repeat every value (sinks/files.py,
    PLAIN_COLUMNS); the rest keeps one in files of DICTIONARY_MIN_ROWS rows or more."""
    wide = Settings(buckets=4, flush_rows=5_000, flush_seconds=1e9)
    feed(lake, events(3_000, accounts=1, days=1), batch=500, settings=wide)
    checked = 0
    for zone in (VAULT, ANALYTICS):
        for path in zone_files(lake, zone):
            meta = crypt.parquet_file(path).metadata
            if meta.num_rows < files.DICTIONARY_MIN_ROWS:
                continue
            checked += 1
            group = meta.row_group(0)
            for i in range(group.num_columns):
                column = group.column(i)
                dictionary = column.dictionary_page_offset is not None
                plain = column.path_in_schema.split(".")[0] in files.PLAIN_COLUMNS
                if column.physical_type == "BOOLEAN":  # Parquet has no dictionary for booleans
                    continue
                assert dictionary != plain, (zone, column.path_in_schema)
    assert checked >= 2
