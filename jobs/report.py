"""`callpipe jobs report`: what the lake holds, how old it is against the policy, what the stream
counted, which jobs ran, and the measured re-identification risk. Text, JSON or one HTML file.

`collect` gathers plain data (JSON-ready dicts and lists); `render_text` and `report_html.render`
only format it. Data sources:

- zones: one DuckDB pass per zone over its Parquet files (grouped by file: rows, rows holding a
  transcript or a recording, oldest call, rows past each retention limit), file sizes from the
  file system. Only counts and timestamps are read, never content.
- stream counters: what the stream worker and `callpipe ingest` leave under `<lake>/_stats/`
  (one JSON file of counts per landed offset range of each source), summed by the stream's own
  reader `sinks.stats.read_stats`, which counts a range only once its manifest exists:
  `dead_letter.<Reason>`, `drop.<Drop>` (the consent and privacy-request ones shown as consent
  outcomes), `vault` / `analytics` (rows routed to each zone), and the rest (messages, events_in).
- job history: `jobs.audit.read`; changes a killed job left in its journal: `jobs.replace.pending`.
- risk: `jobs.risk.measure` (k-anonymity of each aggregate, unicity at both resolutions).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from jobs import audit, ledger, replace, risk
from jobs.anonymize import PERIOD_START
from pipeline.policy import Policy
from pipeline.reasons import Drop
from schemas import clock
from sinks import layout
from sinks.layout import ANALYTICS, VAULT
from sinks.read import scan
from sinks.stats import read_stats

# Outcomes decided by consent or a privacy request (pipeline.reasons.Drop), shown together.
CONSENT_DROPS = frozenset(
    d.value
    for d in (
        Drop.RECORDING_NO_CONSENT,
        Drop.TRANSCRIPTION_NO_CONSENT,
        Drop.ANALYTICS_OBJECTED,
        Drop.RESTRICTED,
        Drop.ERASED,
    )
)
HISTORY = 50  # job runs shown

# (zone, category, SQL predicate saying a row holds it, Retention attribute)
CATEGORIES: dict[str, list[tuple[str, str, str]]] = {
    layout.VAULT: [
        ("calls", "TRUE", "vault_days"),
        ("transcripts", "transcript IS NOT NULL", "transcript_days"),
        ("recordings", "recording_uri IS NOT NULL", "recording_days"),
    ],
    layout.ANALYTICS: [
        ("calls", "TRUE", "analytics_days"),
        ("transcripts", "transcript IS NOT NULL", "transcript_days"),
        # analytics keeps only a has_recording flag, never the recording: it lives as long as the row
        ("recordings", "coalesce(has_recording, false)", "analytics_days"),
    ],
}


def collect(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    policy: Policy,
    *,
    as_of: datetime,
    sample: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything the report shows, as plain data."""
    volume: list[dict[str, Any]] = []
    retention: list[dict[str, Any]] = []
    for zone in (layout.VAULT, layout.ANALYTICS):
        days, ret = _zone(con, lake, zone, policy, as_of)
        volume += days
        retention += ret
    keep = policy.retention.aggregates_days
    aggregates = _aggregates(con, lake, None if keep is None else as_of - timedelta(days=keep))
    retention += [
        {
            "zone": layout.AGGREGATES,
            "category": a["name"],
            "oldest": a["oldest"],
            "limit_days": policy.retention.aggregates_days,
            "age_days": _age(a["oldest"], as_of),
            "past_limit": a["past_limit"],
        }
        for a in aggregates
    ]
    entries = audit.read(lake)
    stream = _stream(lake)
    held = {z["zone"]: z["rows"] for z in _totals(volume)}
    stream["reconciled"] = reconcile(stream, held)
    for a in aggregates:  # what the aggregates still count that the lake no longer holds
        a["changes_since"] = sum(
            1 for e in entries if e.get("job") in CHANGES_AGGREGATES and str(e.get("at", "")) > a["built_at"]
        )
    return {
        "lake": str(lake),
        "as_of": as_of.isoformat(),
        "policy": {
            "k": policy.k,
            "noise": vars(policy.noise),
            "source": policy.source,
            "retention": vars(policy.retention),
        },
        "zones": _totals(volume),
        "volume": volume,
        "aggregates": aggregates,
        "retention": retention,
        "stream": stream,
        # the jobs that change or hand over data; reads (query) are counted apart, so that an
        # analyst's queries do not push the changes out of the history
        "jobs": [_job(e) for e in [e for e in entries if e.get("job") not in READS][-HISTORY:]][::-1],
        "jobs_total": sum(1 for e in entries if e.get("job") not in READS),
        "reads": _reads(entries),
        "unfinished_changes": len(replace.pending(lake)),
        "requests": _requests(lake, policy, as_of),
        "risk": risk.measure(con, lake, as_of=as_of, sample=sample, seed=seed),
    }


