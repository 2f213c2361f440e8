"""`callpipe jobs rebuild-manifests` on a lake the real writer made, its `_manifest/` deleted: the
manifests come back with the flushes' own ranges, a writer resumes after them and lands nothing
twice; a dry run writes nothing; a running writer or missing vault keys stop it with one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from pipeline.cli import main
from pipeline.settings import Settings
from sinks import lineage
from sinks.lake import LakeWriter
from sinks.layout import ANALYTICS, VAULT
from sinks.read import read_zone
from tests.support.sink_rows import events
from tests.unit.test_lake_writer import feed

SOURCE = "calls.raw-p003"
OTHER = "calls.raw-p004"
SETTINGS = Settings(buckets=2, flush_rows=30, flush_seconds=1e9)
ROOT = Path(__file__).resolve().parents[2]


def _feed(lake: Path, source: str, n: int, *, start: int | None = None, empty_tail: int = 0) -> LakeWriter:
    """Land `n` events of `source` like the worker (flushing when due), then `empty_tail` more
    offsets that yield no row (all dead-lettered) as one last range."""
    writer = feed(lake, events(n, accounts=6, days=2), start=start, batch=9, settings=SETTINGS, source=source)
    if empty_tail:
        writer.add(through=n - 1 + empty_tail, now=0.0)
        writer.flush()
    writer.close()
    return writer


def _manifest_names(lake: Path) -> dict[str, list[str]]:
    root = lake / lineage.MANIFEST_DIR
    return {
        d.name: sorted(p.name for p in d.iterdir() if lineage.MANIFEST_RE.match(p.name))
        for d in sorted(root.iterdir())
    }


@pytest.fixture
def lost(lake: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, list[str]]]:
    """A lake of two sources (the second ending with a range that landed no row), its manifests
    as the writer left them, then `_manifest/` deleted."""
    _feed(lake, SOURCE, 95)
    _feed(lake, OTHER, 40, empty_tail=5)
    before = _manifest_names(lake)
    assert len(before[SOURCE]) > 2 and len(before[OTHER]) > 1
    shutil.rmtree(lake / lineage.MANIFEST_DIR)
    monkeypatch.setenv("CALLPIPE_LAKE", str(lake))
    return lake, before


def test_lost_manifests_come_back_with_their_ranges_and_a_writer_resumes_after_them(
    lost: tuple[Path, dict[str, list[str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    lake, before = lost
    rows = {zone: read_zone(lake, zone).num_rows for zone in (VAULT, ANALYTICS)}
    assert main(["jobs", "rebuild-manifests"]) == 0
    out = capsys.readouterr().out
    assert f"{SOURCE}: wrote 0..17" in out and "resumes at 95" in out
    assert f"{OTHER}: wrote" in out and "resumes at 40" in out  # 40..44 landed no row: unseen
    after = _manifest_names(lake)
    assert after[SOURCE] == before[SOURCE]
    assert after[OTHER] == before[OTHER][:-1]  # the range without rows is in no file
    for name in after[SOURCE]:
        assert (lake / lineage.MANIFEST_DIR / SOURCE / name).stat().st_mode & 0o777 == 0o600

    assert main(["jobs", "rebuild-manifests", "--json"]) == 0  # again: nothing left to write
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["ranges_written"] == 0 and _manifest_names(lake) == after

    with LakeWriter.open(lake, SOURCE, SETTINGS) as writer:
        assert writer.next_offset == 95
    replay = _feed(lake, SOURCE, 95, start=0)  # a worker restarted from offset 0
    assert replay.replayed_rows == 2 * 95
    assert {zone: read_zone(lake, zone).num_rows for zone in (VAULT, ANALYTICS)} == rows


def test_dry_run_prints_the_ranges_and_writes_nothing(
    lost: tuple[Path, dict[str, list[str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    lake, before = lost
    assert main(["jobs", "rebuild-manifests", "--dry-run", "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["dry_run"] and doc["ranges_written"] == len(before[SOURCE]) + len(before[OTHER]) - 1
    assert not (lake / lineage.MANIFEST_DIR).exists()
    assert main(["jobs", "rebuild-manifests", "--dry-run"]) == 0
    assert "would write 0..17" in capsys.readouterr().out
    assert not (lake / lineage.MANIFEST_DIR).exists()


HOLDER = """
import sys
from pathlib import Path
from pipeline.settings import Settings
from sinks.lake import LakeWriter
writer = LakeWriter.open(Path(sys.argv[1]), sys.argv[2], Settings())
print("open", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_running_writer_makes_it_refuse(
    lost: tuple[Path, dict[str, list[str]]], capsys: pytest.CaptureFixture[str], dry_run: bool
) -> None:
    """A worker started after the delete holds its source's lock (in another process: a POSIX lock
    is the process's)."""
    lake, _before = lost
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lake), OTHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        assert main(["jobs", "rebuild-manifests", *(["--dry-run"] if dry_run else [])]) == 3
        err = capsys.readouterr().err
        assert err.startswith("callpipe: error: ") and err.count("\n") == 1
        assert OTHER in err and "stop it first" in err
        assert not (lake / lineage.MANIFEST_DIR / SOURCE).exists()
        assert [p.name for p in (lake / lineage.MANIFEST_DIR / OTHER).iterdir()] == [".writer.lock"]
    finally:
        holder.kill()
        holder.wait()
    assert main(["jobs", "rebuild-manifests"]) == 0  # the writer gone, it runs


def test_an_encrypted_vault_without_its_keys_stops_with_one_line(
    lost: tuple[Path, dict[str, list[str]]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lake, _before = lost
    monkeypatch.setenv("CALLPIPE_VAULT_ENCRYPTION", "off")  # no keys configured: cannot open the vault
    assert main(["jobs", "rebuild-manifests"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("callpipe: error: vault files are encrypted") and err.count("\n") == 1
    assert "CALLPIPE_VAULT_KEY_FILE" in err and "Traceback" not in err
    assert not list((lake / lineage.MANIFEST_DIR).glob("*/*.json"))

    monkeypatch.delenv("CALLPIPE_VAULT_ENCRYPTION")
    monkeypatch.setenv("CALLPIPE_VAULT_KEY_FILE", str(lake.parent / "nowhere.keys"))
    assert main(["jobs", "rebuild-manifests", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "nowhere.keys: cannot read the vault key file" in err and err.count("\n") == 1


def test_the_command_runs_as_a_process(lost: tuple[Path, dict[str, list[str]]]) -> None:
    lake, before = lost
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLPIPE_")}
    env |= {
        "CALLPIPE_LAKE": str(lake),
        "CALLPIPE_VAULT_KEY_FILE": os.environ["CALLPIPE_VAULT_KEY_FILE"],
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "jobs", "rebuild-manifests", "--json"],
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    doc = orjson.loads(done.stdout)
    by_source = {s["source"]: s for s in doc["sources"]}
    assert by_source[SOURCE]["next_offset"] == 95 and by_source[OTHER]["next_offset"] == 40
    assert _manifest_names(lake)[SOURCE] == before[SOURCE]
