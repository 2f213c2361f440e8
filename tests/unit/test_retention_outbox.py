"""What `jobs retention` removes from the outbox (jobs/retention_outbox.py), case by case: every file
but breach lists expires `retention.outbox.days` after its clock (the ledger's fulfilment time for
an answered access export; when work began for one never marked fulfilled; the earlier of its
mtime and its manifest's `generated_at` for one no request names; the mtime for anything else).
Folders are never removed; what no request names and is kept is counted, and what no subject can
be tied to is counted apart. A dry run counts what the run removes."""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from jobs import ledger, retention_outbox

NOW = datetime(2026, 12, 1, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=30)
OLD, YOUNG, ANCIENT = NOW - timedelta(days=40), NOW - timedelta(days=1), NOW - timedelta(days=400)


def _events(request: str, kind: str, subject: str, *steps: tuple[str, datetime]) -> list[dict[str, Any]]:
    first = steps[0][1]
    received = {
        "event": "received",
        "request": request,
        "kind": kind,
        "subject": subject,
        "requested_at": ledger.iso(first),
        "received_at": ledger.iso(first),
        "deadline": ledger.iso(first + timedelta(days=30)),
    }
    return [received, *({"event": e, "request": request, "at": ledger.iso(t)} for e, t in steps[1:])]


LEDGER = ledger.fold(
    [
        *_events("r-done", "access", "tok-a", ("received", OLD), ("in_progress", OLD), ("fulfilled", OLD)),
        *_events("r-edge", "access", "tok-a", ("received", OLD), ("fulfilled", CUTOFF)),
        *_events("r-young", "access", "tok-a", ("received", OLD), ("in_progress", OLD), ("fulfilled", YOUNG)),
        *_events("r-killed", "access", "tok-b", ("received", OLD), ("in_progress", OLD)),
        *_events("r-killed-young", "access", "tok-b", ("received", OLD), ("in_progress", YOUNG)),
        *_events("r-waiting", "access", "tok-b", ("received", OLD)),
        *_events("r-erase", "erase", "tok-c", ("received", OLD), ("fulfilled", OLD)),
    ]
)


def manifest(stem: str, subject: str, generated: datetime, file: str | None = None) -> bytes:
    doc = {"subject": subject, "generated_at": ledger.iso(generated), "file": file or f"{stem}.json"}
    return orjson.dumps(doc)


