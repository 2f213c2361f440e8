"""The request ledger: every data-subject request, its deadline and what became of it.

`<lake>/_requests/` (folder 0700) is the ledger's restricted area:
- `ledger.jsonl` (0600): append-only, one JSON line per event of a request, written like the
  audit trail (O_APPEND, one `write` per batch of lines, fsynced before `append` returns; a torn
  last line from a killed writer is skipped on read and a fresh line started after it). Nothing
  rewrites or truncates it.
- `position.json` (0600): the next offset of each privacy.requests partition, replaced atomically
  after the requests read up to it are in the ledger (so a crash re-reads, never skips; the
  ledger ignores a request id it already holds).

A subject appears in the ledger only as its keyed token (the analytics `account_token`); the raw
account id a request names is kept under the vault (`<lake>/vault/requests/<request>.json`, see
`jobs.requests`), never here.

Events, in the order a request goes through them:

    {"event": "received", "request": "r-1", "kind": "erase", "subject": "<token>",
     "requested_at": "...", "received_at": "...", "deadline": "...",
     "source": "topic"|"file"|"operator", "by": "<login>" (operator only)}
    {"event": "in_progress", "request": "r-1", "at": "...", "found": {...}}
    {"event": "fulfilled", "request": "r-1", "at": "...", "touched": {...}}
    {"event": "refused", "request": "r-1", "at": "...", "reason": "no_data"}
    {"event": "refused", "request": "r-2", "at": "...", "reason": "subject_erased",
     "erased_at": "...", "erasure": "r-1"}  (an access or rectify after the subject's erasure)
    {"event": "enforced", "request": "r-1", "at": "...", "touched": {...}}  (erasure re-applied)

Source `consent` is a consent withdrawal (`jobs.withdrawals`): kind `withdraw`, with the
withdrawn `purpose`, `requested_at` the withdrawal's time, named `withdraw-<digest of the token,
purpose and time>`; recorded by the pass that first reads it in consent.events, fulfilled by the
purge of what the account's earlier calls held under the purpose, and re-applied (`enforced`)
when calls of before it land later.

Source `operator` is an operator's direct erasure (`callpipe jobs erase --account ID`,
`jobs.erase_direct`): an erase request the operator makes and fulfils at once, named
`op-erase-<digest of the token>` (one per subject; a re-run adds an `enforced` event when it
removes anything, `by` who ran it) and answered for from then on like any other erasure.

`fold` turns the events into one `Request` per id (first `received` wins; a later status event
overrides an earlier one, and `fulfilled_at` is the first fulfilment). The deadline is
`requested_at` plus the policy's days for the kind (`pipeline.policy.RequestDeadlines`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from pipeline.policy import RequestDeadlines
from schemas import clock
from sinks.files import append_durably, fsync_dir, read_json_lines
from sinks.layout import REQUESTS

LEDGER = "ledger.jsonl"
POSITION = "position.json"
DIR_MODE = 0o700
FILE_MODE = 0o600
OPEN = ("received", "in_progress")
CLOSED = ("fulfilled", "refused")
REFUSED_KEYS = ("event", "request", "at", "reason")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def ledger_dir(lake: Path) -> Path:
    return lake / REQUESTS


def file_name(request_id: str) -> str:
    """A request id as a file name: itself when plain, else a digest (ids come from producers).
    Names a request's intake file (`jobs.requests`) and its access export (`jobs.outbox`)."""
    if _SAFE.match(request_id):
        return request_id
    return "h-" + hashlib.sha256(request_id.encode()).hexdigest()[:32]


def iso(when: datetime) -> str:
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def deadline(requested_at: datetime, kind: str, deadlines: RequestDeadlines) -> datetime:
    return requested_at + timedelta(days=deadlines.days_for(kind))


def _ensure_dir(lake: Path) -> Path:
    folder = ledger_dir(lake)
    if not folder.is_dir():
        folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(folder, DIR_MODE)
        fsync_dir(folder.parent)
    return folder


def append(lake: Path, entries: Iterable[Mapping[str, Any]]) -> None:
    """Append events to the ledger, durably (fsynced before returning)."""
    data = b"".join(orjson.dumps(dict(e), option=orjson.OPT_SORT_KEYS) + b"\n" for e in entries)
    if not data:
        return
    append_durably(data, _ensure_dir(lake) / LEDGER, FILE_MODE)


def read(lake: Path) -> list[dict[str, Any]]:
    """Every ledger event, oldest first; torn lines are skipped."""
    entries = read_json_lines(ledger_dir(lake) / LEDGER)
    return [e for e in entries if isinstance(e, dict) and "request" in e and "event" in e]


