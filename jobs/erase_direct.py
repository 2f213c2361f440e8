"""An operator's direct erasure, `callpipe jobs erase --account ID`, as the request ledger records it.

A subject an operator erases is erased exactly as by an erase request (`jobs.erase`), and the
request ledger (`jobs.ledger`) says so: the erasure is an erase request of source `operator` that
the operator makes and fulfils at once, under the job lock, in the requests job's own steps:

0. the request, published to privacy.requests (`announce`, given by the caller; `--no-topic` gives
   none) so that running stream workers drop the subject's later events from now on;
1. the account id to `<lake>/vault/requests/<request>.json` (`jobs.intake`), then a `received`
   ledger event naming the subject by token, with the run's time and `by` (who ran it);
2. `in_progress` with what the lake holds on the subject (`found`: rows per zone, dead letters,
   access exports), before anything is removed;
3. the erasure (`jobs.requests.fulfil_erase`), audited with the request and `by`;
4. `fulfilled` with what was removed: counts, never values.

So whatever answers for erased subjects answers for this one too. An access or rectify request of
the subject, open when the erasure ran or arriving later, is refused `subject_erased` with the
erasure's time and request (`jobs.requests`) rather than answered with an export of whatever
landed since: those rows are due for erasure themselves, and an export would hand over a fresh
copy of data the ledger says is gone. An erase request after it is fulfilled as "already erased".
`jobs requests --status`, the report and the ledger show it.

The stream learns of the erasure from privacy.requests, as of any erasure: step 0 publishes the
PrivacyRequest the intake file holds (the same id, kind erase, the account id, `at` the first
erasure's time) before anything of the lake is touched, so a broker out of reach fails the run
with nothing changed, and from the moment the erasure starts no worker lands a new event of the
subject (it drops them, counted as `erased`). Events the worker landed before it read the request
are removed by the erasure itself or, if they land while it runs, by the next `jobs requests`
pass (its enforcement reads the kept intake file). That pass also reads the request back from the
topic and finds its id in the ledger already: it changes nothing. A re-run publishes it again,
which is as harmless (a worker keeps one erase per account); it tells the stream of an erasure
run earlier with `--no-topic`.

The request id is one per subject, `op-erase-<digest of the token>` (never the account id), so a
re-run finds its request. A run killed anywhere leaves the lake in its old or its new state
(`jobs.replace`) and the ledger at received or in_progress: an open request `--status` shows,
which running the command again, or the next `jobs requests` pass, fulfils with the same record.
A re-run after the fulfilment erases again: when it removes anything (rows landed since), the
ledger gets an `enforced` event with the counts and `by`; when it removes nothing, the ledger is
left as it was (the audit trail records every run).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from jobs import audit, erase, intake, ledger, outbox, requests
from jobs.erase import EraseResult
from jobs.ledger import Request, iso
from jobs.progress import ProgressFn
from jobs.replace import job_lock
from pipeline.keys import PseudonymKey
from pipeline.policy import RequestDeadlines

SOURCE = "operator"
KIND = "erase"


def request_id(token: str) -> str:
    """The ledger id of the operator's erasure of a subject: one per subject, from its token."""
    return "op-erase-" + hashlib.sha256(f"operator-erase:{token}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class DirectErasure:
    """What the erasure removed (`erasure`) and what the request ledger holds of it."""

    erasure: EraseResult
    request: str  # the ledger's id of this subject's operator erasure
    recorded: str  # this run's ledger event: "fulfilled", "enforced" (a re-run removed more) or "none"
    erased_at: str | None  # when the ledger says the subject was first erased (by any request)
    open_requests: int  # the subject's requests still open, for the next `jobs requests` pass
    published: bool  # the request was published to privacy.requests (the stream was told)

    def as_dict(self) -> dict[str, object]:
        return {
            **self.erasure.as_dict(),
            "request": self.request,
            "published": self.published,
            "recorded": self.recorded,
            "erased_at": self.erased_at,
            "open_requests": self.open_requests,
        }


def _receive(
    lake: Path, rid: str, token: str, now: datetime, deadlines: RequestDeadlines, by: str
) -> Request:
    ledger.append(
        lake,
        [
            {
                "event": "received",
                "request": rid,
                "kind": KIND,
                "subject": token,
                "requested_at": iso(now),
                "received_at": iso(now),
                "deadline": iso(ledger.deadline(now, KIND, deadlines)),
                "source": SOURCE,
                "by": by,
                "at": iso(now),
            }
        ],
    )
    return ledger.requests(lake)[rid]


def _removed(done: EraseResult) -> dict[str, Any]:
    """A re-run's ledger record, in the shape of `requests.erasure_touched`, from what it removed."""
    rows = {**done.rows_removed, "dead_letters": done.dead_letters_removed}
    return {"rows_removed": rows, "access_exports_removed": done.access_exports_removed}


def run(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    key: PseudonymKey,
    account_id: str,
    *,
    buckets: int,
    deadlines: RequestDeadlines,
    now: datetime,
    by: str,
    progress: ProgressFn | None = None,
    announce: Callable[[dict[str, Any]], None] | None = None,
) -> DirectErasure:
    """Erase one account and record it in the request ledger as an operator's erase request made
    and fulfilled at `now` by `by`. `announce` publishes the request (a PrivacyRequest) to
    privacy.requests before the lake is touched; what it raises stops the run with nothing
    changed. Raises `erase.ErasureIncomplete` if verification still finds rows (the request then
    stays open)."""
    with job_lock(lake) as recovered:
        token = audit.subject_ref(key, account_id)
        rid = request_id(token)
        folded = ledger.requests(lake)
        kept = intake.read(lake, rid)
        at = int(now.timestamp() * 1000)
        doc = kept or {
            "request_id": rid,
            "account_id": account_id,
            "kind": KIND,
            "at": at,
            "corrections": None,
        }
        if announce is not None:
            announce(dict(doc))
        if kept is None:  # before the ledger line, as the requests job does
            intake.write(lake, rid, doc)
        req = folded.get(rid) or _receive(lake, rid, token, now, deadlines, by)
        if req.open:
            if req.found is None:
                exports = outbox.count_access_exports(lake, token, folded)
                req.found = requests.found_of(con, lake, key, account_id, KIND, buckets, exports)
                ledger.append(
                    lake, [{"event": "in_progress", "request": rid, "at": iso(now), "found": req.found}]
                )
            before = ledger.erasures({r: q for r, q in folded.items() if r != rid})
            touched, done = requests.fulfil_erase(
                con,
                lake,
                key,
                req,
                account_id,
                before,
                buckets=buckets,
                by=by,
                progress=progress,
                recovered=recovered,
            )
            ledger.append(lake, [{"event": "fulfilled", "request": rid, "at": iso(now), "touched": touched}])
            recorded = "fulfilled"
        else:
            done = erase.erase_locked(
                con,
                lake,
                key,
                account_id,
                buckets=buckets,
                request=rid,
                by=by,
                progress=progress,
                recovered=recovered,
            )
            again = _removed(done)
            recorded = "none"
            if any(again["rows_removed"].values()) or again["access_exports_removed"]:
                event = {"event": "enforced", "request": rid, "at": iso(now), "touched": again, "by": by}
                ledger.append(lake, [event])
                recorded = "enforced"
        after = ledger.requests(lake)
        first = ledger.erasures(after).get(token, {})
        pending = sum(1 for r in after.values() if r.open and r.subject == token)
    return DirectErasure(done, rid, recorded, first.get("erased_at"), pending, announce is not None)
