"""`callpipe demo --lake`: the demo empties only a lake it made (or an empty folder), never a
real lake, its audit trail, or a checkout named by mistake; it refuses before it starts anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.demo import DEMO_MARK, DemoRefused, check_lake
from pipeline.cli import main


def test_absent_empty_and_demo_made_lakes_are_taken(tmp_path: Path) -> None:
    check_lake(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_lake(tmp_path / "empty")
    made = tmp_path / "made"
    (made / "vault").mkdir(parents=True)
    (made / DEMO_MARK).write_text("x")
    check_lake(made)


@pytest.mark.parametrize("kind", ["lake", "checkout", "file", "symlink"])
def test_a_folder_the_demo_did_not_make_is_refused(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "target"
    if kind == "lake":
        (target / "_audit").mkdir(parents=True)
        (target / "_audit" / "2026-11.jsonl").write_text("{}\n")
    elif kind == "checkout":
        (target / ".git").mkdir(parents=True)
    elif kind == "file":
        target.write_text("notes")
    else:
        (tmp_path / "real").mkdir()
        target.symlink_to(tmp_path / "real")
    with pytest.raises(DemoRefused):
        check_lake(target)


def test_the_command_refuses_before_it_starts_anything_and_leaves_the_folder_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = tmp_path / "lake"
    (lake / "_audit").mkdir(parents=True)
    (lake / "_audit" / "2026-11.jsonl").write_text("kept\n")
    (lake / "notes.txt").write_text("kept\n")
    monkeypatch.setenv("CALLPIPE_HOME", str(tmp_path / "home"))
    assert main(["demo", "--lake", str(lake), "--events", "200"]) == 2
    assert "holds files the demo did not write" in capsys.readouterr().err
    assert (lake / "_audit" / "2026-11.jsonl").read_text() == "kept\n" and (lake / "notes.txt").exists()
    assert not (tmp_path / "home").exists()  # no broker, no keys: nothing was started
