"""`callpipe bench jobs`: the batch jobs as ratios to a plain DuckDB COPY of the same data, same run.

The measuring code lives beside the jobs (jobs.bench_jobs: retention, erase, compact and the share
of files erase touches; jobs.bench_analysis: anonymize and the re-identification risk measure);
each exposes `run(quick) -> dict`. This module runs those present and puts their figures side by
side. Full runs use lakes of at least 10 million rows over 180 days; --quick uses small lakes.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

from pipeline.bench.common import table

log = logging.getLogger("callpipe.bench")
PARTS = ("jobs.bench_jobs", "jobs.bench_analysis")
TARGET_RETENTION = 0.7
TARGET_ERASE_SHARE = 0.05


def run(quick: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {"bench": "jobs", "quick": quick, "parts": {}, "missing": []}
    for name in PARTS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            figures["missing"].append(name)
            continue
        log.info("bench jobs: %s", name)
        started = time.perf_counter()
        part = module.run(quick)
        part["wall_seconds"] = round(time.perf_counter() - started, 1)
        figures["parts"][name.rsplit(".", 1)[-1]] = part
    figures["targets"] = targets(figures["parts"], quick)
    return figures


def targets(parts: dict[str, Any], quick: bool) -> dict[str, bool | None]:
    """Issue 5's targets for the jobs, where the parts measured them (None: not measured, or a
    quick run: the targets are about the full run's 10-million-row, 180-day lake; on a quick
    lake per-file overheads dominate and retention measured 0.59x COPY against 1.08x full)."""
    jobs = parts.get("bench_jobs", {})
    retention = jobs.get("retention", {}).get("ratio_to_copy")
    touched = jobs.get("erase", {}).get("files_touched_share")
    return {
        "retention_at_least_70pct_of_copy": None
        if retention is None or quick
        else retention >= TARGET_RETENTION,
        "erase_touches_at_most_5pct_of_files": None
        if touched is None or quick
        else touched <= TARGET_ERASE_SHARE,
    }


def _rows(part: dict[str, Any]) -> list[list[object]]:
    """Every measured step of a part: a dict holding rows_per_s (and ratio_to_copy when relative)."""
    out: list[list[object]] = []
    for step, value in part.items():
        if isinstance(value, dict) and "rows_per_s" in value:
            extra = {
                k: v
                for k, v in value.items()
                if k not in ("rows_per_s", "seconds", "ratio_to_copy") and not isinstance(v, dict | list)
            }
            notes = ", ".join(f"{k}={v}" for k, v in extra.items())
            out.append([step, value.get("seconds"), value["rows_per_s"], value.get("ratio_to_copy"), notes])
    return out


def render(figures: dict[str, Any]) -> str:
    blocks = []
    for name, part in figures["parts"].items():
        rows = part.get("rows")
        lake = part.get("lake")
        head = f"{name}: {rows:,} rows" if isinstance(rows, int) else name
        if isinstance(lake, dict):
            head += ", lake " + ", ".join(f"{k}={v}" for k, v in lake.items())
        blocks.append(head + "\n\n" + table(["step", "seconds", "rows/s", "x COPY", "notes"], _rows(part)))
        enforcement = part.get("enforcement")
        if isinstance(enforcement, dict) and isinstance(enforcement.get("passes"), dict):
            rows = [
                [n, p.get("seconds"), p.get("ratio_to_one"), p.get("ms_per_subject")]
                for n, p in enforcement["passes"].items()
            ]
            head = "jobs requests, a pass with nothing new: " + ", ".join(
                f"{k}={v}" for k, v in enforcement.get("lake", {}).items()
            )
            blocks.append(head + "\n\n" + table(["erased subjects", "seconds", "x one", "ms/subject"], rows))
        targets = part.get("targets")
        if isinstance(targets, dict):
            blocks.append(table(["target", "met"], [[k, v] for k, v in targets.items()]))
    if figures.get("targets"):
        blocks.append(table(["target", "met"], [[k, v] for k, v in figures["targets"].items()]))
    if figures["missing"]:
        blocks.append("not measured (module missing): " + ", ".join(figures["missing"]))
    return "\n\n".join(blocks)