@dataclass
class Request:
    """One request as the ledger knows it."""

    request: str
    kind: str
    subject: str
    requested_at: str
    received_at: str
    deadline: str
    source: str
    status: str = "received"
    started_at: str | None = None
    fulfilled_at: str | None = None
    refused_at: str | None = None
    reason: str | None = None
    found: dict[str, Any] | None = None
    touched: dict[str, Any] | None = None
    detail: dict[str, Any] | None = None  # a refusal's particulars (subject_erased: when, which erasure)
    by: str | None = None  # who made an operator's request (source "operator")
    reused_id: str | None = None  # the producer's id, when another request held it (`jobs.requests`)
    purpose: str | None = None  # a consent withdrawal's purpose (kind "withdraw", `jobs.withdrawals`)
    enforced: list[dict[str, Any]] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return self.status in OPEN

    def age_days(self, now: datetime) -> float:
        return round(clock.days_between(parse_time(self.requested_at), now), 2)

    def due(self, now: datetime, warn_days: int) -> str:
        """For an open request: "overdue", "due soon" (inside warn_days) or "on time"."""
        left = parse_time(self.deadline) - now
        if left.total_seconds() < 0:
            return "overdue"
        if left <= timedelta(days=warn_days):
            return "due soon"
        return "on time"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def fold(events: Iterable[Mapping[str, Any]]) -> dict[str, Request]:
    """The ledger's events as one Request per id, in the order the requests were received."""
    out: dict[str, Request] = {}
    for e in events:
        rid = str(e["request"])
        kind = e["event"]
        if kind == "received":
            if rid not in out:
                out[rid] = Request(
                    request=rid,
                    kind=str(e["kind"]),
                    subject=str(e["subject"]),
                    requested_at=str(e["requested_at"]),
                    received_at=str(e["received_at"]),
                    deadline=str(e["deadline"]),
                    source=str(e.get("source", "")),
                    by=None if e.get("by") is None else str(e["by"]),
                    reused_id=None if e.get("reused_id") is None else str(e["reused_id"]),
                    purpose=None if e.get("purpose") is None else str(e["purpose"]),
                )
            continue
        req = out.get(rid)
        if req is None:
            continue
        if kind == "in_progress":
            if req.status in CLOSED:
                continue
            req.status = "in_progress"
            req.started_at = req.started_at or e.get("at")
            if req.found is None:
                req.found = e.get("found")
        elif kind == "fulfilled":
            req.status = "fulfilled"
            req.fulfilled_at = req.fulfilled_at or e.get("at")
            req.touched = req.touched or e.get("touched")
        elif kind == "refused":
            req.status = "refused"
            req.refused_at = req.refused_at or e.get("at")
            req.reason = str(e.get("reason"))
            req.detail = {k: v for k, v in e.items() if k not in REFUSED_KEYS} or None
        elif kind == "enforced":
            again = {"at": e.get("at"), "touched": e.get("touched")}
            req.enforced.append(again | ({"by": e["by"]} if "by" in e else {}))
    return out


def requests(lake: Path) -> dict[str, Request]:
    return fold(read(lake))


def erasures(folded: Mapping[str, Request]) -> dict[str, dict[str, str]]:
    """Each erased subject (token) with when and by which request it was first erased
    (`erased_at`, `erasure`), from the fulfilled erase requests of every source."""
    done = [r for r in folded.values() if r.kind == "erase" and r.status == "fulfilled"]
    out: dict[str, dict[str, str]] = {}
    for r in sorted(done, key=lambda r: (r.fulfilled_at or "", r.request)):
        out.setdefault(r.subject, {"erased_at": r.fulfilled_at or "", "erasure": r.request})
    return out


def kind_of(request: Mapping[str, Any]) -> str:
    """A request's kind as screens and the report show it: a withdrawal with its purpose."""
    purpose = request.get("purpose")
    return f"{request['kind']} {purpose}" if purpose else str(request["kind"])


def status(lake: Path, now: datetime, warn_days: int) -> dict[str, Any]:
    """Open requests by age (oldest first) with their deadline state, and totals per status."""
    folded = requests(lake)
    open_ = sorted((r for r in folded.values() if r.open), key=lambda r: (r.requested_at, r.request))
    rows = [
        {
            "request": r.request,
            "kind": r.kind,
            "subject": r.subject,
            "status": r.status,
            **({"purpose": r.purpose} if r.purpose else {}),
            "requested_at": r.requested_at,
            "deadline": r.deadline,
            "age_days": r.age_days(now),
            "due": r.due(now, warn_days),
        }
        for r in open_
    ]
    totals: dict[str, int] = {}
    for r in folded.values():
        totals[r.status] = totals.get(r.status, 0) + 1
    late_closed = sum(
        1
        for r in folded.values()
        if r.fulfilled_at is not None and parse_time(r.fulfilled_at) > parse_time(r.deadline)
    )
    return {
        "as_of": iso(now),
        "open": rows,
        "overdue": sum(1 for r in rows if r["due"] == "overdue"),
        "due_soon": sum(1 for r in rows if r["due"] == "due soon"),
        "totals": totals,
        "fulfilled_late": late_closed,
    }


# ---------------------------------------------------------------- topic position


def read_position(lake: Path) -> dict[int, int]:
    path = ledger_dir(lake) / POSITION
    if not path.exists():
        return {}
    doc = orjson.loads(path.read_bytes())
    return {int(p): int(o) for p, o in doc.get("offsets", {}).items()}


def write_position(lake: Path, topic: str, offsets: Mapping[int, int]) -> None:
    folder = _ensure_dir(lake)
    path = folder / POSITION
    tmp = folder / f".{POSITION}.tmp"
    doc = {"topic": topic, "offsets": {str(p): o for p, o in sorted(offsets.items())}}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.write(fd, orjson.dumps(doc))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(folder)
