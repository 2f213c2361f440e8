"""The restricted outbox, `<lake>/_outbox/` (folder 0700, files 0600): what callpipe hands over.

- `access-<request>.json` with `access-<request>.manifest.json`: a subject's access export and its
  checksum and counts (`jobs.requests`); `<request>` is the request id as `ledger.file_name` makes it.
- `breach-<run>.json`: the subjects an exposure touched, to notify (`jobs.breach`).

Erasure covers the access exports: an export is a full copy of the subject's data, so erasing the
subject (`jobs.erase`, and through it `jobs.requests`) removes every access export of the subject
still here, manifest included. Which exports are the subject's comes from the request ledger (each
access request records its subject's token), never from a file's name or content: nothing personal
is read to find them, and other subjects' exports are never opened. Removal is durable (unlink,
then fsync of the folder) and idempotent: a run killed half-way and run again removes what is left.

Access exports expire: `jobs.retention` removes an export with its manifest once its request was
fulfilled more than `retention.outbox.days` ago (30 by default) before `as_of`. The age is the
ledger's `fulfilled_at` (when the requests job wrote the export), not the file's mtime, which a
copy or a `touch` would reset; an export whose request is not yet fulfilled (a pass killed between
writing it and recording it) is left to the requests job that finishes it. Hand an export over
before it expires: callpipe does not know about hand-overs.

Breach lists are kept when a subject they name is erased, and do not expire: they are the record
of a notification owed by law (to the authority and to the subjects), made to be acted on, not a
copy of the subject's data held for processing. They stay until an operator deletes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from jobs import ledger
from sinks.files import fsync_dir
from sinks.layout import OUTBOX


@dataclass(frozen=True)
class AccessExport:
    """One access request's files in the outbox (either may be missing)."""

    request: str
    export: Path
    manifest: Path


def outbox_dir(lake: Path) -> Path:
    return lake / OUTBOX


def access_names(request_id: str) -> tuple[str, str]:
    """The file names of an access request's export and its manifest."""
    stem = f"access-{ledger.file_name(request_id)}"
    return f"{stem}.json", f"{stem}.manifest.json"


def access_exports(lake: Path, requests: Mapping[str, ledger.Request]) -> dict[str, list[AccessExport]]:
    """Access requests with a file still in the outbox, by subject (account token), from the
    folded ledger `requests`; one listing of the folder."""
    folder = outbox_dir(lake)
    try:
        present = {p.name for p in folder.iterdir()}
    except FileNotFoundError:
        return {}
    out: dict[str, list[AccessExport]] = {}
    for req in sorted(requests.values(), key=lambda r: r.request):
        if req.kind != "access":
            continue
        export, manifest = access_names(req.request)
        if export in present or manifest in present:
            held = AccessExport(req.request, folder / export, folder / manifest)
            out.setdefault(req.subject, []).append(held)
    return out


def count_access_exports(
    lake: Path, subject: str, requests: Mapping[str, ledger.Request] | None = None
) -> int:
    """How many access exports of the subject the outbox holds (manifests not counted).
    `requests` is the folded ledger when the caller holds it (else it is read)."""
    held = access_exports(lake, ledger.requests(lake) if requests is None else requests)
    return sum(1 for e in held.get(subject, []) if e.export.exists())


def remove_access_exports(
    lake: Path, subject: str, requests: Mapping[str, ledger.Request] | None = None
) -> int:
    """Delete the subject's access exports and their manifests, durably; returns how many exports
    were removed (0 when there are none, or no outbox)."""
    held = access_exports(lake, ledger.requests(lake) if requests is None else requests)
    return remove(lake, held.get(subject, []))


def expired_access_exports(
    lake: Path, requests: Mapping[str, ledger.Request], cutoff: datetime
) -> list[AccessExport]:
    """Access exports still in the outbox whose request was fulfilled before `cutoff`, from the
    folded ledger `requests` (one listing of the folder; no file is opened)."""
    out = []
    for found in access_exports(lake, requests).values():
        for files in found:
            fulfilled = requests[files.request].fulfilled_at
            if fulfilled is not None and ledger.parse_time(fulfilled) < cutoff:
                out.append(files)
    return sorted(out, key=lambda e: e.request)


def remove(lake: Path, found: list[AccessExport]) -> int:
    """Delete these access exports and their manifests, durably (unlink, then fsync of the
    folder); returns how many exports were removed (a manifest alone is not counted)."""
    removed = 0
    for files in found:
        try:
            files.export.unlink()  # the personal data first
            removed += 1
        except FileNotFoundError:
            pass
        files.manifest.unlink(missing_ok=True)
    if found:
        fsync_dir(outbox_dir(lake))
    return removed
