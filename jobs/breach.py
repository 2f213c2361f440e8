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
0600): vault account ids where the vault knows them, tokens always. What is printed and audited
holds counts and tokens only. Erasing a subject later leaves the breach lists that name it as they
are: they record a notification owed by law, not a copy of the subject's data (`jobs.outbox`).
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
from sinks.layout import ANALYTICS, VAULT
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
) -> dict[str, Any]:
    """Scope the exposure; writes the notification list to the outbox and audits the run."""
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
    present = ", ".join(f'count("{c.split(".")[0]}") FILTER (WHERE {_not_null(c)}) AS "{c}"' for c in cats)
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
    names = list(cats)
    per_subject: dict[str, dict[str, Any]] = {}
    by_category: dict[str, dict[str, dict[str, int]]] = {}
    for row in rows:
        sid, own_value, n, *held = row
        country = _country(own_value, zone)
        entry = per_subject.setdefault(sid, {"rows": 0, "categories": set(), "countries": set()})
        entry["rows"] += n
        entry["countries"].add(country)
        for name, count in zip(names, held, strict=True):
            if not count:
                continue
            category = cats[name][1]
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
    run = uuid.uuid4().hex
    notify = [
        {
            "account_token": token,
            **({"account_id": sid} if zone == VAULT else {}),
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
        "rows": sum(e["rows"] for e in per_subject.values()),
        "categories": {c: dict(sorted(v.items())) for c, v in sorted(by_category.items())},
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


def _not_null(column: str) -> str:
    if "." in column:
        top, leaf = column.split(".", 1)
        return f'"{top}"."{leaf}" IS NOT NULL'
    return f'"{column}" IS NOT NULL'


def _country(value: Any, zone: str) -> str:
    if value is None:
        return "unknown"
    if zone == ANALYTICS:
        return f"+{value}"
    code, _kind = phone_facts(str(value))
    return "unknown" if code is None else f"+{code}"