# (case, files: name -> (mtime, content); a name ending in "/" is a folder, "@" a symbolic link
#  to a file outside the lake), the non-zero counts, the names left
CASES: list[tuple[str, dict[str, tuple[datetime, bytes]], dict[str, int], list[str]]] = [
    (
        "fulfilled long ago, its files touched today: the ledger's clock",
        {"access-r-done.json": (NOW, b"{}"), "access-r-done.manifest.json": (NOW, b"{}")},
        {"access_exports_removed": 1},
        [],
    ),
    (
        "fulfilled at the cutoff exactly: kept",
        {"access-r-edge.json": (ANCIENT, b"{}")},
        {},
        ["access-r-edge.json"],
    ),
    (
        "fulfilled yesterday, its file ancient: kept",
        {"access-r-young.json": (ANCIENT, b"{}")},
        {},
        ["access-r-young.json"],
    ),
    (
        "never marked fulfilled, work began long ago: removed with its temp",
        {
            "access-r-killed.json": (NOW, b"{}"),
            ".access-r-killed.json.tmp": (NOW, b"{"),
            "access-r-killed.manifest.json": (NOW, b"{}"),
        },
        {"unfulfilled_exports_removed": 1},
        [],
    ),
    (
        "a killed write's temp alone: an export",
        {".access-r-killed.json.tmp": (NOW, b"{")},
        {"unfulfilled_exports_removed": 1},
        [],
    ),
    (
        "never marked fulfilled, work began yesterday: kept",
        {"access-r-killed-young.json": (ANCIENT, b"{}")},
        {},
        ["access-r-killed-young.json"],
    ),
    (
        "only received: from its receipt",
        {"access-r-waiting.json": (NOW, b"{}")},
        {"unfulfilled_exports_removed": 1},
        [],
    ),
    (
        "no request names it, restored with fresh mtimes: its manifest's time",
        {
            "access-r-lost.json": (NOW, b"{}"),
            "access-r-lost.manifest.json": (NOW, manifest("access-r-lost", "tok-a", OLD)),
        },
        {"unledgered_files_removed": 2},
        [],
    ),
    (
        "no request names it, its manifest young but its files old: the earlier clock",
        {
            "access-r-lost.json": (OLD, b"{}"),
            "access-r-lost.manifest.json": (OLD, manifest("access-r-lost", "tok-a", YOUNG)),
        },
        {"unledgered_files_removed": 2},
        [],
    ),
    (
        "no request names it, young, its manifest names the subject: held, attributed",
        {
            "access-r-lost.json": (YOUNG, b"{}"),
            "access-r-lost.manifest.json": (YOUNG, manifest("access-r-lost", "tok-a", YOUNG)),
        },
        {"unledgered_files_held": 2},
        ["access-r-lost.json", "access-r-lost.manifest.json"],
    ),
    (
        "no request names it, no manifest, young: held, tied to no subject",
        {"access-r-bare.json": (YOUNG, b"{}")},
        {"unledgered_files_held": 1, "unattributed_files_held": 1},
        ["access-r-bare.json"],
    ),
    (
        "no request names it, no manifest, old",
        {"access-r-bare.json": (OLD, b"{}")},
        {"unledgered_files_removed": 1},
        [],
    ),
    (
        "a manifest naming another file is not believed, not even its time",
        {
            "access-r-liar.json": (YOUNG, b"{}"),
            "access-r-liar.manifest.json": (YOUNG, manifest("access-r-liar", "tok-a", OLD, "access-x.json")),
        },
        {"unledgered_files_held": 2, "unattributed_files_held": 2},
        ["access-r-liar.json", "access-r-liar.manifest.json"],
    ),
    (
        "named after a request that is no access",
        {"access-r-erase.json": (OLD, b"{}")},
        {"unledgered_files_removed": 1},
        [],
    ),
    ("put there by hand, old", {"notes.txt": (OLD, b"call back")}, {"unledgered_files_removed": 1}, []),
    (
        "put there by hand, young",
        {"notes.txt": (YOUNG, b"call back")},
        {"unledgered_files_held": 1, "unattributed_files_held": 1},
        ["notes.txt"],
    ),
    (
        "a folder is never removed",
        {"handover/": (ANCIENT, b"")},
        {"unledgered_files_held": 1, "unattributed_files_held": 1},
        ["handover"],
    ),
    (
        "a symbolic link: its own time, not its target's",
        {"link@": (OLD, b"")},
        {"unledgered_files_removed": 1},
        [],
    ),
    (
        "a breach list is kept",
        {"breach-0123456789ab.json": (ANCIENT, b"{}")},
        {"breach_lists_kept": 1},
        ["breach-0123456789ab.json"],
    ),
    ("not jobs.breach's name", {"breach-notes.json": (OLD, b"{}")}, {"unledgered_files_removed": 1}, []),
    (
        "a breach list's temp",
        {".breach-0123456789ab.json.tmp": (OLD, b"{")},
        {"unledgered_files_removed": 1},
        [],
    ),
]


def make_outbox(lake: Path, files: dict[str, tuple[datetime, bytes]], outside: Path) -> None:
    folder = lake / "_outbox"
    folder.mkdir(parents=True, mode=0o700)
    for name, (mtime, data) in files.items():
        stamp = mtime.timestamp()
        if name.endswith("/"):
            path = folder / name[:-1]
            path.mkdir()
        elif name.endswith("@"):
            path = folder / name[:-1]
            outside.write_bytes(b"not the lake's")
            os.utime(outside, (NOW.timestamp(), NOW.timestamp()))
            path.symlink_to(outside)
        else:
            path = folder / name
            path.write_bytes(data)
        os.utime(path, (stamp, stamp), follow_symlinks=False)


@pytest.mark.parametrize(("case", "files", "counts", "left"), CASES, ids=[c[0] for c in CASES])
def test_each_file_expires_by_its_clock(
    tmp_path: Path,
    case: str,
    files: dict[str, tuple[datetime, bytes]],
    counts: dict[str, int],
    left: list[str],
) -> None:
    lake = tmp_path / "lake"
    outside = tmp_path / "outside.txt"
    make_outbox(lake, files, outside)
    expiry = retention_outbox.expired(lake, LEDGER, CUTOFF)
    planned = asdict(expiry.counts())
    done = asdict(retention_outbox.remove(lake, expiry))
    assert {k: v for k, v in done.items() if v} == counts
    assert planned == done  # the dry run counts what the run removes
    assert sorted(p.name for p in (lake / "_outbox").iterdir()) == left
    if any(name.endswith("@") for name in files):
        assert outside.read_bytes() == b"not the lake's"  # the link went, never its target
    again = asdict(retention_outbox.remove(lake, retention_outbox.expired(lake, LEDGER, CUTOFF)))
    assert again == {**done, **{k: 0 for k in done if k.endswith("_removed")}}  # re-running removes nothing


def test_no_outbox_counts_nothing(tmp_path: Path) -> None:
    expiry = retention_outbox.expired(tmp_path / "lake", LEDGER, CUTOFF)
    assert asdict(retention_outbox.remove(tmp_path / "lake", expiry)) == asdict(
        retention_outbox.OutboxCounts()
    )
