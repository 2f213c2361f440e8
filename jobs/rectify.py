"""Rectification: correct a subject's stored attributes in the vault and, through the tokens, in
analytics, so that the old values are gone from both.

A correction names an attribute, optionally the wrong value (`old`; without it every value of the
attribute is replaced) and the right one (`new`):
  org_id       vault `org_id`; analytics `org_token` (token of the organisation)
  own_number   the number of the account's own line: vault `caller` of its outbound and `callee`
               of its inbound calls; analytics `<that>_token`, `_country`, `_type` (recomputed
               from the new number the way the stream does, `pipeline.pseudonymize`)
The analytics rows are matched by the account's token and the old value's token, so rows whose
vault copy has already expired are corrected too. Free text (transcripts, attributes) is not
rewritten: analytics holds it redacted, and the vault copy keeps what was said.

Only the subject's files are rewritten (`jobs.subject.locate`), all through one intent journal
(`jobs.replace`), so a killed run leaves the old or the new values everywhere. Re-running is a
no-op (the old values are gone). The caller holds the job lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc

from jobs import audit
from jobs.replace import Change, parallel, run_change, write_parquet
from jobs.subject import locate, locate_many
from pipeline.keys import Domain, PseudonymKey
from pipeline.pseudonymize import phone_facts
from sinks import crypt
from sinks.layout import ANALYTICS, VAULT, bucket_of

ATTRIBUTES = ("org_id", "own_number")


class InvalidCorrection(ValueError):
    """A correction that cannot be applied (the message names the attribute, never a value)."""


@dataclass(frozen=True)
class Correction:
    attribute: str
    old: str | None
    new: str


def corrections_of(raw: Sequence[Any] | None) -> list[Correction]:
    """Validated corrections of a rectify request (numbers normalized to E.164)."""
    if not raw:
        raise InvalidCorrection("a rectify request needs at least one correction")
    out = []
    for item in raw:
        attribute = str(item["attribute"])
        if attribute not in ATTRIBUTES:
            raise InvalidCorrection(f"attribute {attribute} cannot be rectified")
        old, new = item.get("old"), str(item["new"])
        if attribute == "own_number":
            new = _e164(new, attribute)
            old = None if old is None else _e164(str(old), attribute)
        elif not new.strip():
            raise InvalidCorrection(f"{attribute}: the new value is empty")
        out.append(Correction(attribute, None if old is None else str(old), new))
    return out


def _e164(number: str, attribute: str) -> str:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        raise InvalidCorrection(f"{attribute}: not an international phone number") from None
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidCorrection(f"{attribute}: not a possible phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _set(table: pa.Table, column: str, mask: pa.ChunkedArray, value: Any) -> pa.Table:
    idx = table.schema.get_field_index(column)
    typ = table.schema.field(idx).type
    updated = pc.if_else(mask, pa.scalar(value, typ), table[column])
    return table.set_column(idx, table.schema.field(idx), updated)


def _eq(table: pa.Table, column: str, value: str) -> pa.ChunkedArray:
    return pc.fill_null(pc.equal(table[column], value), False)


def correct_vault(table: pa.Table, account_id: str, fixes: Sequence[Correction]) -> tuple[pa.Table, int]:
    """The vault rows with the subject's corrections applied; and how many rows changed."""
    mine = _eq(table, "account_id", account_id)
    changed = pc.equal(pc.cast(mine, pa.int8()), 2)  # all false, same length
    for fix in fixes:
        if fix.attribute == "org_id":
            mask = mine if fix.old is None else pc.and_(mine, _eq(table, "org_id", fix.old))
            mask = pc.and_(mask, pc.invert(_eq(table, "org_id", fix.new)))
            table = _set(table, "org_id", mask, fix.new)
            changed = pc.or_(changed, mask)
            continue
        outbound = _eq(table, "direction", "outbound")
        for column, side in (("caller", outbound), ("callee", pc.invert(outbound))):
            mask = pc.and_(mine, side)
            if fix.old is not None:
                mask = pc.and_(mask, _eq(table, column, fix.old))
            mask = pc.and_(mask, pc.invert(_eq(table, column, fix.new)))
            table = _set(table, column, mask, fix.new)
            changed = pc.or_(changed, mask)
    return table, int(pc.sum(pc.cast(changed, pa.int64())).as_py() or 0)


