"""The intent journal: pending changes roll back, committed ones roll forward, every step
idempotent, one job at a time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs import audit
from jobs.replace import COMMITTED, Change, JobBusy, job_lock, pending, recover, write_parquet
from schemas.zones import vault_schema
from sinks import crypt
from sinks.arrow import vault_table
from tests.support.sink_rows import filled


def _lake(tmp_path: Path) -> Path:
    lake = tmp_path / "lake"
    for name, text in [("a.parquet", "old-a"), ("b.parquet", "old-b")]:
        path = lake / "vault" / "calls" / "dt=2026-01-01" / "bucket=00" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (lake / "vault" / "calls" / "dt=2025-01-01" / "bucket=00").mkdir(parents=True)
    (lake / "vault" / "calls" / "dt=2025-01-01" / "bucket=00" / "c.parquet").write_text("expired")
    return lake


def _state(lake: Path) -> dict[str, str]:
    return {
        str(p.relative_to(lake)): p.read_text()
        for p in sorted(lake.rglob("*"))
        if p.is_file() and "_jobs" not in p.parts and "_audit" not in p.parts
    }


def _planned(lake: Path) -> tuple[Change, Path]:
    part = lake / "vault" / "calls" / "dt=2026-01-01" / "bucket=00"
    change = Change(lake, "test")
    tmp = change.temp_for(part / "a.parquet")
    change.remove(part / "b.parquet")
    change.drop(lake / "vault" / "calls" / "dt=2025-01-01")
    return change, tmp


NEW = {"vault/calls/dt=2026-01-01/bucket=00/a.parquet": "new-a"}


def test_a_committed_change_is_applied_and_forgotten(tmp_path: Path) -> None:
    lake = _lake(tmp_path)
    change, tmp = _planned(lake)
    change.begin()
    tmp.write_text("new-a")
    change.commit()
    change.apply()
    change.finish()
    assert _state(lake) == NEW
    assert pending(lake) == []


def test_a_pending_change_rolls_back_to_the_old_state(tmp_path: Path) -> None:
    lake = _lake(tmp_path)
    old = _state(lake)
    change, tmp = _planned(lake)
    change.begin()
    tmp.write_text("half-writ")  # killed while writing temps
    assert [r for r, _how in recover(lake)] == [change.run]
    assert _state(lake) == old
    assert not tmp.exists() and pending(lake) == []


@pytest.mark.parametrize("applied_steps", [0, 1, 2, 3])
def test_a_committed_change_rolls_forward_from_any_point_of_apply(tmp_path: Path, applied_steps: int) -> None:
    lake = _lake(tmp_path)
    change, tmp = _planned(lake)
    change.begin()
    tmp.write_text("new-a")
    change.commit()
    # simulate a kill part-way through apply: do the first `applied_steps` operations by hand
    part = lake / "vault" / "calls" / "dt=2026-01-01" / "bucket=00"
    steps = [
        lambda: os.replace(tmp, part / "a.parquet"),
        lambda: (part / "b.parquet").unlink(),
        lambda: os.replace(lake / change.drops[0][0], lake / change.drops[0][1]),
    ]
    for step in steps[:applied_steps]:
        step()
    assert pending(lake)[0]["state"] == COMMITTED
    assert [how for _r, how in recover(lake, audit=lambda doc: None)] == ["forward"]
    assert _state(lake) == NEW
    assert recover(lake) == []  # nothing left to do


def test_recovery_audits_a_rolled_forward_run_once(tmp_path: Path) -> None:
    lake = _lake(tmp_path)
    change, tmp = _planned(lake)
    change.info = {"params": {"x": 1}, "counts": {"n": 2}, "files": []}
    change.begin()
    tmp.write_text("new-a")
    change.commit()
    with job_lock(lake) as recovered:
        assert recovered == [(change.run, "forward")]
    entries = audit.read(lake)
    assert [(e["run"], e["outcome"], e["counts"]) for e in entries] == [(change.run, "recovered", {"n": 2})]


def test_only_one_job_holds_the_lock(tmp_path: Path) -> None:
    lake = _lake(tmp_path)
    with job_lock(lake), pytest.raises(JobBusy), job_lock(lake):
        pass
    with job_lock(lake):  # released on exit
        pass


def test_write_parquet_uses_zone_modes_and_keeps_metadata(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    path = lake / "vault" / "calls" / "dt=2026-01-01" / "bucket=03" / ".x.tmp"
    table = vault_table([filled(vault_schema(), i) for i in range(2)])  # encrypted by column name
    write_parquet(table.replace_schema_metadata({b"callpipe.lineage": b"{}"}), path, "vault")
    assert path.stat().st_mode & 0o777 == 0o600
    assert (lake / "vault").stat().st_mode & 0o777 == 0o700
    assert (lake / "vault" / "calls" / "dt=2026-01-01").stat().st_mode & 0o777 == 0o700
    assert lake.stat().st_mode & 0o777 == 0o755
    assert crypt.read_metadata(path).metadata[b"callpipe.lineage"] == b"{}"