def _requests(lake: Path, policy: Policy, as_of: datetime) -> dict[str, Any]:
    """The request ledger (`jobs.ledger`): open requests by age with their deadline state, and the
    latest closed ones."""
    status = ledger.status(lake, as_of, policy.requests.warn_days)
    closed = [
        r.to_json()
        for r in sorted(ledger.requests(lake).values(), key=lambda r: r.requested_at, reverse=True)
        if not r.open
    ][:HISTORY]
    return {**status, "closed": [{k: v for k, v in r.items() if k != "enforced"} for r in closed]}


def _zone(
    con: duckdb.DuckDBPyConnection, lake: Path, zone: str, policy: Policy, as_of: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    files = sorted(layout.table_dir(lake, zone).glob("dt=*/**/*.parquet"))
    cats = CATEGORIES[zone]
    if not files:
        return [], [
            {
                "zone": zone,
                "category": c,
                "oldest": None,
                "limit_days": getattr(policy.retention, attr),
                "age_days": None,
                "past_limit": 0,
            }
            for c, _, attr in cats
        ]
    cutoffs = {c: as_of - timedelta(days=getattr(policy.retention, attr)) for c, _, attr in cats}
    select = ", ".join(
        f"count(*) FILTER (WHERE {pred}) AS n_{c}, min(started_at) FILTER (WHERE {pred}) AS oldest_{c},"
        f" count(*) FILTER (WHERE {pred} AND started_at < $cut_{c}) AS past_{c}"
        for c, pred, _ in cats
    )
    source, params = scan(con, files)
    rows = con.execute(
        f"SELECT filename, {select} FROM {source} GROUP BY filename",
        {**params, **{f"cut_{c}": cut for c, cut in cutoffs.items()}},
    ).fetchall()
    per_day: dict[str, dict[str, Any]] = {}
    oldest: dict[str, Any] = {}
    past: dict[str, int] = defaultdict(int)
    for row in rows:
        path = Path(row[0])
        dt = next((p[3:] for p in path.parts if p.startswith("dt=")), "?")
        day = per_day.setdefault(
            dt, {"zone": zone, "dt": dt, "files": 0, "bytes": 0} | {c: 0 for c, _, _ in cats}
        )
        day["files"] += 1
        day["bytes"] += path.stat().st_size
        for i, (c, _, _) in enumerate(cats):
            count, first, over = row[1 + 3 * i : 4 + 3 * i]
            day[c] += int(count)
            past[c] += int(over)
            if first is not None and (c not in oldest or first < oldest[c]):
                oldest[c] = first
    for day in per_day.values():
        day["rows"] = day.pop("calls")
    ret = [
        {
            "zone": zone,
            "category": c,
            "oldest": oldest[c].astimezone(UTC).isoformat() if c in oldest else None,
            "limit_days": getattr(policy.retention, attr),
            "age_days": _age(oldest[c].astimezone(UTC).isoformat() if c in oldest else None, as_of),
            "past_limit": past[c],
        }
        for c, _, attr in cats
    ]
    return [per_day[d] for d in sorted(per_day)], ret


def _totals(volume: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for day in volume:
        t = out.setdefault(
            day["zone"],
            {
                "zone": day["zone"],
                "days": 0,
                "rows": 0,
                "files": 0,
                "bytes": 0,
                "transcripts": 0,
                "recordings": 0,
            },
        )
        t["days"] += 1
        for key in ("rows", "files", "bytes", "transcripts", "recordings"):
            t[key] += day[key]
    return list(out.values())


# Jobs after which a published aggregate still counts rows the lake no longer holds.
CHANGES_AGGREGATES = frozenset({"erase", "rectify", "retention"})


def _aggregates(con: duckdb.DuckDBPyConnection, lake: Path, cutoff: datetime | None) -> list[dict[str, Any]]:
    root = lake / layout.AGGREGATES
    out = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        files = sorted(folder.glob("*.parquet"))
        if not files:
            continue
        listing = ", ".join(f"'{_quote(str(f))}'" for f in files)
        cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet([{listing}])").fetchall()}
        time_col = "hour" if "hour" in cols else "day" if "day" in cols else None
        first = f"min({time_col})" if time_col else "NULL"
        past = (
            "0"
            if time_col is None or cutoff is None
            else f"count(*) FILTER (WHERE {PERIOD_START[time_col]} < $cut)"
        )
        row = con.execute(
            f"SELECT count(*), {first}, {past} FROM read_parquet([{listing}])",
            {} if cutoff is None or time_col is None else {"cut": cutoff},
        ).fetchone()
        assert row is not None
        oldest = row[1]
        if isinstance(oldest, datetime):
            oldest = oldest.astimezone(UTC).isoformat()
        elif oldest is not None:
            oldest = datetime(oldest.year, oldest.month, oldest.day, tzinfo=UTC).isoformat()
        out.append(
            {
                "name": folder.name,
                "rows": int(row[0]),
                "files": len(files),
                "bytes": sum(f.stat().st_size for f in files),
                "oldest": oldest,
                "past_limit": int(row[2]),
                # when the file was published: erasures, rectifications and retention after it
                # are not in it until `jobs anonymize` runs again
                "built_at": ledger.iso(datetime.fromtimestamp(max(f.stat().st_mtime for f in files), UTC)),
            }
        )
    return out


def _stream(lake: Path) -> dict[str, Any]:
    """The stream's counters, summed over every committed range (`sinks.stats.read_stats`)."""
    stats = read_stats(lake)
    counted = {k: v for k, v in (("events_in", stats.events_in), ("messages", stats.messages)) if v}
    return {
        "sources": stats.sources,
        "dlq": stats.dead_letters,
        "drop": stats.drops,
        "consent": {k: v for k, v in stats.drops.items() if k in CONSENT_DROPS},
        "written": stats.written,
        "other": dict(sorted({**counted, **stats.control, **stats.other}.items())),
    }


# Drops that keep an event out of the vault (erased, or past retention when it landed: nowhere, or
# in analytics only), those that keep a vault row out of analytics, and (the rest) those that
# remove a field of a landed event.
NOT_IN_VAULT = frozenset({Drop.ERASED.value, Drop.EXPIRED.value, Drop.VAULT_EXPIRED.value})
KEPT_OUT = NOT_IN_VAULT | {Drop.ANALYTICS_OBJECTED.value, Drop.RESTRICTED.value, Drop.ANALYTICS_EXPIRED.value}


def reconcile(stream: Mapping[str, Any], held: Mapping[str, int]) -> dict[str, Any]:
    """What the stream's counters say happened to every event, and how the lake's rows now
    compare with the rows the stream wrote (the difference: rows jobs removed since, by erase,
    retention, restriction or objection; or rows `ingest` wrote, which the stream did not)."""
    events = int(stream["other"].get("events_in", 0))
    vault = int(stream["written"].get(VAULT, 0))
    dead = sum(stream["dlq"].values())
    erased = int(stream["drop"].get(Drop.ERASED.value, 0))
    expired = sum(int(stream["drop"].get(d.value, 0)) for d in (Drop.EXPIRED, Drop.VAULT_EXPIRED))
    return {
        "events_in": events,
        "vault_written": vault,
        "dead_letters": dead,
        "erased": erased,
        "expired": expired,  # past the vault's retention limit when they landed
        "adds_up": events == vault + dead + erased + expired,
        "kept_out_of_analytics": {k: v for k, v in stream["drop"].items() if k in KEPT_OUT - NOT_IN_VAULT},
        "fields_removed": {k: v for k, v in stream["drop"].items() if k not in KEPT_OUT},
        "zones": {
            zone: {"written": int(stream["written"].get(zone, 0)), "held": int(held.get(zone, 0))}
            for zone in (VAULT, ANALYTICS)
        },
    }


READS = frozenset({"query"})  # audited reads (query --vault), shown as counts beside the history


def _reads(entries: list[dict[str, Any]]) -> dict[str, Any]:
    reads = [e for e in entries if e.get("job") in READS]
    return {"count": len(reads), "last": reads[-1].get("at") if reads else None}


def _job(entry: dict[str, Any]) -> dict[str, Any]:
    counts = entry.get("counts") or {}
    shown = {k: v for k, v in counts.items() if isinstance(v, int | float)}
    return {
        "at": entry.get("at"),
        "job": entry.get("job"),
        "outcome": entry.get("outcome"),
        "duration_s": entry.get("duration_s"),
        "by": entry.get("by"),
        "files": len(entry.get("files") or []),
        "counts": dict(list(shown.items())[:6]),
    }


def _age(iso: str | None, as_of: datetime) -> float | None:
    if iso is None:
        return None
    return round(clock.days_between(datetime.fromisoformat(iso), as_of), 1)


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def noise_line(a: Mapping[str, Any]) -> str:
    """What an aggregate's values are: exact, or noisy with which epsilon and error bars."""
    n = a.get("noise")
    if not n:
        return "values exact (built with noise off)"
    bars = ", ".join(f"{c} ±{v.get('ci95')}" for c, v in n["values"].items())
    exact = a["groups"] - a["noisy_groups"]
    carried = f"; {exact} carried exact groups" if exact else ""
    return (
        f"values noisy: {n['mechanism']}, epsilon {n['epsilon_per_row']} per row;"
        f" error bars (95%) {bars}{carried}"
    )


def render_text(data: dict[str, Any]) -> str:
    """The report for a terminal."""
    out = [f"callpipe report — lake {data['lake']} as of {data['as_of']} (k = {data['policy']['k']})", ""]
    out.append("Zones")
    for z in data["zones"]:
        out.append(
            f"  {z['zone']:<10} {z['rows']:>12,} rows  {z['files']:>6} files  {_size(z['bytes']):>9}"
            f"  {z['days']:>4} days  transcripts {z['transcripts']:,}  recordings {z['recordings']:,}"
        )
    for a in data["aggregates"]:
        stale = f"; {a['changes_since']} erase/rectify/retention runs since" if a["changes_since"] else ""
        out.append(
            f"  aggregates/{a['name']:<14} {a['rows']:>8,} groups  {_size(a['bytes'])}"
            f"  built {a['built_at']}{stale}"
        )
    out += ["", "Retention (oldest data against the policy limit)"]
    for r in data["retention"]:
        limit = "kept" if r["limit_days"] is None else f"{r['limit_days']} d"
        age = "-" if r["age_days"] is None else f"{r['age_days']} d"
        flag = "OVER LIMIT" if r["past_limit"] else "ok"
        out.append(
            f"  {r['zone']:<10} {r['category']:<14} oldest {age:>8}  limit {limit:>6}"
            f"  rows past limit {r['past_limit']:,}  {flag}"
        )
    s = data["stream"]
    r = s["reconciled"]
    out += ["", f"Stream counters ({s['sources']} sources)"]
    sums = "adds up" if r["adds_up"] else "DOES NOT ADD UP"
    out.append(
        f"  events {r['events_in']:,} = landed in the vault {r['vault_written']:,}"
        f" + dead letters {r['dead_letters']:,} + erased {r['erased']:,}"
        f" + past retention {r['expired']:,} ({sums})"
    )
    out.append(
        "  kept out of analytics: "
        + (", ".join(f"{k} {v:,}" for k, v in r["kept_out_of_analytics"].items()) or "none")
        + "; fields removed from landed events: "
        + (", ".join(f"{k} {v:,}" for k, v in r["fields_removed"].items()) or "none")
    )
    for zone, z in r["zones"].items():
        out.append(
            f"  {zone:<9} rows written by the stream {z['written']:,}, held now {z['held']:,}"
            f" (the difference: removed by jobs since, or written by ingest)"
        )
    for group in ("dlq", "other"):
        items = ", ".join(f"{k} {v:,}" for k, v in s[group].items()) or "none recorded"
        out.append(f"  {group:<8} {items}")
    out += ["", f"Risk: k-anonymity of the aggregates (k = {data['policy']['k']})"]
    for a in data["risk"]["k_anonymity"]:
        out.append(
            f"  {a['name']:<14} {a['groups']:>8,} groups  min subjects {a['min_subjects']}"
            f"  median {a['median_subjects']}  below k {a['below_k']}"
            f"  suppressed {a['suppressed_groups']} groups / {a['suppressed_calls']} calls"
        )
        out.append(f"  {'':<14} {noise_line(a)}")
    out.append("Risk: unicity of the analytics zone (share singled out by p known points)")
    for u in data["risk"]["unicity"]:
        shares = "  ".join(
            f"p={p['points']}: {p['share']:.1%} [{p['ci95'][0]:.0%}-{p['ci95'][1]:.0%}] (n={p['sampled']})"
            for p in u["by_points"]
        )
        out.append(f"  {u['label']:<44} {shares or 'no data'}")
    q = data["requests"]
    totals = ", ".join(f"{k} {v}" for k, v in sorted(q["totals"].items())) or "none"
    out += ["", f"Data-subject requests ({totals}; fulfilled after their deadline: {q['fulfilled_late']})"]
    out.append(
        "  (the request ledger: requests unread in privacy.requests appear after a `jobs requests` pass)"
    )
    for r in q["open"]:
        flag = {"overdue": "OVERDUE", "due soon": "due soon"}.get(r["due"], "on time")
        out.append(
            f"  {r['request']:<24} {ledger.kind_of(r):<10} {r['status']:<12} {r['age_days']:>6} d old"
            f"  deadline {r['deadline']}  {flag}"
        )
    if len(q["closed"]) > 10:
        out.append(f"  (the latest 10 of {len(q['closed'])} closed requests; --json has them all)")
    for r in q["closed"][:10]:
        when = r.get("fulfilled_at") or r.get("refused_at")
        why = [r.get("reason") or ""]
        if (r.get("detail") or {}).get("erased_at"):
            why.append(f"(erased at {r['detail']['erased_at']})")
        if r.get("source") == "operator":
            why.append(f"(operator {r.get('by')})")
        note = " ".join(w for w in why if w)
        out.append(f"  {r['request']:<24} {ledger.kind_of(r):<10} {r['status']:<12} at {when}  {note}")
    out += ["", f"Job history (latest {len(data['jobs'])} of {data['jobs_total']})"]
    if data["reads"]["count"]:
        out.append(
            f"  vault queries audited: {data['reads']['count']:,}, the last at {data['reads']['last']}"
        )
    if data["unfinished_changes"]:
        out.append(
            f"  {data['unfinished_changes']} change(s) left by a killed job: the next job run completes them"
        )
    for j in data["jobs"]:
        out.append(
            f"  {j['at']}  {j['job']:<10} {j['outcome']:<10} {j['duration_s']} s  files {j['files']}"
            f"  by {j['by'] or '-'}"
        )
    return "\n".join(out) + "\n"
