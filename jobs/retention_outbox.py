"""Retention of the outbox (`<lake>/_outbox/`, sorted by `jobs.outbox`): nothing in it but breach
lists outlives `retention.outbox.days` (30 by default) before `as_of`, and what cannot be tied to
a subject is counted for the operator.

A file's age counts from the request ledger's time where the ledger names the file (a copy or a
`touch` resets a file's mtime, never the ledger), else from the earliest time the file carries:
- an access export whose request the ledger names and marks fulfilled: the ledger's fulfilment
  time (the file's mtime is not read). Hand it over before it expires: callpipe does not know
  about hand-overs.
- an access export whose request the ledger names but never marked fulfilled (a requests pass
  killed between writing it and recording it, and no pass since): when work on the request began,
  the ledger's `in_progress` event written before the export (so never later than the file), else
  when the request was received. The request stays open, and the next requests pass writes the
  export again and fulfils it: removing the stale copy loses nothing the ledger still owes.
- an access export no request names: the earlier of its files' mtimes and the `generated_at` of
  its manifest, so a restore that resets mtimes does not renew it.
- any other file (a temp of a killed write, a file put there by hand): its mtime, the only clock
  it has. A folder is never removed (retention deletes files only); it stays counted as held.
Breach lists are kept and counted: they record a notification owed by law.

Removal is durable (unlink, then fsync of the folder) and idempotent. Everything is counted,
nothing named: a file name can carry a request id, and a file's content is personal data.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from jobs import ledger, outbox
from jobs.outbox import AccessExport


@dataclass(frozen=True)
class OutboxCounts:
    """What retention removes (a dry run: would remove) from the outbox, and what it keeps."""

    access_exports_removed: int = 0  # of fulfilled requests, by the fulfilment time (manifests not counted)
    unfulfilled_exports_removed: int = 0  # of requests the ledger names but never marked fulfilled
    unledgered_files_removed: int = 0  # files no access request names, by their own clock (each file)
    unledgered_files_held: int = 0  # such files kept: younger than the limit, or folders
    unattributed_files_held: int = 0  # of those, the ones tied to no subject: erasure cannot find them
    breach_lists_kept: int = 0  # kept by design


@dataclass(frozen=True)
class Expired:
    """The outbox at a cutoff: what expires, by clock, and what is kept."""

    fulfilled: list[AccessExport] = field(default_factory=list)
    unfulfilled: list[AccessExport] = field(default_factory=list)
    unledgered: list[Path] = field(default_factory=list)  # files, an export's manifest and temps included
    held: int = 0
    unattributed_held: int = 0
    breach_lists: int = 0

    def counts(self) -> OutboxCounts:
        """What removing them counts."""
        return OutboxCounts(
            access_exports_removed=sum(1 for e in self.fulfilled if e.holds_data),
            unfulfilled_exports_removed=sum(1 for e in self.unfulfilled if e.holds_data),
            unledgered_files_removed=len(self.unledgered),
            unledgered_files_held=self.held,
            unattributed_files_held=self.unattributed_held,
            breach_lists_kept=self.breach_lists,
        )


def expired(lake: Path, requests: Mapping[str, ledger.Request], cutoff: datetime) -> Expired:
    """What of the outbox is older than `cutoff`, from the folded ledger `requests` (one listing of
    the folder; no export is opened, only the manifests of exports no request names)."""
    found = outbox.contents(lake, requests)
    fulfilled: list[AccessExport] = []
    unfulfilled: list[AccessExport] = []
    for export in found.ledgered:
        req = requests[str(export.request)]  # ledgered: a request of `requests` names it
        if ledger.parse_time(req.fulfilled_at or req.started_at or req.received_at) < cutoff:
            (fulfilled if req.fulfilled_at else unfulfilled).append(export)
    gone: list[Path] = []
    held = unattributed = 0
    for export in found.unledgered:
        clocks = [t for t in (*map(_mtime, export.files), export.made) if t is not None]
        if clocks and min(clocks) < cutoff:
            gone.extend(export.files)
        else:
            held += len(export.files)
            unattributed += len(export.files) if export.subject is None else 0
    for path in found.other:
        mtime = _mtime(path)
        if mtime is not None and mtime < cutoff:
            gone.append(path)
        else:
            held += 1
            unattributed += 1
    return Expired(fulfilled, unfulfilled, gone, held, unattributed, len(found.breach_lists))


def remove(lake: Path, expiry: Expired) -> OutboxCounts:
    """Delete what expired, durably; returns what was removed and what is kept."""
    return replace(
        expiry.counts(),
        access_exports_removed=outbox.remove(lake, expiry.fulfilled),
        unfulfilled_exports_removed=outbox.remove(lake, expiry.unfulfilled),
        unledgered_files_removed=len(outbox.remove_files(lake, expiry.unledgered)),
    )


def _mtime(path: Path) -> datetime | None:
    """A file's own modification time (a symbolic link's, not its target's); None for a folder,
    which retention never removes, or a file already gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return None
    return datetime.fromtimestamp(st.st_mtime, UTC)
