"""Erasure: remove one data subject from the vault (account_id) and analytics (account token).

This is the mechanism both erasures use, under the job lock their callers hold: an erase request
(`jobs.requests`) and an operator's direct erasure (`callpipe jobs erase`, `jobs.erase_direct`,
which records itself in the request ledger as an erase request). It writes no ledger itself.

Only files that may hold the subject are rewritten (`jobs.subject.locate`: bucket, statistics,
Bloom filters, then an exact count), all through one intent journal (`jobs.replace`), so a
killed run leaves the subject either fully present or fully gone and the next run finishes.
A file that held only the subject is deleted rather than rewritten empty. Physical deletion
happens when the job finishes: the old files are replaced, nothing keeps them (no snapshots).

Afterwards erasure verifies: every file of both zones, in every bucket, is probed again (footers
and Bloom filters only), and any file that may still hold the subject is read. Rows found
outside the subject's bucket (a lake written with another bucket count) are erased in a second
pass; anything left after it fails the job. The subject's dead letters kept by `callpipe ingest`
and the stream (`<lake>/_rejects/`, see `sinks.rejects`) are removed in the same change
(`jobs.dead_letters`): those whose decoded records carry the account id, or whose bytes spell it
in any JSON or Avro form (`pipeline.raw_records`). A dead letter that can be neither decoded nor
searched (damaged compressed bytes) cannot be tied to anyone: verification counts those
(`dead_letters_unattributed`), in the result and the audit, for the operator; the erasure is then
not reported as covering them (`jobs retention` expires them by their own clock). The request is recorded
in the audit trail by the subject's token, never its id, with the request it fulfils.

Erasure covers every copy callpipe can rewrite (not calls.dlq, a Kafka log: its sealed copies are
withheld by `dlq inspect`/`replay` until retention, pipeline/stream/withhold.py): after the lake,
the subject's access exports still in
the outbox (`<lake>/_outbox/access-<request>.json`, its manifest and temps, found through the
request ledger, or through the manifest of an export no request names; see `jobs.outbox`) are
deleted durably and counted (`access_exports_removed`). Files there that no subject can be tied to
without opening them (an export without its manifest, a file put there by hand) are not opened:
they are counted (`outbox_files_unattributed`) for the operator, and `jobs retention` expires them
by their own clock. A run killed between the lake and the outbox is finished by running it again
(the lake part then finds nothing). A restriction or objection (`zones` = analytics only) keeps
them: the subject keeps its data.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.compute as pc

from jobs import audit, dead_letters, ledger, outbox
from jobs.progress import ProgressFn
from jobs.replace import Change, parallel, run_change, write_parquet
from jobs.subject import Located, locate
from pipeline.keys import Domain, PseudonymKey
from pipeline.raw_records import subject_match
from schemas.zones import SUBJECT_COLUMN
from sinks import crypt, rejects
from sinks.layout import ANALYTICS, VAULT, bucket_of


class ErasureIncomplete(RuntimeError):
    """Rows of the subject remain after erasure (the message holds counts, never the id)."""


@dataclass(frozen=True)
class EraseResult:
    """What an erasure did, as its audit entry counts it (`as_dict` is `--json`'s output)."""

    subject: str  # the account token
    rows_removed: dict[str, int]  # by zone
    dead_letters_removed: int
    dead_letters_unattributed: int  # dead letters that cannot be told whose: not searched
    access_exports_removed: int  # the subject's access exports deleted from the outbox
    outbox_files_unattributed: int  # outbox files tied to no subject: erasure cannot tell if theirs
    files_total: int
    files_probed: int  # files whose footers were read
    files_maybe: int  # files whose statistics or Bloom filter said the subject may be there
    files_rewritten: int
    files_touched_share: float
    files_outside_bucket: int  # files outside the subject's bucket that held it (a second pass)
    rows_remaining: int
    recovered_runs: int  # killed jobs completed first
    duration_s: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _values(key: PseudonymKey, account_id: str) -> dict[str, str]:
    return {VAULT: account_id, ANALYTICS: key.token(Domain.ACCOUNT, account_id)}


def _erase_files(
    lake: Path,
    located: list[Located],
    values: dict[str, str],
    dead: list[rejects.Hits],
    progress: ProgressFn | None,
    extra: dict[str, Any],
) -> tuple[Change, list[dict[str, Any]], dict[str, int]]:
    change = Change(lake, "erase")
    work = []
    letters = dead_letters.plan(change, dead)
    files_audit: list[dict[str, Any]] = list(letters.files)
    removed = {VAULT: 0, ANALYTICS: 0, "dead_letters": letters.count}
    for loc in located:
        for name, rows in sorted(loc.hits.items()):
            src = Path(name)
            if rows == crypt.read_metadata(src).num_rows:  # only the subject's rows: delete the file
                change.remove(src)
                removed[loc.zone] += rows
                files_audit.append(audit.file_removed(lake, src, rows=0))
            else:
                work.append((loc.zone, src, rows, change.temp_for(src)))

    def rewrite(item: tuple[str, Path, int, Path]) -> dict[str, Any]:
        zone, src, _rows, tmp = item
        table = crypt.read_table(src)
        column = table[SUBJECT_COLUMN[zone]]
        kept = table.filter(pc.invert(pc.fill_null(pc.equal(column, values[zone]), False)))
        write_parquet(kept, tmp, zone)
        return {
            **audit.file_replaced(lake, src, tmp, kept.num_rows),
            "removed": table.num_rows - kept.num_rows,
            "zone": zone,
        }

    def write() -> None:
        files_audit.extend(letters.write())
        for entry in parallel(rewrite, work, progress):
            removed[entry.pop("zone")] += entry.pop("removed")
            files_audit.append(entry)
        change.info = {
            "params": {"subject": values[ANALYTICS], **extra},
            "counts": dict(removed),
            "files": files_audit,
        }

    run_change(change, write)
    return change, files_audit, removed


def plan(
    con: duckdb.DuckDBPyConnection, lake: Path, key: PseudonymKey, account_id: str, *, buckets: int
) -> dict[str, Any]:
    """What erasure would change (a dry run: reads footers, Bloom filters and the subject column;
    takes no lock and touches nothing)."""
    values = _values(key, account_id)
    bucket = bucket_of(values[ANALYTICS], buckets)
    located = [locate(con, lake, zone, values[zone], bucket) for zone in (VAULT, ANALYTICS)]
    dead = rejects.find(lake, subject_match(account_id))
    requests = ledger.requests(lake)
    files_total = sum(loc.files_total for loc in located)
    rewritten = sum(len(loc.hits) for loc in located)
    return {
        "dry_run": True,
        "subject": values[ANALYTICS],
        "bucket": bucket,
        "rows_removed": {loc.zone: sum(loc.hits.values()) for loc in located},
        "dead_letters_removed": dead.count,
        "dead_letters_unattributed": dead.unattributed,
        "access_exports_removed": outbox.count_access_exports(lake, values[ANALYTICS], requests),
        "outbox_files_unattributed": outbox.unattributed(lake, requests),
        "files": sorted(str(Path(f).relative_to(lake)) for loc in located for f in loc.hits),
        "files_total": files_total,
        "files_probed": sum(loc.files_probed for loc in located),
        "files_maybe": sum(loc.files_maybe for loc in located),
        "files_rewritten": rewritten,
        "files_touched_share": round(rewritten / files_total, 4) if files_total else 0.0,
    }


def erase_locked(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    key: PseudonymKey,
    account_id: str,
    *,
    buckets: int,
    zones: tuple[str, ...] = (VAULT, ANALYTICS),
    request: str | None = None,
    by: str | None = None,
    progress: ProgressFn | None = None,
    recovered: list[tuple[str, str]] | None = None,
    job: str = "erase",
) -> EraseResult:
    """Erase one account; the caller holds the job lock (`jobs.requests`, `jobs.erase_direct`).
    Returns counts (rows removed per zone, files touched and their share); raises
    ErasureIncomplete if verification still finds rows. `zones` limits the erasure (a
    restriction removes analytics rows only; dead letters go with the vault); `request` names the
    data-subject request it fulfils in the audit entry, `by` the operator who made it."""
    started = time.monotonic()
    values = _values(key, account_id)
    token = values[ANALYTICS]
    bucket = bucket_of(token, buckets)
    extra: dict[str, Any] = {} if request is None else {"request": request}
    if by is not None:
        extra["by"] = by
    if zones != (VAULT, ANALYTICS):
        extra["zones"] = list(zones)
    located = [locate(con, lake, zone, values[zone], bucket) for zone in zones]
    dead = rejects.find(lake, subject_match(account_id)).hits if VAULT in zones else []
    change, files_audit, removed = _erase_files(lake, located, values, dead, progress, extra)
    audit_run = change.run
    # Verification over every bucket: footers and Bloom filters, then exact counts.
    verify = [locate(con, lake, zone, values[zone], None) for zone in zones]
    outside = sum(len(v.hits) for v in verify)
    if outside:
        change.finish()  # the first pass is complete; audit it with the second
        second, more_files, more_removed = _erase_files(lake, verify, values, [], progress, extra)
        files_audit += more_files
        for zone, n in more_removed.items():
            removed[zone] += n
        change, audit_run = second, second.run
        verify = [locate(con, lake, zone, values[zone], None) for zone in zones]
    remaining = sum(sum(v.hits.values()) for v in verify)
    dead_unattributed = 0
    if VAULT in zones:
        dead_left = rejects.find(lake, subject_match(account_id))
        remaining += dead_left.count
        dead_unattributed = dead_left.unattributed
    # Then the copies outside the lake: the subject's access exports in the outbox, and a count of
    # the files there that no subject can be tied to (they expire by their own clock).
    exports = unattributed = 0
    if VAULT in zones:
        requests = ledger.requests(lake)
        exports = outbox.remove_access_exports(lake, token, requests)
        unattributed = outbox.unattributed(lake, requests)
    files_total = sum(v.files_total for v in verify)
    rewritten = sum(1 for f in files_audit if not f["path"].startswith(rejects.REJECTS_DIR))
    dead_letters = removed.pop("dead_letters")
    counts: dict[str, Any] = {
        "rows_removed": removed,
        "dead_letters_removed": dead_letters,
        "dead_letters_unattributed": dead_unattributed,
        "access_exports_removed": exports,
        "outbox_files_unattributed": unattributed,
        "files_total": files_total,
        "files_probed": sum(loc.files_probed for loc in located),
        "files_maybe": sum(loc.files_maybe for loc in located),
        "files_rewritten": rewritten,
        "files_touched_share": round(rewritten / files_total, 4) if files_total else 0.0,
        "files_outside_bucket": outside,
        "rows_remaining": remaining,
        "recovered_runs": len(recovered or []),
    }
    duration = time.monotonic() - started
    audit.record(
        lake,
        job=job,  # "restrict", "object": the request whose analytics rows this removed
        params={
            "subject": token,
            "key_version": key.version,
            "bucket": bucket,
            "buckets": buckets,
            "dead_letters_scope": "_rejects (calls.dlq not counted: a Kafka log, sealed, withheld, expiring)",
            **extra,
        },
        counts=counts,
        files=files_audit,
        duration_s=duration,
        outcome="ok" if remaining == 0 else "incomplete",
        run=audit_run,
    )
    change.finish()
    if remaining:
        raise ErasureIncomplete(f"{remaining} rows of the subject remain after erasure")
    return EraseResult(subject=token, **counts, duration_s=round(duration, 3))
