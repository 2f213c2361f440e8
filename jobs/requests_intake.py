"""Intake of data-subject requests: what a pass reads (`Batch`, from the topic or a file) is
recorded, each new request's raw id in its intake file (`jobs.intake`) and then one `received`
line in the ledger by token (`jobs.ledger`). A request sent again is the one already recorded;
another request under an id the ledger holds is recorded under a derived id (`receive`)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs import audit, intake, ledger
from jobs.ledger import Request, iso
from pipeline.consent import AccountState
from pipeline.keys import PseudonymKey
from pipeline.policy import RequestDeadlines


@dataclass(frozen=True)
class Batch:
    """Requests read from one source, and the topic position to record once they are in the ledger."""

    records: list[dict[str, Any]]
    source: str  # "topic", "file", or "consent" (withdrawals read from consent.events)
    topic: str | None = None
    position: dict[int, int] | None = None
    rejected: int = 0  # messages that were not PrivacyRequests (counted, never quoted)


Reader = Callable[[dict[int, int]], Batch]  # position -> what the topic holds past it
ConsentReader = Callable[[], Mapping[str, AccountState]]  # consent.events read whole, by account


Identity = tuple[str, str, str]  # subject token, kind, requested_at: what makes two requests one


def identities(folded: Mapping[str, Request]) -> dict[str, Identity]:
    return {rid: (r.subject, r.kind, r.requested_at) for rid, r in folded.items()}


def receive(
    lake: Path,
    key: PseudonymKey,
    batch: Batch,
    now: datetime,
    deadlines: RequestDeadlines,
    known: dict[str, Identity],
) -> tuple[int, int]:
    """Record the batch's new requests (intake, then ledger); returns how many were new, and how
    many of those came with an id another request holds.

    A request sent again (same id, subject, kind and time) is the one already recorded. Another
    request under a known id (carriers number their own requests, and several produce to one
    topic) is recorded under the id and a digest of what it asks (`reused_id` keeps the
    producer's): skipping it would leave a subject's erasure unanswered and untracked."""
    entries = []
    reused = 0
    for rec in batch.records:
        given = rid = str(rec["request_id"])
        requested = datetime.fromtimestamp(int(rec["at"]) / 1000, UTC)
        kind = str(rec["kind"])
        subject = audit.subject_ref(key, str(rec["account_id"]))
        identity = (subject, kind, iso(requested))
        if rid in known and known[rid] != identity:
            rid = f"{given}.{hashlib.blake2b('|'.join(identity).encode(), digest_size=5).hexdigest()}"
        if rid in known:
            continue
        known[rid] = identity
        doc = {
            "request_id": rid,
            "account_id": rec["account_id"],
            "kind": kind,
            "at": int(rec["at"]),
            "corrections": rec.get("corrections"),
        }
        purpose = {"purpose": str(rec["purpose"])} if rec.get("purpose") else {}  # a withdrawal's
        intake.write(lake, rid, doc | purpose)
        entries.append(
            {
                "event": "received",
                "request": rid,
                "kind": kind,
                "subject": subject,
                "requested_at": iso(requested),
                "received_at": iso(now),
                # counted from receipt when the request is stamped later: a carrier's clock
                # ahead must not buy time
                "deadline": iso(ledger.deadline(min(requested, now), kind, deadlines)),
                "source": batch.source,
                "at": iso(now),
            }
            | ({"reused_id": given} if rid != given else {})
            | purpose
        )
        reused += rid != given
    ledger.append(lake, entries)
    return len(entries), reused
