"""`callpipe jobs export --out`: it never writes into the lake, never replaces what it should not,
never leaves a temp file holding the subject's data behind, and says why in one line."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from jobs import audit, export
from pipeline import codec
from pipeline.carrier import generate
from pipeline.cli import main
from tests.support.ops_lake import keep_all_policy, make_key

START = 1_767_225_600_000
TRAFFIC = generate.generate_traffic(7, 60, START, accounts=6)
SUBJECT = TRAFFIC.calls[0]["account_id"]


@pytest.fixture(scope="module")
def lake_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A small real lake (ingested) and the environment naming it and its key."""
    folder = tmp_path_factory.mktemp("export")
    key_file, _key = make_key(folder)
    env = {"CALLPIPE_LAKE": str(folder / "lake"), "CALLPIPE_KEY_FILE": str(key_file)}
    calls = folder / "calls.jsonl"
    calls.write_bytes(b"\n".join(codec.to_json(c, "CallEvent") for c in TRAFFIC.calls))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        mp.setenv("CALLPIPE_POLICY", str(keep_all_policy(folder)))  # START is long past
        assert main(["ingest", str(calls)]) == 0
    yield folder / "lake", env


@pytest.fixture
def lake(lake_env: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, value in lake_env[1].items():
        monkeypatch.setenv(name, value)
    return lake_env[0]


def _export(out: Path, *extra: str) -> int:
    return main(["jobs", "export", "--account", SUBJECT, "--out", str(out), *extra])


def _temps(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*.tmp")]


def _snapshot(lake: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in lake.rglob("*.parquet")}


def _refused(capsys: pytest.CaptureFixture[str], why: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("callpipe: error: --out ") and why in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and SUBJECT not in err


def test_refuses_a_lake_file_and_leaves_it_whole(lake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(lake)
    vault_file = min(p for p in before if "/vault/" in str(p))
    assert _export(vault_file) == 2
    _refused(capsys, "inside the lake")
    assert _snapshot(lake) == before
    assert _temps(lake) == []
    assert _export(vault_file, "--force") == 2  # --force does not open the lake either
    _refused(capsys, "inside the lake")
    assert _export(lake / "new.json") == 2
    _refused(capsys, "inside the lake")
    assert not (lake / "new.json").exists()


def test_refuses_the_lake_through_a_symlinked_folder(
    lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "link").symlink_to(lake / "vault", target_is_directory=True)
    assert _export(tmp_path / "link" / "x.json", "--force") == 2
    _refused(capsys, "inside the lake")
    assert not (lake / "vault" / "x.json").exists() and _temps(lake, tmp_path) == []


def test_refuses_an_existing_file_without_force(
    lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export.json"
    out.write_bytes(b"someone else's file")
    assert _export(out) == 2
    _refused(capsys, "already exists; pass --force")
    assert out.read_bytes() == b"someone else's file"
    assert _temps(tmp_path) == []


def test_refuses_a_directory_and_leaves_no_temp(
    lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "folder"
    out.mkdir()
    (out / "keep.txt").write_bytes(b"kept")
    for extra in ((), ("--force",)):
        assert _export(out, *extra) == 2
        _refused(capsys, "is a directory")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert _temps(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_refuses_a_symlink_even_with_force(
    lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "target.txt"
    target.write_bytes(b"target")
    out = tmp_path / "export.json"
    out.symlink_to(target)
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere")
    for link in (out, dangling):
        for extra in ((), ("--force",)):
            assert _export(link, *extra) == 2
            _refused(capsys, "symbolic link")
    assert out.is_symlink() and target.read_bytes() == b"target"
    assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()
    assert _temps(tmp_path) == []


def test_writes_a_new_file_and_force_replaces_an_ordinary_one(
    lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "sub" / "new.json"
    assert _export(new) == 0
    doc = orjson.loads(new.read_bytes())
    assert doc["subject"]["account_id"] == SUBJECT and doc["vault"]
    assert os.stat(new).st_mode & 0o777 == 0o600
    last = audit.read(lake)[-1]  # the file handed over, by checksum; not its path (it may name the person)
    assert last["job"] == "export" and str(new) not in orjson.dumps(last).decode()
    assert last["files"] == [
        {
            "path": export.OUT_OUTSIDE_LAKE,
            "sha256": hashlib.sha256(new.read_bytes()).hexdigest(),
            "action": "added",
            "bytes": new.stat().st_size,
        }
    ]
    old = tmp_path / "old.json"
    old.write_bytes(b"stale")
    assert _export(old, "--force") == 0
    assert orjson.loads(old.read_bytes())["vault"] == doc["vault"]
    assert os.stat(old).st_mode & 0o777 == 0o600
    assert _temps(tmp_path) == []
    capsys.readouterr()
