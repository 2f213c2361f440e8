"""The restricted outbox, `<lake>/_outbox/` (folder 0700, files 0600): what callpipe hands over.

- `access-<request>.json` with `access-<request>.manifest.json`: a subject's access export and its
  checksum, counts and subject token (`jobs.requests`); `<request>` is the request id as
  `ledger.file_name` makes it. A write killed half-way leaves their temps (`.<name>.tmp`).
- `breach-<run>.json`: the subjects an exposure touched, to notify (`jobs.breach`); `<run>` is the
  first 12 hex digits of the run id, the only shape `breach_name` gives.

`contents` sorts one listing of the folder into what is known about each file:
- ledgered: the files an access request of the request ledger names (export, manifest, temps),
  with the subject's token from the ledger;
- breach lists, by their name alone;
- unledgered access exports: files named like an export that no access request names (a ledger
  restored from before them, a lake copied without `_requests/`, a request id the ledger lost);
  their subject's token is read from their manifest, which holds the token, the request id,
  counts and a checksum but no personal data, and which must name the export it sits beside.
  The export itself is never opened;
- other: anything else (a temp of a breach list, a file put there by hand).
An unledgered export without a readable manifest, and every other file, is tied to no subject:
`unattributed` counts them (never names them: a file name can carry a request id).

Erasure covers the access exports: an export is a full copy of the subject's data, so erasing the
subject (`jobs.erase`, and through it `jobs.requests`) removes every access export of the subject
still here, manifest and temps included: the ledgered ones, and the unledgered ones whose manifest
names the subject. Nothing personal is read to find them and other subjects' exports are never
opened. What is tied to no subject cannot be erased by subject; it is counted so the operator can
look, and `jobs.retention_outbox` expires it by its own clock. Removal is durable (unlink, then
fsync of the folder) and idempotent: a run killed half-way and run again removes what is left.

Breach lists are kept when a subject they name is erased, and do not expire: they are the record
of a notification owed by law (to the authority and to the subjects), made to be acted on, not a
copy of the subject's data held for processing. They stay until an operator deletes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson

from jobs import ledger
from sinks.files import final_path, fsync_dir, temp_path
from sinks.layout import OUTBOX

BREACH_LIST = re.compile(r"breach-[0-9a-f]{12}\.json")
ACCESS_FILE = re.compile(r"(?P<stem>access-.+?)(?:\.manifest)?\.json")  # a final name, temps stripped
MANIFEST_MAX_BYTES = 64 * 1024  # a manifest is ~1 KiB; a larger file named like one is not read


@dataclass(frozen=True)
class AccessExport:
    """An access export with the files named after it: its manifest and the temps a killed write
    leaves. `files` are those present, the export's data first."""

    stem: str  # access-<request's file name>
    folder: Path
    files: tuple[Path, ...]
    request: str | None = None  # the ledger's access request that names it; None: no request does
    subject: str | None = None  # the subject's token: the ledger's, else its manifest's
    made: datetime | None = None  # unledgered: when its manifest says it was generated

    @property
    def export(self) -> Path:
        return self.folder / f"{self.stem}.json"

    @property
    def manifest(self) -> Path:
        return self.folder / f"{self.stem}.manifest.json"

    @property
    def holds_data(self) -> bool:
        """Whether the export itself, or its temp, is among the files (a manifest alone is not)."""
        return self.export in self.files or temp_path(self.export) in self.files


@dataclass(frozen=True)
class Contents:
    """What the outbox holds, from one listing of the folder and the folded ledger."""

    ledgered: list[AccessExport] = field(default_factory=list)
    unledgered: list[AccessExport] = field(default_factory=list)
    other: list[Path] = field(default_factory=list)
    breach_lists: list[Path] = field(default_factory=list)

    def by_subject(self) -> dict[str, list[AccessExport]]:
        """Access exports tied to a subject (ledgered, then unledgered), by account token."""
        out: dict[str, list[AccessExport]] = {}
        for found in (*self.ledgered, *self.unledgered):
            if found.subject is not None:
                out.setdefault(found.subject, []).append(found)
        return out

    @property
    def unattributed(self) -> int:
        """Files tied to no subject: unledgered exports without a readable manifest, other files."""
        return sum(len(e.files) for e in self.unledgered if e.subject is None) + len(self.other)


def outbox_dir(lake: Path) -> Path:
    return lake / OUTBOX


def access_names(request_id: str) -> tuple[str, str]:
    """The file names of an access request's export and its manifest."""
    stem = _stem(request_id)
    return f"{stem}.json", f"{stem}.manifest.json"


def breach_name(run: str) -> str:
    """The file name of a breach run's list of subjects to notify."""
    name = f"breach-{run[:12]}.json"
    if not BREACH_LIST.fullmatch(name):
        raise ValueError("a breach run id is hex")
    return name