def correct_analytics(
    table: pa.Table, key: PseudonymKey, account_id: str, fixes: Sequence[Correction]
) -> tuple[pa.Table, int]:
    """The analytics rows with the corrections applied through the tokens; rows changed."""
    mine = _eq(table, "account_token", key.token(Domain.ACCOUNT, account_id))
    changed = pc.equal(pc.cast(mine, pa.int8()), 2)
    for fix in fixes:
        if fix.attribute == "org_id":
            new = key.token(Domain.ORG, fix.new)
            mask = (
                mine
                if fix.old is None
                else pc.and_(mine, _eq(table, "org_token", key.token(Domain.ORG, fix.old)))
            )
            mask = pc.and_(mask, pc.invert(_eq(table, "org_token", new)))
            table = _set(table, "org_token", mask, new)
            changed = pc.or_(changed, mask)
            continue
        token = key.token(Domain.PHONE, fix.new)
        country, kind = phone_facts(fix.new)
        outbound = _eq(table, "direction", "outbound")
        for side_name, side in (("caller", outbound), ("callee", pc.invert(outbound))):
            mask = pc.and_(mine, side)
            if fix.old is not None:
                mask = pc.and_(mask, _eq(table, f"{side_name}_token", key.token(Domain.PHONE, fix.old)))
            mask = pc.and_(mask, pc.invert(_eq(table, f"{side_name}_token", token)))
            table = _set(table, f"{side_name}_token", mask, token)
            table = _set(table, f"{side_name}_country", mask, country)
            table = _set(table, f"{side_name}_type", mask, kind)
            changed = pc.or_(changed, mask)
    return table, int(pc.sum(pc.cast(changed, pa.int64())).as_py() or 0)


def rows_of(
    con: duckdb.DuckDBPyConnection, lake: Path, key: PseudonymKey, account_id: str, buckets: int
) -> dict[str, int]:
    """How many rows of the subject each zone holds (in its bucket)."""
    token = key.token(Domain.ACCOUNT, account_id)
    values = {VAULT: account_id, ANALYTICS: token}
    bucket = bucket_of(token, buckets)
    return {
        zone: sum(locate(con, lake, zone, values[zone], bucket).hits.values()) for zone in (VAULT, ANALYTICS)
    }


def rows_of_many(
    con: duckdb.DuckDBPyConnection, lake: Path, key: PseudonymKey, account_ids: Iterable[str], buckets: int
) -> dict[str, dict[str, int]]:
    """`rows_of` for many subjects, probed together bucket by bucket (`jobs.subject.locate_many`)."""
    tokens = {a: key.token(Domain.ACCOUNT, a) for a in account_ids}
    vault = locate_many(con, lake, VAULT, {a: bucket_of(t, buckets) for a, t in tokens.items()})
    analytics = locate_many(con, lake, ANALYTICS, {t: bucket_of(t, buckets) for t in tokens.values()})
    return {
        a: {VAULT: sum(vault[a].values()), ANALYTICS: sum(analytics[t].values())} for a, t in tokens.items()
    }


def rectify_locked(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    key: PseudonymKey,
    account_id: str,
    fixes: Sequence[Correction],
    *,
    buckets: int,
    request: str | None = None,
) -> dict[str, Any]:
    """Apply the corrections to every file holding the subject; returns rows changed per zone.
    The caller holds the job lock."""
    started = time.monotonic()
    token = key.token(Domain.ACCOUNT, account_id)
    values = {VAULT: account_id, ANALYTICS: token}
    bucket = bucket_of(token, buckets)
    change = Change(lake, "rectify")
    work: list[tuple[str, Path, Path]] = []
    for zone in (VAULT, ANALYTICS):
        loc = locate(con, lake, zone, values[zone], bucket)
        for name in sorted(loc.hits):
            src = Path(name)
            work.append((zone, src, change.temp_for(src)))
    changed = {VAULT: 0, ANALYTICS: 0}
    files: list[dict[str, Any]] = []

    def rewrite(item: tuple[str, Path, Path]) -> tuple[str, int, dict[str, Any]]:
        zone, src, tmp = item
        table = crypt.read_table(src)
        if zone == VAULT:
            fixed, n = correct_vault(table, account_id, fixes)
        else:
            fixed, n = correct_analytics(table, key, account_id, fixes)
        write_parquet(fixed, tmp, zone)
        return zone, n, audit.file_replaced(lake, src, tmp, fixed.num_rows)

    params = {
        "subject": token,
        "attributes": sorted({f.attribute for f in fixes}),
        "key_version": key.version,
    }
    if request is not None:
        params["request"] = request

    def write() -> None:
        for zone, n, entry in parallel(rewrite, work):
            changed[zone] += n
            files.append(entry)
        change.info = {"params": params, "counts": {"rows_changed": dict(changed)}, "files": files}

    # A file whose rows need no change is rewritten identical; cheap, and keeps the plan simple.
    run_change(change, write)
    audit.record(
        lake,
        job="rectify",
        params=params,
        counts={"rows_changed": dict(changed)},
        files=files,
        duration_s=time.monotonic() - started,
        outcome="ok",
        run=change.run,
    )
    change.finish()
    return {"rows_changed": changed, "files_rewritten": len(files)}
