"""Subject access and portability: everything the lake holds on one account, as JSON.

Vault rows (by account_id), analytics rows (by the account's token), the subject's dead letters
kept by `callpipe ingest` (`sinks.rejects`) and the audit entries about the subject (by token).
Every bucket is searched (statistics and Bloom filters keep that cheap), so a lake written with
another bucket count still answers completely. The export holds the subject's personal data: the
output file is written with mode 0600, atomically. The request is recorded in the audit trail by
token.

Where the export may go (`check_out`, before anything is read): never inside the lake (it would
replace a lake file), never over a directory, a symbolic link or another non-regular file, and
over an existing regular file only with `force`. The temp file beside the output holds the
subject's data, so it is removed whatever happens; without `force` the final name is claimed
with a hard link, which fails if the name appeared meanwhile, so nothing is ever overwritten.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from jobs import audit
from jobs.replace import job_lock
from jobs.subject import locate
from pipeline.keys import Domain, PseudonymKey
from pipeline.raw_records import subject_match
from schemas.zones import SUBJECT_COLUMN
from sinks import files, rejects
from sinks.files import fsync_dir
from sinks.layout import ANALYTICS, VAULT
from sinks.read import scan

OUT_OUTSIDE_LAKE = "(--out, outside the lake)"  # the audit's name for the file `jobs export` wrote

ROWS_SQL = """
SELECT * EXCLUDE (filename)
FROM {source}
WHERE {column} = $value
ORDER BY started_at, event_id
"""


def collect(
    con: duckdb.DuckDBPyConnection, lake: Path, key: PseudonymKey, account_id: str, as_of: datetime
) -> dict[str, Any]:
    """The subject's data as a JSON-ready dict (timestamps stay datetimes until serialized)."""
    token = key.token(Domain.ACCOUNT, account_id)
    values = {VAULT: account_id, ANALYTICS: token}
    out: dict[str, Any] = {
        "subject": {"account_id": account_id, "account_token": token, "key_version": key.version},
        "generated_at": as_of,
    }
    files_read = 0
    for zone in (VAULT, ANALYTICS):
        loc = locate(con, lake, zone, values[zone], None)
        rows: list[dict[str, Any]] = []
        if loc.hits:
            source, params = scan(con, sorted(loc.hits))
            sql = ROWS_SQL.format(column=SUBJECT_COLUMN[zone], source=source)
            table = con.sql(sql, params={**params, "value": values[zone]}).to_arrow_table()
            rows = [] if table is None else table.to_pylist(maps_as_pydicts="strict")
        files_read += len(loc.hits)
        out[zone] = rows
    dead = rejects.find(lake, subject_match(account_id))
    out["dead_letters"] = rejects.export_entries(dead.hits)
    out["audit"] = audit.about(audit.read(lake), token)
    out["counts"] = {
        "vault": len(out[VAULT]),
        "analytics": len(out[ANALYTICS]),
        "dead_letters": len(out["dead_letters"]),
        "dead_letters_unattributed": dead.unattributed,  # could not be searched: maybe the subject's
        "audit": len(out["audit"]),
    }
    out["files_read"] = files_read
    return out


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the subject's token, how many records of each kind, where."""

    subject: str
    vault: int
    analytics: int
    dead_letters: int
    dead_letters_unattributed: int  # dead letters that could not be searched (maybe the subject's)
    audit: int
    out: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class ExportRefused(ValueError):
    """An --out the export will not write to; the message names the problem, never a value."""


def check_out(out: Path, lake: Path, *, force: bool) -> None:
    """Raise ExportRefused unless `out` is a new file (or, with force, an existing regular file)
    outside the lake."""
    target = out.parent.resolve() / out.name  # the parents' symbolic links followed
    root = lake.resolve()
    if target == root or target.is_relative_to(root):
        raise ExportRefused("--out is inside the lake; write the export outside it")
    try:
        mode = os.lstat(out).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise ExportRefused("--out is a symbolic link; name the file itself")
    if stat.S_ISDIR(mode):
        raise ExportRefused("--out is a directory; name a file")
    if not stat.S_ISREG(mode):
        raise ExportRefused("--out is not a regular file")
    if not force:
        raise ExportRefused("--out already exists; pass --force to replace it")


def run(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    key: PseudonymKey,
    account_id: str,
    out: Path,
    *,
    as_of: datetime,
    force: bool = False,
) -> ExportResult:
    """Write the subject's export to `out` (0600); returns the counts. Raises ExportRefused for an
    `out` that `check_out` refuses."""
    started = time.monotonic()
    check_out(out, lake, force=force)
    with job_lock(lake):
        doc = collect(con, lake, key, account_id, as_of)
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_UTC_Z)
        _write_private(out, data, force=force)
        duration = time.monotonic() - started
        # The file handed over, by checksum and size; its path is the operator's choice and may
        # name the person, so the audit does not keep it.
        handed = {"path": OUT_OUTSIDE_LAKE, "sha256": hashlib.sha256(data).hexdigest(), "action": "added"}
        audit.record(
            lake,
            job="export",
            params={"subject": doc["subject"]["account_token"], "key_version": key.version},
            counts={**doc["counts"], "files_read": doc["files_read"]},
            files=[{**handed, "bytes": len(data)}],
            duration_s=duration,
            outcome="ok",
        )
    return ExportResult(subject=doc["subject"]["account_token"], **doc["counts"], out=str(out))


def _write_private(path: Path, data: bytes, *, force: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    tmp = Path(name)
    try:
        try:
            files.write_synced(fd, data)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if the name exists: never overwrites
            except FileExistsError:
                raise ExportRefused("--out already exists; pass --force to replace it") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
