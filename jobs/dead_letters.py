"""Dead letters removed from `<lake>/_rejects/` inside a job's change: an erasure's (the subject's,
`jobs.erase`) and a consent withdrawal's (those of the account's calls it covers, `jobs.withdraw`).

Which dead letters go is the caller's question, asked of every raw record by `sinks.rejects.find`
(one that cannot be told is counted there, never removed). A dead letter goes whole: its bytes (a
compressed container, JSON as received) cannot have one field nulled. A file whose every dead
letter goes is removed; any other is written again without them (`sinks.rejects.write_without`)
to a temp of the caller's change, so they leave with the job's other files through one intent
journal (`jobs.replace`): a kill leaves the old files or the new, and the next run finishes. The
audit names each file as it names the lake's (`jobs.audit.file_removed` / `file_replaced`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import audit
from jobs.replace import Change
from sinks import rejects


@dataclass(frozen=True)
class Removal:
    """Dead letters planned for removal in a change."""

    lake: Path
    files: list[dict[str, Any]]  # the audit entries of the files removed whole
    rewrites: list[tuple[rejects.Hits, Path]]  # files kept without their dead letters, and temps
    count: int  # dead letters removed

    def write(self) -> list[dict[str, Any]]:
        """Write the temps of the files kept (in the change's `write`); their audit entries."""
        return [
            audit.file_replaced(self.lake, hits.path, tmp, rejects.write_without(hits, tmp))
            for hits, tmp in self.rewrites
        ]


def plan(change: Change, hits: Iterable[rejects.Hits]) -> Removal:
    """Plan in `change` the removal of the dead letters `hits` name (`sinks.rejects.find`)."""
    files, rewrites, count = [], [], 0
    for h in hits:
        count += len(h.matching)
        if len(h.matching) == len(h.lines):
            files.append(audit.file_removed(change.lake, h.path))
            change.remove(h.path)
        else:
            rewrites.append((h, change.temp_for(h.path)))
    return Removal(change.lake, files, rewrites, count)
