"""The audit trail: one JSON line per job run or privacy request, under `<lake>/_audit/`.

Append-only by construction: each month has one file, `<lake>/_audit/YYYY-MM.jsonl` (mode 0600,
folder 0700: it names subjects by token and files by checksum), opened with O_APPEND, written
with one `write` per entry and fsynced before `record` returns, so an entry that was reported is
on disk. Nothing in callpipe rewrites or truncates these files; erasure leaves them alone because
they hold no raw identifier. A process killed mid-write can leave a torn last line; `record`
starts a fresh line after it and `read` skips it.

An entry:

    {"at": "2026-11-29T14:30:00.123Z", "run": "<uuid4 hex>", "job": "erase",
     "params": {"subject": "<account token>", ...}, "counts": {...},
     "files": [{"path": "vault/calls/dt=.../x.parquet", "sha256": "...", "action": "replaced"}],
     "duration_s": 1.23, "outcome": "ok", "by": "<login>"}

`by` is who ran the command (`login`): a vault query, an export or an erasure is then traceable
to a person, which need-to-know access asks for.

Subjects appear only as tokens: callers put `subject_ref(key, account_id)` in `params["subject"]`
(the account's analytics token), and `record` refuses parameter names that would carry a raw id.

Text that may name a subject is never digested plainly either: a vault query's SQL is recorded as
its keyed digest under the pseudonymization key (`query_ref`, `params["sql_hmac"]`), because a
plain SHA-256 of `... WHERE caller = '+14155550123'` can be tested against every phone number by
anyone who reads the trail. Whoever holds the key finds a text's entries (`about_query`). Entries
written before the keyed digest hold `sql_sha256` (plain) and are still read and matched as they are.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from pipeline.keys import Domain, PseudonymKey
from sinks.files import append_durably, fsync_dirs, read_json_lines
from sinks.layout import AUDIT

FILE_MODE = 0o600
DIR_MODE = 0o700
# Parameter names that would put a raw subject identifier into the trail.
RAW_ID_PARAMS = frozenset({"account", "account_id", "caller", "callee", "phone", "email"})
FILE_ACTIONS = frozenset({"added", "replaced", "removed", "read"})


def subject_ref(key: PseudonymKey, account_id: str) -> str:
    """How the audit names a subject: the account's keyed token (the analytics `account_token`)."""
    return key.token(Domain.ACCOUNT, account_id)


def query_ref(key: PseudonymKey, sql: str) -> str:
    """How the audit names a vault query's text: its keyed token (HMAC-SHA-256 under the
    pseudonymization key, in its own domain), never a plain digest of a guessable text."""
    return key.token(Domain.QUERY, sql)


def about_query(entries: Iterable[Mapping[str, Any]], key: PseudonymKey, sql: str) -> list[dict[str, Any]]:
    """The entries of vault queries of exactly this text: by `sql_hmac` under `key` (entries name
    the `key_version` they used), and older entries by the plain `sql_sha256` they hold."""
    keyed = query_ref(key, sql)
    plain = hashlib.sha256(sql.encode()).hexdigest()
    return [
        dict(e)
        for e in entries
        if e.get("job") == "query"
        and (e.get("params", {}).get("sql_hmac") == keyed or e.get("params", {}).get("sql_sha256") == plain)
    ]


def file_removed(lake: Path, path: Path, rows: int | None = None) -> dict[str, Any]:
    """The `files` entry of a lake file a job removed: its path in the lake and the checksum it
    had (`rows`: what it holds now, when the job counts rows)."""
    entry: dict[str, Any] = {
        "path": str(path.relative_to(lake)),
        "sha256": None,
        "previous_sha256": sha256_file(path),
        "action": "removed",
    }
    return entry if rows is None else {**entry, "rows": rows}


def file_replaced(lake: Path, path: Path, new: Path, rows: int) -> dict[str, Any]:
    """The `files` entry of a lake file a job rewrote (`new`, the file that replaces it, not yet
    in place): its checksum before and after, and the rows it holds."""
    return {
        "path": str(path.relative_to(lake)),
        "sha256": sha256_file(new),
        "previous_sha256": sha256_file(path),
        "action": "replaced",
        "rows": rows,
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def audit_dir(lake: Path) -> Path:
    return lake / AUDIT


@cache
def login() -> str:
    """Who runs this process: the session's login name (the person, also under sudo), else the
    name of the process's user."""
    try:
        return os.getlogin()
    except OSError:
        try:
            return pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            return f"uid {os.getuid()}"


def record(
    lake: Path,
    *,
    job: str,
    params: Mapping[str, Any],
    counts: Mapping[str, Any],
    files: Iterable[Mapping[str, Any]],
    duration_s: float,
    outcome: str,
    at: datetime | None = None,
    run: str | None = None,
) -> Path:
    """Append one entry for a job run or request; returns the audit file written.

    `files` items carry path (absolute or relative to the lake), sha256 and action (added,
    replaced, removed, read), optionally previous_sha256, rows and bytes. `at` defaults to now
    (UTC); callers that own a clock pass it. `run` is the job's run id (the journal's, for jobs
    that replace files), a fresh one by default.
    """
    bad = RAW_ID_PARAMS.intersection(params)
    if bad:
        raise ValueError(f"audit params must name subjects by token (subject_ref), not {sorted(bad)}")
    when = (at or datetime.now(UTC)).astimezone(UTC)
    entry = {
        "at": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        "run": run or uuid.uuid4().hex,
        "job": job,
        "params": dict(params),
        "counts": dict(counts),
        "files": [_file_entry(lake, f) for f in files],
        "duration_s": round(float(duration_s), 3),
        "outcome": outcome,
        "by": login(),
    }
    line = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS) + b"\n"
    folder = audit_dir(lake)
    created_dir = not folder.exists()
    folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path = append_durably(line, folder / f"{when:%Y-%m}.jsonl", FILE_MODE)
    if created_dir:
        fsync_dirs({folder.parent})
    return path


def read(lake: Path) -> list[dict[str, Any]]:
    """Every entry, oldest first (by its time: a job that runs another, as `jobs requests` runs
    erasures, records itself after the job it ran). Torn lines (a writer killed mid-line) are
    skipped."""
    folder = audit_dir(lake)
    if not folder.is_dir():
        return []
    out: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.jsonl")):
        out += [entry for entry in read_json_lines(path) if isinstance(entry, dict)]
    return sorted(out, key=lambda e: str(e.get("at", "")))  # stable: equal times keep file order


def about(entries: Iterable[Mapping[str, Any]], token: str) -> list[dict[str, Any]]:
    """The entries that concern one subject (by its token), e.g. for an access request."""
    return [dict(e) for e in entries if e.get("params", {}).get("subject") == token]


def _file_entry(lake: Path, item: Mapping[str, Any]) -> dict[str, Any]:
    path = Path(str(item["path"]))
    if path.is_absolute():
        for base in (lake, lake.resolve()):
            if path.is_relative_to(base):
                path = path.relative_to(base)
                break
    action = str(item.get("action", ""))
    if action not in FILE_ACTIONS:
        raise ValueError(f"audit file action must be one of {sorted(FILE_ACTIONS)}")
    out = {"path": str(path), "sha256": item.get("sha256"), "action": action}
    for extra in ("previous_sha256", "rows", "bytes"):
        if extra in item:
            out[extra] = item[extra]
    return out
