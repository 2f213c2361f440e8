"""A consent withdrawal's purge: what an account's calls before the withdrawal held under its
purpose, removed from every zone (which withdrawals and which calls: `jobs.withdrawals`).

  recording      vault `recording_uri` nulled and analytics `has_recording` made false
  transcription  vault `transcript` and analytics `transcript` (redacted) nulled
  analytics      the account's analytics rows removed (the vault keeps its calls)

only in the account's rows whose `started_at` is before the withdrawal: each row is left as the
worker lands a call judged without the consent (a `has_*` flag false, its value null). The files are found as
erasure finds a subject's (`jobs.subject.locate`: bucket, statistics, Bloom filters), limited to
the day partitions up to the withdrawal's day, and only those holding something the withdrawal
covers are rewritten. A recording or transcription withdrawal also removes the account's dead
letters in `_rejects/` of calls before it holding a non-empty `recording_uri` / `transcript`
(`jobs.withdrawals.covers_dead_letter`): whole, as erasure removes a subject's
(`jobs.dead_letters`), since raw bytes cannot have one field nulled; those it cannot tell about
(damaged compressed bytes; the account's, but no call of it decodes) are counted,
`dead_letters_unattributed`, never called clean.
All of it goes through one intent journal (`jobs.replace`): a killed purge leaves the old files
or the new, and the next run finishes it. Re-running finds nothing and changes nothing, so `jobs
requests` re-checks every withdrawal it fulfilled at each pass (calls and dead letters that
arrived late): `held_in_lake` and its one read of `_rejects/` for all of them
(`withdrawals.covers_read`) say whether there is anything, and `purge_locked` then finds what is
held once and writes nothing when it finds nothing. The caller holds the job lock. The audit
entry names the subject by its token and the request, never the account id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from jobs import audit, dead_letters
from jobs.replace import Change, parallel, run_change, write_parquet
from jobs.subject import locate
from jobs.withdrawals import (
    ROWS,
    TIME_COLUMN,
    Withdrawal,
    covers_dead_letter,
    dead_letter_fields,
    purpose_columns,
)
from pipeline.keys import Domain, PseudonymKey
from schemas.clock import day_of_ms
from schemas.zones import SUBJECT_COLUMN, TS
from sinks import crypt, rejects
from sinks.arrow import zone_schema
from sinks.layout import ANALYTICS, VAULT, bucket_of
from sinks.read import scan


def _label(zone: str, column: str) -> str:
    return f"{zone}.{column}"


DEAD_LETTERS = _label(rejects.REJECTS_DIR, "dead_letters")  # `held`'s count of covered dead letters


@dataclass(frozen=True)
class Purge:
    """What a purge removed (as `held` counts it), and how many dead letters it could not tell
    about (not searchable: never reported as removed or as clean)."""

    removed: dict[str, int]
    dead_letters_unattributed: int


def _flag(zone: str, column: str) -> bool:
    """Whether the column is a `has_*` flag (analytics' `has_recording`): the purge makes it false,
    as a call judged without the consent lands, and only a true one is something held."""
    return pa.types.is_boolean(zone_schema(zone).field(column).type)


def _held_sql(zone: str, column: str) -> str:
    if column == ROWS:
        return "count(*)"
    return (
        f"count(*) FILTER (WHERE {column})"
        if _flag(zone, column)
        else f"count(*) FILTER (WHERE {column} IS NOT NULL)"
    )


def _targets(key: PseudonymKey, w: Withdrawal) -> list[tuple[str, str, tuple[str, ...]]]:
    """(zone, subject value, columns) the withdrawal touches."""
    values = {VAULT: w.account_id, ANALYTICS: key.token(Domain.ACCOUNT, w.account_id)}
    return [(zone, values[zone], cols) for zone, cols in purpose_columns()[w.purpose].items() if cols]


def _held_by_file(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    key: PseudonymKey,
    w: Withdrawal,
    buckets: int,
) -> list[tuple[str, str, str, dict[str, int]]]:
    """(zone, file, subject value, {label: values covered}) of each file holding anything the
    withdrawal covers."""
    bucket = bucket_of(key.token(Domain.ACCOUNT, w.account_id), buckets)
    out = []
    for zone, value, columns in _targets(key, w):
        located = locate(con, lake, zone, value, bucket, day_of_ms(w.at_ms))
        if not located.hits:
            continue
        counts = ", ".join(_held_sql(zone, c) for c in columns)
        source, params = scan(con, sorted(located.hits))
        sql = (
            f"SELECT filename, {counts} FROM {source}"
            f" WHERE {SUBJECT_COLUMN[zone]} = $value AND epoch_ms({TIME_COLUMN}) < $before"
            " GROUP BY filename ORDER BY filename"
        )
        for name, *ns in con.execute(sql, {**params, "value": value, "before": w.at_ms}).fetchall():
            found = {_label(zone, c): int(n) for c, n in zip(columns, ns, strict=True)}
            if any(found.values()):
                out.append((zone, str(name), value, found))
    return out


def _dead_letters(lake: Path, w: Withdrawal) -> rejects.Found:
    """The dead letters in `_rejects/` the withdrawal covers (`jobs.withdrawals.covers_dead_letter`)."""
    if not dead_letter_fields(w.purpose):
        return rejects.Found([], 0)
    return rejects.find(lake, lambda raw: covers_dead_letter(w, raw))


def held(
    con: duckdb.DuckDBPyConnection, lake: Path, key: PseudonymKey, w: Withdrawal, *, buckets: int
) -> dict[str, int]:
    """What the lake holds that the withdrawal covers: values (or rows) per zone and column, and
    dead letters, e.g. {"vault.recording_uri": 3, "analytics.has_recording": 3,
    "_rejects.dead_letters": 1}; zero everywhere when none."""
    total = dict.fromkeys(held_labels(key, w), 0)
    for _zone, _name, _value, found in _held_by_file(con, lake, key, w, buckets):
        for label, n in found.items():
            total[label] += n
    if DEAD_LETTERS in total:
        total[DEAD_LETTERS] = _dead_letters(lake, w).count
    return total


def held_in_lake(
    con: duckdb.DuckDBPyConnection, lake: Path, key: PseudonymKey, w: Withdrawal, *, buckets: int
) -> bool:
    """Whether any zone holds something the withdrawal covers (`held` without `_rejects/`)."""
    return bool(_held_by_file(con, lake, key, w, buckets))


def purged(table: pa.Table, zone: str, subject: str, before_ms: int, columns: tuple[str, ...]) -> pa.Table:
    """The table without what the withdrawal covers: the subject's rows started before
    `before_ms` dropped (`ROWS`) or with `columns` nulled (a `has_*` flag made false)."""
    mine = pc.fill_null(pc.equal(table[SUBJECT_COLUMN[zone]], subject), False)
    covered = pc.and_(mine, pc.fill_null(pc.less(table[TIME_COLUMN], pa.scalar(before_ms, TS)), False))
    if ROWS in columns:
        return table.filter(pc.invert(covered))
    for column in columns:
        idx = table.schema.get_field_index(column)
        field = table.schema.field(idx)
        left = pa.scalar(False if _flag(zone, column) else None, field.type)
        table = table.set_column(idx, field, pc.if_else(covered, left, table[column]))
    return table


def purge_locked(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    key: PseudonymKey,
    w: Withdrawal,
    *,
    buckets: int,
    request: str,
) -> Purge:
    """Remove what the withdrawal covers from every zone and `_rejects/`, through one journal;
    returns what was removed (as `held` counts it). The caller holds the job lock."""
    started = time.monotonic()
    token = key.token(Domain.ACCOUNT, w.account_id)
    removed = dict.fromkeys(held_labels(key, w), 0)
    change = Change(lake, "withdraw")
    columns = {zone: cols for zone, _value, cols in _targets(key, w)}
    dead = _dead_letters(lake, w)
    letters = dead_letters.plan(change, dead.hits)
    if DEAD_LETTERS in removed:
        removed[DEAD_LETTERS] = letters.count
    files: list[dict[str, Any]] = list(letters.files)
    work = []
    for zone, name, value, found in _held_by_file(con, lake, key, w, buckets):
        src = Path(name)
        for label, n in found.items():
            removed[label] += n
        if columns[zone] == (ROWS,) and sum(found.values()) == crypt.read_metadata(src).num_rows:
            change.remove(src)  # only covered rows: the file goes, as erasure's do
            files.append(audit.file_removed(lake, src, rows=0))
        else:
            work.append((zone, src, value, change.temp_for(src)))

    def rewrite(item: tuple[str, Path, str, Path]) -> dict[str, Any]:
        zone, src, value, tmp = item
        kept = purged(crypt.read_table(src), zone, value, w.at_ms, columns[zone])
        write_parquet(kept, tmp, zone)
        return audit.file_replaced(lake, src, tmp, kept.num_rows)

    params = {"subject": token, "purpose": w.purpose, "request": request, "key_version": key.version}
    counts: dict[str, Any] = {"removed": removed}
    if DEAD_LETTERS in removed:
        counts["dead_letters_unattributed"] = dead.unattributed

    def write() -> None:
        files.extend(letters.write())
        files.extend(parallel(rewrite, work))
        change.info = {"params": params, "counts": counts, "files": files}

    done = Purge(removed, dead.unattributed)
    if change.empty:
        return done
    run_change(change, write)
    audit.record(
        lake,
        job="withdraw",
        params=params,
        counts=counts,
        files=files,
        duration_s=time.monotonic() - started,
        outcome="ok",
        run=change.run,
    )
    change.finish()
    return done


def held_labels(key: PseudonymKey, w: Withdrawal) -> list[str]:
    """What `held` counts for the withdrawal, in order."""
    labels = [_label(zone, c) for zone, _value, cols in _targets(key, w) for c in cols]
    return [*labels, DEAD_LETTERS] if dead_letter_fields(w.purpose) else labels
