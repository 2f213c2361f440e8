"""Whose files the outbox holds (jobs/outbox.py), as erasure needs it: a subject's access exports
are found through the request ledger, or, for an export no request names, through its manifest's
subject token (the export is never opened); what cannot be tied to a subject is counted, and
breach lists are told apart by the name jobs.breach gives them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from jobs import ledger, outbox

NOW = datetime(2026, 12, 1, tzinfo=UTC)
LEDGER = ledger.fold(
    [
        {
            "event": "received",
            "request": rid,
            "kind": kind,
            "subject": subject,
            "requested_at": ledger.iso(NOW),
            "received_at": ledger.iso(NOW),
            "deadline": ledger.iso(NOW),
        }
        for rid, kind, subject in (
            ("r-a", "access", "tok-a"),
            ("r-b", "access", "tok-b"),
            ("r/odd id", "access", "tok-a"),  # its files are named by a digest of the id
            ("r-erase", "erase", "tok-a"),
        )
    ]
)


def manifest(export: str, subject: str) -> bytes:
    return orjson.dumps({"subject": subject, "generated_at": ledger.iso(NOW), "file": export})


ODD = outbox.access_names("r/odd id")[0]
FILES: dict[str, bytes] = {
    "access-r-a.json": b"{}",  # ledgered: tok-a
    "access-r-a.manifest.json": b"{}",
    ".access-r-a.json.tmp": b"{",
    ODD: b"{}",  # ledgered: tok-a
    "access-r-b.json": b"{}",  # ledgered: tok-b
    "access-r-lost.json": b"{}",  # unledgered, its manifest names tok-a
    "access-r-lost.manifest.json": manifest("access-r-lost.json", "tok-a"),
    "access-r-gone.json": b"{}",  # unledgered, its manifest names tok-b
    "access-r-gone.manifest.json": manifest("access-r-gone.json", "tok-b"),
    "access-r-bare.json": b"{}",  # unledgered, no manifest: tied to nobody
    "access-r-liar.json": b"{}",  # a manifest that names another file: not believed
    "access-r-liar.manifest.json": manifest("access-r-a.json", "tok-a"),
    "access-r-erase.json": b"{}",  # named after an erase request: unledgered, no manifest
    "notes.txt": b"call back",  # put there by hand
    "breach-0123456789ab.json": b"{}",
}


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    folder = tmp_path / "lake" / "_outbox"
    folder.mkdir(parents=True)
    for name, data in FILES.items():
        (folder / name).write_bytes(data)
    return tmp_path / "lake"


def names(found: list[outbox.AccessExport]) -> list[str]:
    return sorted(p.name for e in found for p in e.files)


def test_the_files_are_sorted_by_what_is_known_of_them(lake: Path) -> None:
    held = outbox.contents(lake, LEDGER)
    assert names(held.ledgered) == sorted(
        [".access-r-a.json.tmp", "access-r-a.json", "access-r-a.manifest.json", "access-r-b.json", ODD]
    )
    assert [(e.stem, e.subject) for e in held.unledgered] == [
        ("access-r-bare", None),
        ("access-r-erase", None),
        ("access-r-gone", "tok-b"),
        ("access-r-liar", None),
        ("access-r-lost", "tok-a"),
    ]
    assert [p.name for p in held.other] == ["notes.txt"]
    assert [p.name for p in held.breach_lists] == ["breach-0123456789ab.json"]
    assert held.unattributed == 5  # bare, erase, liar and its manifest, notes


def test_erasure_removes_the_subjects_exports_ledgered_or_not_and_nothing_else(lake: Path) -> None:
    assert outbox.count_access_exports(lake, "tok-a", LEDGER) == 3
    assert outbox.remove_access_exports(lake, "tok-a", LEDGER) == 3
    left = sorted(p.name for p in (lake / "_outbox").iterdir())
    gone = {"access-r-a.json", "access-r-a.manifest.json", ".access-r-a.json.tmp", ODD}
    gone |= {"access-r-lost.json", "access-r-lost.manifest.json"}
    assert left == sorted(set(FILES) - gone)
    assert outbox.remove_access_exports(lake, "tok-a", LEDGER) == 0  # idempotent
    assert outbox.unattributed(lake, LEDGER) == 5  # what erasure cannot search is counted


def test_an_unknown_subject_or_no_outbox_removes_nothing(lake: Path, tmp_path: Path) -> None:
    assert outbox.remove_access_exports(lake, "tok-z", LEDGER) == 0
    assert len(list((lake / "_outbox").iterdir())) == len(FILES)
    assert outbox.remove_access_exports(tmp_path / "none", "tok-a", LEDGER) == 0
    assert outbox.unattributed(tmp_path / "none", LEDGER) == 0


def test_a_breach_run_gets_the_name_breach_lists_are_told_apart_by() -> None:
    name = outbox.breach_name(uuid.uuid4().hex)
    assert outbox.BREACH_LIST.fullmatch(name)
    with pytest.raises(ValueError):
        outbox.breach_name("not-hex-run-id")
