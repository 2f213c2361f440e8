"""Erasure covers the access exports in `<lake>/_outbox/` (jobs/outbox.py): a subject's export
answered before its erasure is deleted with it, other subjects' exports stay, the erase request's
ledger record counts what went, and a run killed between the lake and the outbox is finished by
the next. An export no request names is found through its manifest; what no subject can be tied
to is counted. Over a synthetic lake with `callpipe jobs requests`, as tests/lake/test_requests.py."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from jobs import audit, ledger, outbox, requests
from jobs.synth import SynthSpec, build
from pipeline import codec
from pipeline.policy import RequestDeadlines
from tests.lake.test_requests import AT, env_of, req, rows, run_requests
from tests.support.ops_lake import callpipe_cmd, make_key

pytestmark = pytest.mark.e2e

SUBJECT, OTHER, NO_EXPORT = (f"acct-{i:07d}" for i in (7, 11, 12))


class Crash(RuntimeError):
    """A kill between the lake's erasure and the outbox's."""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("erase-outbox")
    key_file, key = make_key(root)
    lake = root / "base"
    build(lake, key, SynthSpec(rows=6_000, days=6, buckets=2, workers=1, seed=5, restricted_share=0.0))
    return {"root": root, "lake": lake, "key_file": key_file, "key": key}


def copy(base: dict[str, Any], tmp_path: Path, name: str) -> Path:
    lake = tmp_path / name
    shutil.copytree(base["lake"], lake)
    return lake


def pass_over(base: dict[str, Any], lake: Path, tmp_path: Path, *records: dict[str, Any]) -> None:
    """One `callpipe jobs requests` pass with `records` as its request file."""
    path = tmp_path / f"requests-{len(list(tmp_path.glob('requests-*')))}.jsonl"
    path.write_bytes(b"\n".join(codec.to_json(r, "PrivacyRequest") for r in records) + b"\n")
    out = run_requests(env_of(base, lake), "--file", str(path))
    assert out.returncode == 0, out.stderr.decode()


def pass_at(base: dict[str, Any], lake: Path, now: datetime, *records: dict[str, Any]) -> None:
    """A pass run in this process at `now` (so a test can patch what erasure calls)."""
    requests.run(
        duckdb.connect(),
        lake,
        base["key"],
        buckets=2,
        deadlines=RequestDeadlines(),
        now=now,
        files=[requests.Batch(records=list(records), source="file")],
    )


def held(lake: Path) -> list[str]:
    folder = lake / "_outbox"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def touched(lake: Path, request: str) -> dict[str, Any]:
    done = ledger.requests(lake)[request]
    assert done.status == "fulfilled" and done.touched is not None, done
    return done.touched


def test_erasure_removes_the_subjects_access_export_and_keeps_the_others(
    base: dict[str, Any], tmp_path: Path
) -> None:
    lake = copy(base, tmp_path, "same-pass")
    pass_over(
        base,
        lake,
        tmp_path,
        req("r-other", "access", OTHER),
        req("r-access", "access", SUBJECT),  # answered first: older than the erase
        req("r-erase", "erase", SUBJECT, AT + 1),
        req("r-erase-none", "erase", NO_EXPORT, AT + 1),
        req("r-access-late", "access", SUBJECT, AT + 2),  # after the erase: refused, nothing written
    )
    assert held(lake) == ["access-r-other.json", "access-r-other.manifest.json"]
    other = orjson.loads((lake / "_outbox" / "access-r-other.json").read_bytes())
    assert other["subject"]["account_id"] == OTHER and other["counts"]["vault"] > 0
    assert touched(lake, "r-erase")["access_exports_removed"] == 1
    assert touched(lake, "r-erase")["rows_removed"]["vault"] > 0
    assert touched(lake, "r-erase-none")["access_exports_removed"] == 0
    assert touched(lake, "r-access")["outbox"] == "access-r-access.json"  # it was answered
    assert ledger.requests(lake)["r-access-late"].reason == "subject_erased"
    assert rows(lake, "vault", f"account_id = '{SUBJECT}'") == []
    erasures = [e for e in audit.read(lake) if e.get("job") == "erase"]
    assert [e["counts"]["access_exports_removed"] for e in erasures] == [1, 0]
    for path in [*(lake / "_requests").iterdir(), *(lake / "_audit").iterdir()]:
        assert SUBJECT.encode() not in path.read_bytes(), path.name  # counts and tokens only


def test_an_erasure_with_no_export_and_no_outbox_counts_zero(base: dict[str, Any], tmp_path: Path) -> None:
    lake = copy(base, tmp_path, "no-outbox")
    pass_over(base, lake, tmp_path, req("r-erase", "erase", SUBJECT))
    assert not (lake / "_outbox").exists()
    assert touched(lake, "r-erase")["access_exports_removed"] == 0


def test_an_erasure_killed_before_the_outbox_is_finished_by_the_rerun(
    base: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = copy(base, tmp_path, "killed")
    pass_over(base, lake, tmp_path, req("r-access", "access", SUBJECT), req("r-other", "access", OTHER))
    assert len(held(lake)) == 4

    def crash(*_args: Any, **_kwargs: Any) -> int:
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(outbox, "remove_access_exports", crash)
        with pytest.raises(Crash):
            pass_at(base, lake, datetime(2026, 11, 29, tzinfo=UTC), req("r-erase", "erase", SUBJECT, AT + 1))
    assert rows(lake, "vault", f"account_id = '{SUBJECT}'") == []  # the lake part was done
    assert "access-r-access.json" in held(lake)
    assert ledger.requests(lake)["r-erase"].status == "in_progress"

    pass_over(base, lake, tmp_path)  # the next pass (cron) finishes the open erasure
    assert held(lake) == ["access-r-other.json", "access-r-other.manifest.json"]
    assert touched(lake, "r-erase")["access_exports_removed"] == 1


def test_an_export_left_by_a_fulfilled_erasure_is_removed_by_the_next_pass(
    base: dict[str, Any], tmp_path: Path
) -> None:
    """A lake whose erasure ran before erasure covered the outbox: the export outlived it."""
    lake = copy(base, tmp_path, "left")
    pass_over(base, lake, tmp_path, req("r-access", "access", SUBJECT), req("r-other", "access", OTHER))
    saved = tmp_path / "saved-outbox"
    shutil.copytree(lake / "_outbox", saved)
    pass_over(base, lake, tmp_path, req("r-erase", "erase", SUBJECT, AT + 1))
    shutil.rmtree(lake / "_outbox")
    shutil.copytree(saved, lake / "_outbox")  # as the erasure of an older callpipe left it
    assert ledger.requests(lake)["r-erase"].status == "fulfilled" and len(held(lake)) == 4

    pass_over(base, lake, tmp_path)
    assert held(lake) == ["access-r-other.json", "access-r-other.manifest.json"]
    [enforced] = ledger.requests(lake)["r-erase"].enforced
    assert enforced["touched"]["access_exports_removed"] == 1
    assert enforced["touched"]["rows_removed"] == {"vault": 0, "analytics": 0, "dead_letters": 0}


def test_erase_command_removes_the_exports_too(base: dict[str, Any], tmp_path: Path) -> None:
    """`callpipe jobs erase --account ID` (no request) erases the same copies."""
    lake = copy(base, tmp_path, "command")
    pass_over(base, lake, tmp_path, req("r-access", "access", SUBJECT), req("r-other", "access", OTHER))
    out = subprocess.run(
        callpipe_cmd("jobs", "erase", "--no-topic", "--account", SUBJECT, "--json"),
        env=env_of(base, lake),
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert orjson.loads(out.stdout)["access_exports_removed"] == 1
    assert held(lake) == ["access-r-other.json", "access-r-other.manifest.json"]


def test_erasure_finds_an_export_no_request_names_by_its_manifest_and_counts_the_rest(
    base: dict[str, Any], tmp_path: Path
) -> None:
    """A ledger lost after the accesses were answered: their exports are named by no request. The
    subject's is found through its manifest's token (the export is not opened); one without its
    manifest cannot be tied to anyone: it stays, counted, never named, for the operator."""
    lake = copy(base, tmp_path, "unledgered")
    pass_over(base, lake, tmp_path, req("r-access", "access", SUBJECT), req("r-other", "access", OTHER))
    (lake / "_requests" / "ledger.jsonl").unlink()
    (lake / "_outbox" / "access-r-other.manifest.json").unlink()
    preview = subprocess.run(
        callpipe_cmd("jobs", "erase", "--account", SUBJECT, "--dry-run"),
        env=env_of(base, lake),
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert preview.returncode == 0, preview.stderr.decode()
    text = preview.stdout.decode()
    assert " 1 access exports;" in text and "outbox files tied to no subject, not searched: 1" in text
    assert OTHER not in text and "r-other" not in text and "r-access" not in text

    pass_over(base, lake, tmp_path, req("r-erase", "erase", SUBJECT, AT + 1))
    assert held(lake) == ["access-r-other.json"]
    assert touched(lake, "r-erase")["access_exports_removed"] == 1
    [erasure] = [e for e in audit.read(lake) if e.get("job") == "erase"]
    assert erasure["counts"]["access_exports_removed"] == 1
    assert erasure["counts"]["outbox_files_unattributed"] == 1
    assert b"r-other" not in orjson.dumps(erasure) and OTHER.encode() not in orjson.dumps(erasure)
