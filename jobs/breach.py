"""Breach scoping: whom exposed lake files (or a time window of a zone) touched, and what.

`scope(...)` reads the exposed rows of one zone (given files, or every row of the zone whose
`started_at` falls in [since, until)) and answers what a notification needs:
- the subjects: accounts (vault) or account tokens (analytics) with at least one exposed row;
- the categories of personal data held, from the schema's PII annotations (`schemas.pii_fields`):
  a category counts when an exposed row holds a non-null value of a field annotated with it
  (analytics columns map back to their fields through `schemas.zones.ANALYTICS_COLUMNS`);
- per category and country (the country calling code of the account's own line: caller of its
  outbound, callee of its inbound calls), how many subjects and rows.
The list of subjects to notify goes to the restricted outbox (`<lake>/_outbox/breach-<run>.json`,
0600): account ids where the vault knows them (for an analytics exposure, read from the vault's
rows of the subject: none for a subject the vault no longer holds), tokens always. What is printed
and audited holds counts and tokens only. A category counts the exposed rows holding any of its
columns, and says how the zone holds it (`held_as`: as given in the vault; keyed tokens,
generalized values or redacted text in analytics; analytics' `has_recording` holds whether a
recording exists, counted when true, never the recording). Erasing a subject later leaves the
breach lists that name it as they are: they record a notification owed by law, not a copy of the
subject's data (`jobs.outbox`).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

import schemas
from jobs import audit
from jobs.intake import write_private
from jobs.ledger import iso
from jobs.outbox import breach_name, outbox_dir
from jobs.subject import zone_files
from pipeline.keys import Domain, PseudonymKey
from pipeline.pseudonymize import phone_facts
from schemas.zones import ANALYTICS_COLUMNS, SUBJECT_COLUMN
from sinks.layout import ANALYTICS, VAULT, bucket_of
from sinks.read import scan


class BreachScopeError(ValueError):
    """Bad arguments (a file outside the zone, an empty window)."""


def categories(zone: str) -> dict[str, tuple[str, str]]:
    """Column (top level) -> (class, category) of personal data, for `zone`; class none left out."""
    out: dict[str, tuple[str, str]] = {}
    annotated = schemas.pii_fields("CallEvent")
    parents = {a.path.rsplit(".", 1)[0] for a in annotated if "." in a.path}
    for ann in annotated:
        if ann.klass == "none" or ann.path in parents:
            continue
        leaf = ann.path.rsplit(".", 1)[-1]
        if zone == VAULT:
            top = ann.path.split(".", 1)[0]
            column = top if "." not in ann.path else f"{top}.{leaf}"
            out.setdefault(column, (ann.klass, ann.category))
        else:
            for template, _type in ANALYTICS_COLUMNS[(ann.klass, ann.category)]:
                out.setdefault(template.format(name=leaf), (ann.klass, ann.category))
    return out


def _files(lake: Path, zone: str, files: list[Path] | None) -> list[Path]:
    if files is None:
        return zone_files(lake, zone)
    root = (lake / zone).resolve()
    out = []
    for f in files:
        path = (f if f.is_absolute() else lake / f).resolve()
        if not path.is_relative_to(root) or not path.exists():
            raise BreachScopeError(f"{f}: not a file of the {zone} zone")
        out.append(path)
    return out


def scope(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    key: PseudonymKey,
    zone: str,
    *,
    files: list[Path] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    now: datetime,
    buckets: int | None = None,
) -> dict[str, Any]:
    """Scope the exposure; writes the notification list to the outbox and audits the run.
    `buckets` (the lake's bucket count) narrows the vault read that finds analytics subjects'
    account ids."""
    started = time.monotonic()
    if zone not in (VAULT, ANALYTICS):
        raise BreachScopeError("zone must be vault or analytics")
    if files is None and (since is None or until is None or since >= until):
        raise BreachScopeError("give --files, or --since before --until")
    paths = _files(lake, zone, files)
    cats = categories(zone)
    subject = SUBJECT_COLUMN[zone]
    if zone == VAULT:
        own = "CASE WHEN direction = 'outbound' THEN caller ELSE callee END"
    else:
        own = "CASE WHEN direction = 'outbound' THEN caller_country ELSE callee_country END"
    # one count per category: the exposed rows holding any of its columns (a row with a caller
    # and a callee is one row of phone numbers, not two)
    by_name: dict[str, list[str]] = {}
    for column, (_klass, category) in cats.items():
        by_name.setdefault(category, []).append(column)
    present = ", ".join(
        f"count(*) FILTER (WHERE {' OR '.join(_holds(c, zone) for c in columns)})"
        for columns in by_name.values()
    )
    where = "true"
    params: dict[str, Any] = {}
    if files is None:
        where = "started_at >= $since AND started_at < $until"
        params.update(since=since, until=until)
    rows: list[tuple[Any, ...]] = []
    if paths:
        source, scan_params = scan(con, paths, filename=False, union_by_name=True)
        params.update(scan_params)
        sql = f"""
            SELECT {subject} AS subject, {own} AS own, count(*) AS n, {present}
            FROM {source}
            WHERE {where}
            GROUP BY ALL
        """
        rows = con.execute(sql, params).fetchall()
    names = list(by_name)
    per_subject: dict[str, dict[str, Any]] = {}
    by_category: dict[str, dict[str, dict[str, int]]] = {}
    for row in rows:
        sid, own_value, n, *held = row
        country = _country(own_value, zone)
        entry = per_subject.setdefault(sid, {"rows": 0, "categories": set(), "countries": set()})
        entry["rows"] += n
        entry["countries"].add(country)
        for category, count in zip(names, held, strict=True):
            if not count:
                continue
            entry["categories"].add(category)
            cell = by_category.setdefault(category, {}).setdefault(country, {"rows": 0, "subjects": 0})
            cell["rows"] += count
    for entry in per_subject.values():
        for category in entry["categories"]:
            for country in entry["countries"]:
                held_here = by_category[category].get(country)
                if held_here is not None:
                    held_here["subjects"] += 1
    tokens = {(key.token(Domain.ACCOUNT, sid) if zone == VAULT else sid): sid for sid in per_subject}
    # whom to notify: an analytics subject's account id from the vault, where it still holds a
    # row of the subject (the vault keeps less time than analytics; an erased subject has none)
    ids = dict(tokens) if zone == VAULT else vault_ids(con, lake, key, set(tokens), buckets)
    run = uuid.uuid4().hex
    notify = [
        {
            "account_token": token,
            "account_id": ids.get(token),
            "rows": per_subject[sid]["rows"],
            "categories": sorted(per_subject[sid]["categories"]),
        }
        for token, sid in sorted(tokens.items())
    ]
    name = breach_name(run)
    scope_doc = {
        "zone": zone,
        "files": [str(p.relative_to(lake.resolve())) for p in paths] if files is not None else None,
        "since": None if since is None else iso(since),
        "until": None if until is None else iso(until),
    }
    write_private(
        outbox_dir(lake) / name,
        orjson.dumps(
            {"generated_at": iso(now), "scope": scope_doc, "subjects": notify}, option=orjson.OPT_INDENT_2
        ),
    )
    summary = {
        "run": run,
        **scope_doc,
        "subjects": len(per_subject),
        "subjects_without_account_id": sum(1 for t in tokens if t not in ids),
        "rows": sum(e["rows"] for e in per_subject.values()),
        "categories": {c: dict(sorted(v.items())) for c, v in sorted(by_category.items())},
        "held_as": {c: held_as(zone, by_name[c]) for c in sorted(by_category)},
        "subject_tokens": sorted(tokens),
        "outbox": name,
    }
    audit.record(
        lake,
        job="breach",
        params={"zone": zone, "since": scope_doc["since"], "until": scope_doc["until"]},
        counts={"subjects": summary["subjects"], "rows": summary["rows"]},
        files=[{"path": str(p), "sha256": audit.sha256_file(p), "action": "read"} for p in paths]
        if files is not None
        else [],
        duration_s=time.monotonic() - started,
        outcome="ok",
        at=now,
        run=run,
    )
    return summary


def _holds(column: str, zone: str) -> str:
    """SQL: the row holds data of `column` (analytics' has_recording holds a recording's existence
    when true, never the recording)."""
    if "." in column:
        top, leaf = column.split(".", 1)
        return f'"{top}"."{leaf}" IS NOT NULL'
    if zone == ANALYTICS and column == "has_recording":
        return '"has_recording" IS TRUE'
    return f'"{column}" IS NOT NULL'


def held_as(zone: str, columns: list[str]) -> str:
    """How a category's data is held in the exposed zone: what the notice must say of it."""
    if zone == VAULT:
        return "as given (vault)"
    if any(c.endswith("_token") for c in columns):
        return "keyed tokens" + (
            ", country code and line type" if any(c.endswith("_country") for c in columns) else ""
        )
    if columns == ["has_recording"]:
        return "whether a recording exists (never the recording)"
    if any(c.endswith("_prefix") or c == "cell_area" for c in columns):
        return "generalized (IP prefix, cell area)"
    if set(columns) <= {"transcript", "attributes"}:
        return "text with detected personal data replaced by labels"
    return "as given"


def vault_ids(
    con: duckdb.DuckDBPyConnection, lake: Path, key: PseudonymKey, tokens: set[str], buckets: int | None
) -> dict[str, str]:
    """token -> account id, for the tokens whose subject the vault holds a row of (the vault's
    distinct account ids, in the buckets those tokens fall in when `buckets` is known)."""
    if not tokens:
        return {}
    paths = zone_files(lake, VAULT)
    if buckets is not None:
        wanted = {f"bucket={bucket_of(t, buckets):02d}" for t in tokens}
        paths = [p for p in paths if p.parent.name in wanted]
    if not paths:
        return {}
    source, params = scan(con, paths, filename=False, union_by_name=True)
    found: dict[str, str] = {}
    for (account_id,) in con.execute(f"SELECT DISTINCT account_id FROM {source}", params).fetchall():
        token = key.token(Domain.ACCOUNT, str(account_id))
        if token in tokens:
            found[token] = str(account_id)
    return found


def _country(value: Any, zone: str) -> str:
    if value is None:
        return "unknown"
    if zone == ANALYTICS:
        return f"+{value}"
    code, _kind = phone_facts(str(value))
    return "unknown" if code is None else f"+{code}"