def contents(lake: Path, requests: Mapping[str, ledger.Request]) -> Contents:
    """Sort the outbox's files (one listing of the folder; only unledgered manifests are read)."""
    folder = outbox_dir(lake)
    try:
        listing = list(folder.iterdir())
    except FileNotFoundError:
        return Contents()
    folders = {p.name for p in listing if p.is_dir() and not p.is_symlink()}  # never units: kept
    left = {p.name for p in listing} - folders
    ledgered = []
    for req in sorted(requests.values(), key=lambda r: r.request):
        if req.kind != "access":
            continue
        stem = _stem(req.request)
        names = [n for n in _unit_names(stem) if n in left]
        if names:
            left.difference_update(names)
            paths = tuple(folder / n for n in names)
            ledgered.append(AccessExport(stem, folder, paths, req.request, req.subject))
    breach_lists = sorted(folder / n for n in left if BREACH_LIST.fullmatch(n))
    left.difference_update(p.name for p in breach_lists)
    stems: dict[str, list[str]] = {}
    for name in left:
        found = ACCESS_FILE.fullmatch(_final_name(name))
        if found:
            stems.setdefault(found["stem"], []).append(name)
    unledgered = []
    for stem in sorted(stems):
        names = [n for n in _unit_names(stem) if n in stems[stem]]
        left.difference_update(names)
        subject, made = _label(folder, stem, names)
        unledgered.append(AccessExport(stem, folder, tuple(folder / n for n in names), None, subject, made))
    return Contents(ledgered, unledgered, sorted(folder / n for n in left | folders), breach_lists)


def access_exports(lake: Path, requests: Mapping[str, ledger.Request]) -> dict[str, list[AccessExport]]:
    """Access exports still in the outbox, by subject (account token): those the folded ledger
    `requests` names, and unledgered ones whose manifest names their subject."""
    return contents(lake, requests).by_subject()


def count_access_exports(
    lake: Path, subject: str, requests: Mapping[str, ledger.Request] | None = None
) -> int:
    """How many access exports of the subject the outbox holds (manifests not counted).
    `requests` is the folded ledger when the caller holds it (else it is read)."""
    held = access_exports(lake, ledger.requests(lake) if requests is None else requests)
    return sum(1 for e in held.get(subject, []) if e.holds_data)


def remove_access_exports(
    lake: Path, subject: str, requests: Mapping[str, ledger.Request] | None = None
) -> int:
    """Delete the subject's access exports with their manifests and temps, durably; returns how
    many exports were removed (0 when there are none, or no outbox)."""
    held = access_exports(lake, ledger.requests(lake) if requests is None else requests)
    return remove(lake, held.get(subject, []))


def unattributed(lake: Path, requests: Mapping[str, ledger.Request] | None = None) -> int:
    """How many files of the outbox are tied to no subject (`Contents.unattributed`)."""
    return contents(lake, ledger.requests(lake) if requests is None else requests).unattributed


def remove(lake: Path, found: Iterable[AccessExport]) -> int:
    """Delete these access exports with their manifests and temps, durably (unlink, then fsync of
    the folder); returns how many exports were removed (a manifest alone is not counted)."""
    found = list(found)
    removed = 0
    for files in found:
        gone = remove_files(lake, files.files, sync=False)
        if files.export in gone or temp_path(files.export) in gone:
            removed += 1
    if found:
        fsync_dir(outbox_dir(lake))
    return removed


def remove_files(lake: Path, paths: Iterable[Path], *, sync: bool = True) -> list[Path]:
    """Unlink these files of the outbox (one already gone is skipped); with `sync`, fsync the
    folder after. Returns the ones removed."""
    gone = []
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        gone.append(path)
    if sync and gone:
        fsync_dir(outbox_dir(lake))
    return gone


def _stem(request_id: str) -> str:
    return f"access-{ledger.file_name(request_id)}"


def _unit_names(stem: str) -> list[str]:
    """An export's files in removal order: its data (final, then temp) first, then the manifest."""
    export, manifest = Path(f"{stem}.json"), Path(f"{stem}.manifest.json")
    return [export.name, temp_path(export).name, manifest.name, temp_path(manifest).name]


def _final_name(name: str) -> str:
    """A temp's final name (`.<name>.tmp` -> `<name>`); any other name as it is."""
    try:
        return final_path(Path(name)).name
    except ValueError:
        return name


def _label(folder: Path, stem: str, names: list[str]) -> tuple[str | None, datetime | None]:
    """An unledgered export's subject token and generation time, from its manifest: only a
    manifest that names this export is believed. (None, None) when there is none to believe."""
    manifest = folder / f"{stem}.manifest.json"
    if manifest.name not in names:
        return None, None
    try:
        if manifest.lstat().st_size > MANIFEST_MAX_BYTES or manifest.is_symlink():
            return None, None
        doc = orjson.loads(manifest.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None, None
    if not isinstance(doc, dict) or doc.get("file") != f"{stem}.json":
        return None, None
    subject = doc.get("subject")
    subject = subject if isinstance(subject, str) and subject else None
    try:
        made = ledger.parse_time(doc["generated_at"]) if isinstance(doc.get("generated_at"), str) else None
    except ValueError:
        made = None
    if made is not None and made.tzinfo is None:
        made = None
    return subject, made
