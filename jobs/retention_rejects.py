"""Retention of the dead letters kept in the lake (`<lake>/_rejects/`, `sinks.rejects`): a file of
them is removed once everything in it is older than the dead-letter limit.

The limit is the shortest of the vault's (`retention.vault_days`), the recordings' and the
transcripts' (`recording_days`, `transcript_days`): a dead letter is the raw event, every category
in it, and raw bytes cannot have one category nulled as a vault row can. So a transcript (or a
recording's address) is never kept longer in a dead letter than in the vault. With the defaults
that is 30 days, time enough to repair and replay.

A dead letter's age is its event time where its bytes can be read (`pipeline.raw_records`: the
latest of started_at, answered_at, ended_at, or a control record's `at`), so a backfill's dead
letters age with the rows they came with; else (bytes that do not decode, a withheld dead letter,
a time that cannot be right: before the epoch of service or after the file was written, give or
take a day of clock skew) the file's own mtime. A file's age is that of its newest dead letter:
it goes whole or not at all (no file is rewritten). A file last written a day before the cutoff
cannot hold anything newer and is not decoded.

Files are removed through the retention run's intent journal (`jobs.replace`), with the lake's
changes: a run killed midway leaves the old state or the new, and the next run finishes it.
Counted, not named, on the screen; the audit lists the files like the lake's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from pipeline.policy import Policy
from pipeline.raw_records import newest_event_ms
from schemas.clock import DAY_MS, EPOCH_OF_SERVICE_MS
from sinks import rejects

SKEW_MS = DAY_MS  # an event time up to this far past its file's mtime is taken as it is


def cutoff(policy: Policy, as_of: datetime) -> datetime:
    """Dead letters whose newest event is before this expire (the module's docstring)."""
    r = policy.retention
    return as_of - timedelta(days=min(r.vault_days, r.recording_days, r.transcript_days))


@dataclass(frozen=True)
class RejectsCounts:
    """What retention removes (a dry run: would remove) from `_rejects/`, and what it keeps."""

    dead_letter_files_removed: int = 0
    dead_letters_expired: int = 0  # the dead letters those files held
    dead_letter_files_held: int = 0


@dataclass(frozen=True)
class Expired:
    files: list[Path] = field(default_factory=list)
    dead_letters: int = 0
    held: int = 0

    def counts(self) -> RejectsCounts:
        return RejectsCounts(len(self.files), self.dead_letters, self.held)


def expired(lake: Path, cut: datetime) -> Expired:
    """The files of `_rejects/` all of whose dead letters are older than `cut`."""
    cut_ms = int(cut.timestamp() * 1000)
    gone: list[Path] = []
    letters = held = 0
    for path in rejects.files_in(lake):
        try:
            mtime_ms = int(os.lstat(path).st_mtime * 1000)
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:  # removed meanwhile (an erasure holds the lock, not a reader)
            continue
        # written a day before the cutoff: nothing in it can be newer, no need to decode it
        if mtime_ms + SKEW_MS >= cut_ms and _newest_ms(lines, mtime_ms, cut_ms) >= cut_ms:
            held += 1
            continue
        gone.append(path)
        letters += len(lines)
    return Expired(gone, letters, held)


def _newest_ms(lines: list[bytes], mtime_ms: int, cut_ms: int) -> int:
    """The newest dead letter's time (the first found at or after `cut_ms` will do)."""
    newest = mtime_ms if not lines else 0
    for line in lines:
        raw = rejects.raw_of(line)
        at = newest_event_ms(raw) if raw else None
        if at is None or not EPOCH_OF_SERVICE_MS <= at <= mtime_ms + SKEW_MS:
            at = mtime_ms
        newest = max(newest, at)
        if newest >= cut_ms:
            break
    return newest
