"""`callpipe jobs requests`: one pass that records every new data-subject request in the ledger
(`jobs.ledger`) and fulfils every open one, without a human in the loop.

A pass, under the lake's job lock (so it never runs beside another job, and killed jobs are
finished first):
1. Intake (`jobs.requests_intake`). New PrivacyRequests (from privacy.requests, read from the
   ledger's position up to the end offsets taken at the start, and from files given on the
   command line) are recorded: the
   raw account id and corrections to `<lake>/vault/requests/<request>.json` (`jobs.intake`), then
   one `received` ledger event by token, then the topic position. A kill anywhere re-reads and
   the ledger ignores request ids it holds, so nothing is lost or doubled.
2. Fulfilment, oldest request first (an access before an erase of the same subject exports first):
   an `in_progress` event records what the subject's data was when work began (`found`), then:
   - erase: `jobs.erase` over vault, analytics and the dead letters under `_rejects/`, then the
     subject's access exports still in `_outbox/` (`jobs.outbox`: found through this ledger,
     counted as `access_exports_removed`, an access answered earlier in the same pass included).
     A subject erased twice: the second request is fulfilled with nothing left to remove. The
     request's raw-id file is kept in the vault as the suppression list of step 3.
   - access: `jobs.export` of every row of the subject into `<lake>/_outbox/access-<request>.json`
     (0600) with `access-<request>.manifest.json` (checksum, counts, deadline, the subject's
     token) to hand over before `jobs retention` expires them (`retention.outbox.days` after
     fulfilment; an export written by a pass killed before it recorded the fulfilment expires
     that long after work on the request began, and the next pass writes it again).
   - rectify: `jobs.rectify` in the vault and, through the tokens, in analytics.
   - restrict, object: in force in the stream from the request's time on (the worker reads the
     same topic); the subject's existing analytics rows are removed too (restriction: stored in
     the vault only, processed no further; objection: no more analytics processing). unrestrict:
     recorded; nothing to undo (rows kept out of analytics are not rebuilt).
   - withdraw (a consent withdrawal read from consent.events, `jobs.withdrawals`; recorded at
     intake like a request, source `consent`): what the account's calls before the withdrawal
     held under its purpose is removed from every zone (`jobs.withdraw`), and a recording or
     transcription withdrawal removes those calls' dead letters holding one from `_rejects/`
     (those that cannot be searched are counted, `dead_letters_unattributed`, as an erasure's);
     the stream already keeps nothing under it for later calls.
   then `fulfilled` with what it touched (`found`, so a rerun after a kill reports the same), or
   `refused` with a reason: `no_data` (rectify of a subject the lake holds nothing on),
   `invalid_correction`, `subject_erased` (rectify or access after the subject's erasure, by any
   erase request, an operator's direct erasure included: the refusal names when and which,
   `erased_at` and `erasure`; nothing is exported, and step 3 erases rows that landed since).
   An erase or access for a subject the lake holds nothing on is fulfilled (nothing to remove;
   an export that says so).
3. Enforcement. A subject whose events were still streaming in when its erasure ran can have rows
   landed after it (the worker drops its events once it has read the request, not before): every
   pass probes the buckets of the erased subjects (statistics and Bloom filters, cheap) and
   erases what it finds, recorded as an `enforced` ledger event; subjects an operator erased
   directly (`jobs.erase_direct`: an erase request of source `operator`) too. Every erased
   subject is checked at every pass, restored files included (no watermark), so the checks are
   made together: `_rejects/` is read once for all erased subjects and re-checked withdrawals
   (`dead_letters_of`, each dead letter decoded once), and the lake probed bucket by bucket for
   all erased subjects (`rectify.rows_of_many`); then each subject found holding something is
   erased in turn, its `found` what `found_of` would give at its turn (a dead letter it shares
   with a subject erased before it in the loop is no longer counted). An access export
   of an erased subject still in the outbox (left by an erasure that ran before erasure covered
   exports, or one no request names whose manifest names the subject, put back by a restore) is
   removed the same way. Likewise every fulfilled withdrawal is checked again (its account's
   bucket, the days up to the withdrawal: statistics and Bloom filters, then the covered rows;
   and `_rejects/`): a call from before the withdrawal that landed after its purge (late in
   calls.raw, or judged by a worker that had not read the withdrawal yet), or was kept as a dead
   letter since, is purged too, recorded as `enforced` (a withdrawal with no dead letter in this
   pass's read of `_rejects/` and nothing in the lake is passed over: a purge would find nothing). So
   what a withdrawal leaves does not depend on the order calls and consent arrived in.

Each step is idempotent, so a pass killed at any point (kill -9) and run again ends with the same
lake and the same ledger as an uninterrupted pass.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from jobs import audit, erase, export, intake, ledger, outbox, rectify, withdraw, withdrawals
from jobs.intake import write_private
from jobs.ledger import Request, iso
from jobs.outbox import outbox_dir
from jobs.progress import ProgressFn
from jobs.replace import job_lock
from jobs.requests_intake import Batch, ConsentReader, Reader, identities, receive
from jobs.withdrawals import Withdrawal
from pipeline.keys import PseudonymKey
from pipeline.policy import ConsentDefaults, RequestDeadlines
from pipeline.raw_records import Subjects, subject_match
from sinks import rejects
from sinks.layout import ANALYTICS


def _withdrawal(raw: Mapping[str, Any]) -> Withdrawal:
    return Withdrawal(str(raw["account_id"]), str(raw["purpose"]), int(raw["at"]))


def found_of(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    key: PseudonymKey,
    account_id: str,
    kind: str,
    buckets: int,
    exports: int,
) -> dict[str, int]:
    """What the lake holds on the subject for a request of `kind`; an erasure also counts the
    subject's access exports in the outbox (`exports`, the caller's count)."""
    if kind == "unrestrict":
        return {}
    rows = rectify.rows_of(con, lake, key, account_id, buckets)
    if kind in ("restrict", "object"):
        return {ANALYTICS: rows[ANALYTICS]}
    if kind == "erase":
        dead = rejects.find(lake, subject_match(account_id)).count
        return {**rows, "dead_letters": dead, "access_exports": exports}
    return rows


def erasure_touched(found: Mapping[str, Any], removed_now: int) -> dict[str, Any]:
    """An erasure's ledger record from its `found`: rows per zone and the access exports removed
    (a count; `removed_now` for a ledger whose `found` predates the count)."""
    rows = {k: v for k, v in found.items() if k != "access_exports"}
    return {"rows_removed": rows, "access_exports_removed": int(found.get("access_exports", removed_now))}


def fulfil_erase(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    key: PseudonymKey,
    req: Request,
    account_id: str,
    erased: Mapping[str, Any],
    *,
    buckets: int,
    by: str | None = None,
    progress: ProgressFn | None = None,
    recovered: list[tuple[str, str]] | None = None,
) -> tuple[dict[str, Any], erase.EraseResult]:
    """Erase the subject of an erase request whose `found` is recorded: lake, dead letters, then
    its access exports (an access answered earlier in this pass included). Returns the ledger's
    record, made from `found` so that a rerun after a kill reports the same, and what this run
    removed. `erased` holds the subjects erased before (their erasure notes "already erased")."""
    found = req.found or {}
    done = erase.erase_locked(
        con,
        lake,
        key,
        account_id,
        buckets=buckets,
        request=req.request,
        by=by,
        progress=progress,
        recovered=recovered,
    )
    note = (
        "already erased" if req.subject in erased else ("no data held" if not any(found.values()) else None)
    )
    touched = erasure_touched(found, done.access_exports_removed)
    return {**touched, **({"note": note} if note else {})}, done


def _access(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    key: PseudonymKey,
    req: Request,
    account_id: str,
    now: datetime,
) -> dict[str, Any]:
    started = time.monotonic()
    doc = export.collect(con, lake, key, account_id, now)
    # An earlier attempt at this very request (killed after its audit entry, before the ledger's
    # `fulfilled`) is no part of the answer: the rerun hands over what an unbroken pass would.
    doc["audit"] = [e for e in doc["audit"] if e.get("params", {}).get("request") != req.request]
    doc["counts"]["audit"] = len(doc["audit"])
    doc["request"] = {"request_id": req.request, "requested_at": req.requested_at, "deadline": req.deadline}
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_UTC_Z)
    name, manifest_name = outbox.access_names(req.request)
    write_private(outbox_dir(lake) / name, data)
    manifest = {
        "request": req.request,
        "kind": "access",
        "subject": req.subject,
        "requested_at": req.requested_at,
        "deadline": req.deadline,
        "generated_at": iso(now),
        "file": name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "counts": doc["counts"],
        "format": "JSON (UTF-8): vault rows, analytics rows, dead letters, audit entries of the subject",
    }
    manifest_data = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
    write_private(outbox_dir(lake) / manifest_name, manifest_data)
    audit.record(
        lake,
        job="export",
        params={"subject": req.subject, "request": req.request, "key_version": key.version},
        counts={**doc["counts"], "files_read": doc["files_read"]},
        files=[  # what is handed over, by checksum: the audit says which file the subject got
            {
                "path": outbox_dir(lake) / name,
                "sha256": manifest["sha256"],
                "action": "added",
                "bytes": len(data),
            },
            {
                "path": outbox_dir(lake) / manifest_name,
                "sha256": hashlib.sha256(manifest_data).hexdigest(),
                "action": "added",
                "bytes": len(manifest_data),
            },
        ],
        duration_s=time.monotonic() - started,
        outcome="ok",
        at=now,
    )
    return {"outbox": name, "counts": doc["counts"]}


def _fulfil(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    key: PseudonymKey,
    req: Request,
    raw: Mapping[str, Any],
    erased: Mapping[str, Mapping[str, str]],
    now: datetime,
    buckets: int,
) -> tuple[str, dict[str, Any]]:
    """Do what the request asks; returns ("fulfilled", touched) or ("refused", {"reason": ...})."""
    account_id = str(raw["account_id"])
    found = req.found or {}
    if req.kind == "erase":
        touched, done = fulfil_erase(con, lake, key, req, account_id, erased, buckets=buckets)
        if done.dead_letters_unattributed:  # done, but not verified: the operator must know
            touched = {**touched, "dead_letters_unattributed": done.dead_letters_unattributed}
        return "fulfilled", touched
    if req.kind == withdrawals.KIND:
        # run even when nothing was found: it counts the dead letters nobody can tell about
        purge = withdraw.purge_locked(con, lake, key, _withdrawal(raw), buckets=buckets, request=req.request)
        touched = {"removed": found, "purpose": str(raw["purpose"])}
        if purge.dead_letters_unattributed:  # done, but not verified, as for an erasure
            touched["dead_letters_unattributed"] = purge.dead_letters_unattributed
        return "fulfilled", touched
    if req.subject in erased and req.kind in ("access", "rectify"):
        # Nothing is exported: the answer is the erasure (when, by which request). Rows that
        # landed after it are erased by this pass's enforcement, never handed over.
        return "refused", {"reason": "subject_erased", **erased[req.subject]}
    if req.kind == "access":
        return "fulfilled", {"rows_exported": found, **_access(con, lake, key, req, account_id, now)}
    if req.kind == "rectify":
        try:
            fixes = rectify.corrections_of(raw.get("corrections"))
        except (rectify.InvalidCorrection, KeyError, TypeError):
            return "refused", {"reason": "invalid_correction"}
        if not any(found.values()):
            return "refused", {"reason": "no_data"}
        rectify.rectify_locked(con, lake, key, account_id, fixes, buckets=buckets, request=req.request)
        return "fulfilled", {"rows_held": found, "attributes": sorted({f.attribute for f in fixes})}
    if req.kind in ("restrict", "object"):
        if found.get(ANALYTICS):
            erase.erase_locked(
                con,
                lake,
                key,
                account_id,
                buckets=buckets,
                zones=(ANALYTICS,),
                request=req.request,
                job=req.kind,
            )
        return "fulfilled", {"analytics_rows_removed": found.get(ANALYTICS, 0), "in_force": "stream"}
    return "fulfilled", {"in_force": "stream"}  # unrestrict


def _erased_subjects(lake: Path, folded: Mapping[str, Request]) -> list[tuple[Request, str]]:
    """Each erased subject's first fulfilled erase request, with the raw account id its intake
    file keeps (the suppression list), in ledger order."""
    out, seen = [], set()
    for req in folded.values():
        if req.kind != "erase" or req.status != "fulfilled" or req.subject in seen:
            continue
        seen.add(req.subject)
        raw = intake.read(lake, req.request)
        if raw is not None:
            out.append((req, str(raw["account_id"])))
    return out


def _checked_withdrawals(
    key: PseudonymKey, found: Iterable[Withdrawal], folded: Mapping[str, Request], skip: set[str]
) -> list[tuple[str, Withdrawal]]:
    """The fulfilled withdrawals to check again (`skip`: the requests fulfilled by this pass)."""
    out = []
    for w in found:
        rid = withdrawals.request_id(key, w)
        req = folded.get(rid)
        if req is not None and req.status == "fulfilled" and rid not in skip:
            out.append((rid, w))
    return out


def dead_letters_of(
    lake: Path, accounts: Sequence[str], checks: Sequence[Withdrawal]
) -> tuple[dict[str, rejects.Found], list[rejects.Found]]:
    """In one read of `_rejects/`: each account's dead letters, as `rejects.find(lake,
    subject_match(account))` finds them, and each withdrawal's, as `withdraw.purge_locked` finds
    them (`withdrawals.covers_dead_letter`). Each dead letter is decoded once for all of them
    (`raw_records.Subjects`)."""
    erased = set(accounts)
    covering: dict[str, list[int]] = {}
    for i, w in enumerate(checks):
        if withdrawals.dead_letter_fields(w.purpose):
            covering.setdefault(w.account_id, []).append(i)
    subjects = Subjects([*accounts, *covering])

    def match(raw: bytes) -> dict[tuple[str, Any], bool | None]:
        found, verdicts = subjects.verdicts(raw)
        out: dict[tuple[str, Any], bool | None] = {
            ("erase", a): v for a, v in verdicts.items() if a in erased
        }
        if found is not None:
            for account, whose in verdicts.items():
                for i in covering.get(account, ()):
                    covered = withdrawals.covers_read(checks[i], found, whose)
                    if covered is not False:
                        out[("withdraw", i)] = covered
        return out

    keys: list[tuple[str, Any]] = [("erase", a) for a in accounts]
    keys += [("withdraw", i) for ids in covering.values() for i in ids]
    each = rejects.find_each(lake, match, keys)
    none = rejects.Found([], 0)
    return {a: each[("erase", a)] for a in accounts}, [
        each.get(("withdraw", i), none) for i in range(len(checks))
    ]


def _enforce(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    key: PseudonymKey,
    folded: Mapping[str, Request],
    subjects: Sequence[tuple[Request, str]],
    dead: Mapping[str, rejects.Found],
    now: datetime,
    buckets: int,
) -> list[dict[str, Any]]:
    """Erase rows of already-erased subjects (`subjects`, their dead letters `dead` as this pass's
    one read of `_rejects/` found them) that landed after their erasure, and access exports of
    theirs still in the outbox. What each holds is what `found_of` would find when its turn
    comes: the lake probed for all of them together (rows of one subject are no other's), and a
    dead letter also another's, erased earlier in the loop, no longer counted."""
    events = []
    held = outbox.access_exports(lake, folded)
    rows = rectify.rows_of_many(con, lake, key, [account for _req, account in subjects], buckets)
    gone: set[tuple[Path, int]] = set()  # dead letters erased by this loop, as the read saw them
    for req, account_id in subjects:
        letters = [(h.path, i) for h in dead[account_id].hits for i in h.matching]
        exports = sum(1 for e in held.get(req.subject, []) if e.holds_data)
        found = {
            **rows[account_id],
            "dead_letters": sum(1 for letter in letters if letter not in gone),
            "access_exports": exports,
        }
        if not any(found.values()):
            continue
        done = erase.erase_locked(con, lake, key, account_id, buckets=buckets, request=req.request)
        gone.update(letters)
        event = {
            "event": "enforced",
            "request": req.request,
            "at": iso(now),
            "touched": erasure_touched(found, done.access_exports_removed),
        }
        ledger.append(lake, [event])
        events.append(event)
    return events


def _enforce_withdrawals(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    key: PseudonymKey,
    checks: Sequence[tuple[str, Withdrawal]],
    dead: Sequence[rejects.Found],
    now: datetime,
    buckets: int,
) -> list[dict[str, Any]]:
    """Purge again what fulfilled withdrawals (`checks`) cover and landed since (calls of before a
    withdrawal that arrived after its purge). `dead`: the dead letters each covered when this
    pass read `_rejects/` (erasure only removes some since): a withdrawal with none, and nothing
    in the lake, has nothing to purge and is passed over."""
    events = []
    for (rid, w), letters in zip(checks, dead, strict=True):
        if not letters.hits and not withdraw.held_in_lake(con, lake, key, w, buckets=buckets):
            continue
        removed = withdraw.purge_locked(con, lake, key, w, buckets=buckets, request=rid).removed
        if not any(removed.values()):  # nothing landed since: nothing rewritten, nothing recorded
            continue
        event = {"event": "enforced", "request": rid, "at": iso(now), "touched": {"removed": removed}}
        ledger.append(lake, [event])
        events.append(event)
    return events


def run(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    key: PseudonymKey,
    *,
    buckets: int,
    deadlines: RequestDeadlines,
    now: datetime,
    topic: Reader | None = None,
    files: Iterable[Batch] = (),
    consent: ConsentReader | None = None,
    consent_defaults: ConsentDefaults | None = None,
) -> dict[str, Any]:
    """One pass: intake, fulfilment, enforcement. Returns counts and the ledger status. Without
    `consent` (no broker) withdrawals are neither recorded nor re-checked."""
    started = time.monotonic()
    with job_lock(lake) as recovered:
        folded = ledger.requests(lake)
        known = identities(folded)
        received = rejected = reused = 0
        # the topic is read first: a broker out of reach fails the pass before anything is recorded
        from_topic = topic(ledger.read_position(lake)) if topic is not None else None
        states = consent() if consent is not None else {}
        withdrawn = withdrawals.withdrawals(states, consent_defaults or ConsentDefaults())
        for batch in [*files, *([from_topic] if from_topic is not None else [])]:
            new, again = receive(lake, key, batch, now, deadlines, known)
            received, reused = received + new, reused + again
        from_consent = Batch(records=withdrawals.as_requests(key, withdrawn), source="consent")
        withdrawals_received, _ = receive(lake, key, from_consent, now, deadlines, known)
        if from_topic is not None:
            rejected += from_topic.rejected
            if from_topic.position is not None and from_topic.topic is not None:
                ledger.write_position(lake, from_topic.topic, from_topic.position)
        folded = ledger.requests(lake)
        for done in folded.values():  # a kill between the closing event and the unlink
            if not done.open and done.kind != "erase":
                intake.forget(lake, done.request)
        erased = ledger.erasures(folded)
        outcomes: dict[str, int] = {}
        reasons: dict[str, int] = {}  # refusals by kind and reason (a code, never a value)
        handled: set[str] = set()
        not_verified = 0  # erasures (withdrawals too) fulfilled with dead letters not searched
        for req in sorted((r for r in folded.values() if r.open), key=lambda r: (r.requested_at, r.request)):
            raw = intake.read(lake, req.request)
            if raw is None:  # cannot happen: intake is written before the ledger line
                ledger.append(
                    lake,
                    [
                        {
                            "event": "refused",
                            "request": req.request,
                            "at": iso(now),
                            "reason": "intake_missing",
                        }
                    ],
                )
                continue
            if req.found is None and req.kind == withdrawals.KIND:
                found = withdraw.held(con, lake, key, _withdrawal(raw), buckets=buckets)
                ledger.append(
                    lake, [{"event": "in_progress", "request": req.request, "at": iso(now), "found": found}]
                )
                req.found = found
            if req.found is None:
                exports = outbox.count_access_exports(lake, req.subject, folded) if req.kind == "erase" else 0
                found = found_of(con, lake, key, str(raw["account_id"]), req.kind, buckets, exports)
                ledger.append(
                    lake, [{"event": "in_progress", "request": req.request, "at": iso(now), "found": found}]
                )
                req.found = found
            state, detail = _fulfil(con, lake, key, req, raw, erased, now, buckets)
            if state == "fulfilled":
                not_verified += 1 if detail.get("dead_letters_unattributed") else 0
                ledger.append(
                    lake, [{"event": "fulfilled", "request": req.request, "at": iso(now), "touched": detail}]
                )
            else:
                ledger.append(lake, [{"event": "refused", "request": req.request, "at": iso(now), **detail}])
                why = f"{req.kind} {detail['reason']}"
                reasons[why] = reasons.get(why, 0) + 1
            if req.kind == "erase":
                # the raw-id file stays: the suppression list of _enforce
                erased.setdefault(req.subject, {"erased_at": iso(now), "erasure": req.request})
            else:
                intake.forget(lake, req.request)
            outcomes[f"{req.kind} {state}"] = outcomes.get(f"{req.kind} {state}", 0) + 1
            handled.add(req.request)
        # Enforcement: `_rejects/` read once for every erased subject and re-checked withdrawal
        folded = ledger.requests(lake)
        subjects = _erased_subjects(lake, folded)
        checks = _checked_withdrawals(key, withdrawn, folded, handled)
        dead, covered = dead_letters_of(lake, [a for _req, a in subjects], [w for _rid, w in checks])
        enforced = _enforce(con, lake, key, folded, subjects, dead, now, buckets)
        reapplied = _enforce_withdrawals(con, lake, key, checks, covered, now, buckets)
        result = {
            "received": received,
            "reused_ids": reused,
            "withdrawals_received": withdrawals_received,
            "rejected_messages": rejected,
            "handled": outcomes,
            "refused_reasons": reasons,
            "enforced": len(enforced),
            "withdrawals_enforced": len(reapplied),
            "erasures_not_verified": not_verified,
            "recovered_runs": len(recovered),
        }
        audit.record(
            lake,
            job="requests",
            params={},
            counts={
                "received": received,
                "reused_ids": reused,
                "withdrawals_received": withdrawals_received,
                "handled": sum(outcomes.values()),
                "enforced": len(enforced),
                "withdrawals_enforced": len(reapplied),
            },
            files=[],
            duration_s=time.monotonic() - started,
            outcome="ok",
            at=now,
        )
    return result
