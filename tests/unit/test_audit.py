"""The audit trail: append-only JSON lines, subjects only as tokens, torn lines survived."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobs import audit
from pipeline.keys import Domain, PseudonymKey

KEY = PseudonymKey("v1", bytes(range(32)))
AT = datetime(2026, 11, 29, 14, 30, 0, 123000, tzinfo=UTC)


def test_record_appends_one_line_per_entry_and_read_returns_them(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    target = lake / "vault" / "calls" / "x.parquet"
    first = audit.record(
        lake,
        job="retention",
        params={"as_of": "2026-11-29"},
        counts={"rows_removed": 3},
        files=[{"path": target, "sha256": "ab" * 32, "action": "removed"}],
        duration_s=0.5,
        outcome="ok",
        at=AT,
    )
    second = audit.record(
        lake, job="erase", params={"subject": "t"}, counts={}, files=[], duration_s=1, outcome="ok", at=AT
    )
    assert first == second == lake / "_audit" / "2026-11.jsonl"
    assert len(first.read_bytes().splitlines()) == 2
    entries = audit.read(lake)
    assert [e["job"] for e in entries] == ["retention", "erase"]
    assert entries[0]["at"] == "2026-11-29T14:30:00.123Z"
    assert entries[0]["files"] == [
        {"path": "vault/calls/x.parquet", "sha256": "ab" * 32, "action": "removed"}
    ]
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.parent.stat().st_mode) == 0o700
    # who ran it: the process's login, in every entry (a vault read, an export traceable to a person)
    assert audit.login() and [e["by"] for e in entries] == [audit.login()] * 2


def test_months_go_to_separate_files(tmp_path: Path) -> None:
    for month in (10, 11):
        audit.record(
            tmp_path,
            job="compact",
            params={},
            counts={},
            files=[],
            duration_s=0,
            outcome="ok",
            at=datetime(2026, month, 1, tzinfo=UTC),
        )
    assert sorted(p.name for p in (tmp_path / "_audit").iterdir()) == ["2026-10.jsonl", "2026-11.jsonl"]
    assert [e["at"][:7] for e in audit.read(tmp_path)] == ["2026-10", "2026-11"]


@pytest.mark.parametrize("name", ["account_id", "account", "caller"])
def test_raw_subject_ids_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError) as exc:
        audit.record(
            tmp_path, job="erase", params={name: "A1"}, counts={}, files=[], duration_s=0, outcome="ok"
        )
    assert "A1" not in str(exc.value)


def test_torn_last_line_is_skipped_and_the_next_entry_starts_fresh(tmp_path: Path) -> None:
    path = audit.record(tmp_path, job="a", params={}, counts={}, files=[], duration_s=0, outcome="ok", at=AT)
    with path.open("ab") as out:
        out.write(b'{"job": "torn", "par')
    audit.record(tmp_path, job="b", params={}, counts={}, files=[], duration_s=0, outcome="ok", at=AT)
    assert [e["job"] for e in audit.read(tmp_path)] == ["a", "b"]


def test_subject_ref_is_the_account_token_and_about_filters_by_it(tmp_path: Path) -> None:
    ref = audit.subject_ref(KEY, "A1")
    assert ref == KEY.token(Domain.ACCOUNT, "A1") and "A1" not in ref
    audit.record(
        tmp_path, job="erase", params={"subject": ref}, counts={}, files=[], duration_s=0, outcome="ok"
    )
    audit.record(
        tmp_path, job="erase", params={"subject": "other"}, counts={}, files=[], duration_s=0, outcome="ok"
    )
    assert [e["params"]["subject"] for e in audit.about(audit.read(tmp_path), ref)] == [ref]


def test_unknown_file_action_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        audit.record(
            tmp_path,
            job="x",
            params={},
            counts={},
            files=[{"path": "a", "sha256": None, "action": "mangled"}],
            duration_s=0,
            outcome="ok",
        )


def test_read_of_a_lake_without_audit_is_empty(tmp_path: Path) -> None:
    assert audit.read(tmp_path) == []
