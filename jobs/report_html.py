"""The report as one self-contained HTML file: inline CSS and SVG charts drawn here, no scripts,
no fonts or images fetched from anywhere (the machines it runs on may have no network).

Pure: `render(data)` takes what `jobs.report.collect` returns and gives the page as a string.
Every text that came from the lake is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from importlib import resources
from string import Template
from typing import Any

from jobs import ledger
from jobs.report import noise_line

PALETTE = ("#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2")
W = 900  # chart width in px


def _num(value: float) -> str:
    if value >= 1e9:
        return f"{value / 1e9:.1f}G"
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _legend(names: Sequence[str], x: float, y: float) -> str:
    out = []
    cx = x
    for i, name in enumerate(names):
        out.append(
            f'<rect x="{cx}" y="{y - 10}" width="12" height="12" fill="{PALETTE[i % len(PALETTE)]}"/>'
            f'<text x="{cx + 18}" y="{y}" class="lg">{escape(name)}</text>'
        )
        cx += 18 + len(name) * 6.5 + 24
    return "".join(out)


def line_chart(
    title: str, labels: Sequence[str], series: Mapping[str, Sequence[float]], height: int = 260
) -> str:
    """One line per series over shared x labels (days)."""
    left, right, top, bottom = 60, 50, 60, 40
    pw, ph = W - left - right, height - top - bottom
    peak = max([max(v, default=0) for v in series.values()] + [1])
    n = max(len(labels), 1)

    def x(i: int) -> float:
        return left + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return top + ph - ph * v / peak

    parts = [f'<text x="{left}" y="22" class="tt">{escape(title)}</text>']
    for frac in (0, 0.25, 0.5, 0.75, 1):
        yy = y(peak * frac)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>')
        parts.append(
            f'<text x="{left - 6}" y="{yy + 4:.1f}" class="ax" text-anchor="end">{_num(peak * frac)}</text>'
        )
    step = max(1, n // 8)
    for i in range(0, len(labels), step):
        parts.append(_text(x(i), top + ph + 18, labels[i], anchor="middle"))
    for s, (name, values) in enumerate(series.items()):
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        color = PALETTE[s % len(PALETTE)]
        if len(values) == 1:
            parts.append(f'<circle cx="{x(0):.1f}" cy="{y(values[0]):.1f}" r="4" fill="{color}"/>')
        parts.append(
            f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2">'
            f"<title>{escape(name)}</title></polyline>"
        )
    parts.append(_legend(list(series), left, 44))
    return _svg(parts, height)


def bar_chart(
    title: str,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    percent: bool = False,
    height: int = 260,
) -> str:
    """Grouped vertical bars: one group per label, one bar per series."""
    left, right, top, bottom = 60, 20, 60, 40
    pw, ph = W - left - right, height - top - bottom
    peak = 1.0 if percent else max([max(v, default=0) for v in series.values()] + [1])
    n, m = max(len(groups), 1), max(len(series), 1)
    slot = pw / n
    bar = slot * 0.8 / m
    parts = [f'<text x="{left}" y="22" class="tt">{escape(title)}</text>']
    for frac in (0, 0.25, 0.5, 0.75, 1):
        yy = top + ph - ph * frac
        label = f"{frac:.0%}" if percent else _num(peak * frac)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" class="ax" text-anchor="end">{label}</text>')
    for g, label in enumerate(groups):
        gx = left + g * slot + slot * 0.1
        parts.append(_text(left + g * slot + slot / 2, top + ph + 18, label, anchor="middle"))
        for s, values in enumerate(series.values()):
            v = values[g] if g < len(values) else 0
            h = ph * min(v / peak, 1.0)
            bx = gx + s * bar
            text = f"{v:.0%}" if percent else _num(v)
            parts.append(
                f'<rect x="{bx:.1f}" y="{top + ph - h:.1f}" width="{max(bar - 2, 1):.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[s % len(PALETTE)]}"><title>{escape(text)}</title></rect>'
            )
            if bar > 24:
                parts.append(_text(bx + bar / 2, top + ph - h - 4, text, "val", "middle"))
    if len(series) > 1:
        parts.append(_legend(list(series), left, 44))
    return _svg(parts, height)


def gauge_chart(title: str, rows: Sequence[tuple[str, float | None, float | None]]) -> str:
    """Horizontal bars: age of the oldest data against its limit (a tick); red when past it."""
    left, top, row_h = 230, 40, 28
    height = top + row_h * max(len(rows), 1) + 20
    span = max([max(a or 0, lim or 0) for _, a, lim in rows] + [1]) * 1.1
    pw = W - left - 80
    parts = [f'<text x="20" y="22" class="tt">{escape(title)}</text>']
    for i, (label, age, limit) in enumerate(rows):
        y = top + i * row_h
        parts.append(f'<text x="{left - 8}" y="{y + 15}" class="ax" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{pw}" height="16" class="track"/>')
        if age is not None:
            over = limit is not None and age > limit
            w = pw * age / span
            color = "#dc2626" if over else "#16a34a"
            parts.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="16" fill="{color}"/>')
            parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 15}" class="val">{age:g} d</text>')
        if limit is not None:
            lx = left + pw * limit / span
            parts.append(
                f'<line x1="{lx:.1f}" x2="{lx:.1f}" y1="{y}" y2="{y + 22}" class="limit">'
                f"<title>limit {limit:g} d</title></line>"
            )
    return _svg(parts, height)


def _text(x: float, y: float, text: str, cls: str = "ax", anchor: str = "start") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}">{escape(text)}</text>'


def _svg(parts: list[str], height: int) -> str:
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}"'
    return f'{head} role="img">{"".join(parts)}</svg>'


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(_cell(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body or '<tr><td>none</td></tr>'}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3g}" if value < 1 else f"{value:,.1f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def render(data: dict[str, Any]) -> str:
    days = sorted({d["dt"] for d in data["volume"]})
    by_zone: dict[str, dict[str, dict[str, Any]]] = {}
    for d in data["volume"]:
        by_zone.setdefault(d["zone"], {})[d["dt"]] = d
    rows_series = {z: [float(v.get(dt, {}).get("rows", 0)) for dt in days] for z, v in by_zone.items()}
    cat_series = {
        f"{z} {c}": [float(v.get(dt, {}).get(c, 0)) for dt in days]
        for z, v in by_zone.items()
        for c in ("transcripts", "recordings")
    }
    gauge = [(f"{r['zone']} {r['category']}", r["age_days"], r["limit_days"]) for r in data["retention"]]
    uni = data["risk"]["unicity"]
    points = sorted({p["points"] for u in uni for p in u["by_points"]})
    uni_series = {
        u["label"]: [next((p["share"] for p in u["by_points"] if p["points"] == q), 0.0) for q in points]
        for u in uni
    }
    kan = data["risk"]["k_anonymity"]
    bins = [b for b, _ in kan[0]["histogram"]] if kan else []
    k_series = {a["name"]: [float(n) for _, n in a["histogram"]] for a in kan}
    stream = data["stream"]
    rec = stream["reconciled"]
    counters = {
        **{f"dlq {k}": v for k, v in stream["dlq"].items()},
        **{f"drop {k}": v for k, v in stream["drop"].items()},
    }
    charts = {
        "volume_chart": line_chart("Rows per day by zone", days, rows_series),
        "category_chart": line_chart("Rows holding transcripts / recordings per day", days, cat_series),
        "retention_chart": gauge_chart("Age of the oldest data (days) against its limit (tick)", gauge),
        "unicity_chart": bar_chart(
            "Unicity: share of subjects singled out by p known points",
            [f"p = {p}" for p in points],
            uni_series,
            percent=True,
        ),
        "k_chart": bar_chart("Published groups by number of subjects", bins, k_series),
        "stream_chart": bar_chart(
            "Dead letters and drops by reason",
            list(counters),
            {"count": [float(v) for v in counters.values()]},
        )
        if counters
        else "<p>No stream counters recorded under _stats/.</p>",
    }
    tables = {
        "zones_table": _table(
            ["zone", "days", "rows", "files", "bytes", "transcripts", "recordings"],
            [
                [z["zone"], z["days"], z["rows"], z["files"], z["bytes"], z["transcripts"], z["recordings"]]
                for z in data["zones"]
            ]
            + [
                [f"aggregates/{a['name']}", "", a["rows"], a["files"], a["bytes"], "", ""]
                for a in data["aggregates"]
            ],
        ),
        "aggregates_table": _table(
            ["aggregate", "built", "erase, rectify, retention runs since (not in it until rebuilt)"],
            [[a["name"], a["built_at"], a["changes_since"]] for a in data["aggregates"]],
        ),
        "days_table": _table(
            ["zone", "day", "rows", "files", "bytes", "transcripts", "recordings"],
            [
                [d["zone"], d["dt"], d["rows"], d["files"], d["bytes"], d["transcripts"], d["recordings"]]
                for d in data["volume"]
            ],
        ),
        "retention_table": _table(
            ["zone", "category", "oldest", "age (days)", "limit (days)", "rows past limit"],
            [
                [
                    r["zone"],
                    r["category"],
                    r["oldest"],
                    r["age_days"],
                    r["limit_days"] if r["limit_days"] is not None else "kept",
                    r["past_limit"],
                ]
                for r in data["retention"]
            ],
        ),
        "k_table": _table(
            [
                "aggregate",
                "k",
                "groups",
                "calls",
                "min subjects",
                "median subjects",
                "below k",
                "suppressed groups",
                "suppressed calls",
                "values (noise and 95% error bars)",
            ],
            [
                [
                    a["name"],
                    a["k"],
                    a["groups"],
                    a["calls"],
                    a["min_subjects"],
                    a["median_subjects"],
                    a["below_k"],
                    a["suppressed_groups"],
                    a["suppressed_calls"],
                    noise_line(a),
                ]
                for a in kan
            ],
        ),
        "unicity_table": _table(
            ["resolution", "subjects", "points", *[f"p = {p}" for p in points]],
            [
                [
                    u["label"],
                    u["subjects"],
                    u["points"],
                    *[
                        f"{p['share']:.1%} of {p['sampled']} (95%: {p['ci95'][0]:.1%}-{p['ci95'][1]:.1%})"
                        for p in u["by_points"]
                    ],
                ]
                for u in uni
            ],
        ),
        "consent_table": _table(
            ["counter", "count"],
            [
                (
                    "events = landed in the vault + dead letters + erased + past retention",
                    f"{rec['events_in']:,} = {rec['vault_written']:,} + {rec['dead_letters']:,}"
                    f" + {rec['erased']:,} + {rec['expired']:,}"
                    f" ({'adds up' if rec['adds_up'] else 'DOES NOT ADD UP'})",
                ),
                *((f"kept out of analytics: {k}", v) for k, v in rec["kept_out_of_analytics"].items()),
                *((f"field removed from landed events: {k}", v) for k, v in rec["fields_removed"].items()),
                *(
                    (f"{zone} rows written by the stream / held now", f"{z['written']:,} / {z['held']:,}")
                    for zone, z in rec["zones"].items()
                ),
                *((f"dead letters: {k}", v) for k, v in stream["dlq"].items()),
                *stream["other"].items(),
            ],
        ),
        "requests_table": _table(
            ["request", "kind", "status", "requested", "deadline", "age (days)", "due"],
            [
                *(
                    [
                        r["request"],
                        ledger.kind_of(r),
                        r["status"],
                        r["requested_at"],
                        r["deadline"],
                        r["age_days"],
                        r["due"].upper() if r["due"] == "overdue" else r["due"],
                    ]
                    for r in data["requests"]["open"]
                ),
                *(
                    [
                        r["request"],
                        ledger.kind_of(r),
                        r["status"],
                        r["requested_at"],
                        r["deadline"],
                        "",
                        r.get("reason") or r.get("fulfilled_at") or "",
                    ]
                    for r in data["requests"]["closed"]
                ),
            ],
        ),
        "jobs_table": _table(
            ["at", "job", "by", "outcome", "duration (s)", "files", "counts"],
            [
                [j["at"], j["job"], j["by"] or "", j["outcome"], j["duration_s"], j["files"], j["counts"]]
                for j in data["jobs"]
            ],
        ),
    }
    template = Template(resources.files("jobs").joinpath("report.html").read_text())
    return template.substitute(
        lake=escape(data["lake"]),
        as_of=escape(data["as_of"]),
        k=data["policy"]["k"],
        policy_source=escape(str(data["policy"]["source"])),
        stream_sources=stream["sources"],
        jobs_shown=len(data["jobs"]),
        jobs_total=data["jobs_total"],
        reads=escape(
            f"{data['reads']['count']:,}"
            + (f", the last at {data['reads']['last']}" if data["reads"]["last"] else "")
        ),
        unfinished=data["unfinished_changes"],
        requests_overdue=data["requests"]["overdue"],
        requests_due_soon=data["requests"]["due_soon"],
        **charts,
        **tables,
    )
