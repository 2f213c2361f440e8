"""The report: volume per zone and day, retention against the policy, stream counters, job history,
risk figures; text and self-contained HTML renderings."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import duckdb
import pytest

from jobs import audit, report, report_html
from jobs.anonymize import anonymize
from jobs.anonymize_noise import Noise
from jobs.noise import NoiseKey
from pipeline.policy import DEFAULT_POLICY
from sinks import lineage
from sinks.stats import write_stats
from tests.support.analysis_lake import T0, analytics_row, crowd, vault_row, write_zone

AS_OF = T0 + timedelta(days=40)  # vault limit 90 d, transcripts 30 d


@pytest.fixture
def data(lake: Path) -> dict:
    vault = [vault_row(s, T0 + timedelta(days=d), transcript="hello") for s in range(3) for d in (0, 20)]
    vault += [vault_row(9, T0 + timedelta(days=20), recording_uri="s3://rec/1")]
    write_zone(lake, "vault", vault)
    analytics = [*crowd(subjects=6, hours=2), analytics_row(1, T0 + timedelta(days=20), has_recording=True)]
    write_zone(lake, "analytics", analytics)
    con = duckdb.connect()
    anonymize(con, lake, k=5, as_of=AS_OF, noise=None)
    # what the stream leaves: a stats file per landed range, counted once its manifest exists
    write_stats(
        lake,
        "calls.raw-0",
        0,
        99,
        {
            "dead_letter.malformed": 2,
            "drop.recording_no_consent": 4,
            "vault": 90,
            "analytics": 88,
            "messages": 100,
        },
    )
    write_stats(lake, "calls.raw-1", 0, 49, {"dead_letter.malformed": 1, "dead_letter.bad_time": 3})
    write_stats(lake, "calls.raw-1", 50, 59, {"dead_letter.malformed": 100})  # killed before landing
    for source, first, last in (("calls.raw-0", 0, 99), ("calls.raw-1", 0, 49)):
        manifest = lineage.manifest_path(lake, source, first, last)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text("{}")
    audit.record(
        lake, job="retention", params={}, counts={"files": 1}, files=[], duration_s=0.5, outcome="ok"
    )
    return report.collect(con, lake, DEFAULT_POLICY, as_of=AS_OF, sample=100, seed=1)


def _day(data: dict, zone: str, dt: str) -> dict:
    return next(d for d in data["volume"] if d["zone"] == zone and d["dt"] == dt)


def test_volume_per_zone_and_day(data: dict) -> None:
    assert _day(data, "vault", "2026-06-01") | {"bytes": 0, "files": 0} == {
        "zone": "vault",
        "dt": "2026-06-01",
        "rows": 3,
        "files": 0,
        "bytes": 0,
        "transcripts": 3,
        "recordings": 0,
    }
    assert (_day(data, "vault", "2026-06-21")["rows"], _day(data, "vault", "2026-06-21")["recordings"]) == (
        4,
        1,
    )
    assert _day(data, "analytics", "2026-06-21")["recordings"] == 1
    zones = {z["zone"]: z for z in data["zones"]}
    assert (zones["vault"]["rows"], zones["vault"]["days"], zones["analytics"]["rows"]) == (7, 2, 13)
    assert zones["vault"]["files"] >= 2 and zones["vault"]["bytes"] > 0
    assert {a["name"] for a in data["aggregates"]} == {"calls_hourly", "calls_daily"}


def test_retention_names_rows_past_each_limit(data: dict) -> None:
    ret = {(r["zone"], r["category"]): r for r in data["retention"]}
    assert ret[("vault", "calls")]["past_limit"] == 0  # 40 days < 90
    assert ret[("vault", "transcripts")]["past_limit"] == 3  # the June 1st transcripts, 40 days > 30
    assert ret[("vault", "transcripts")]["age_days"] == 40.0
    assert ret[("vault", "recordings")]["past_limit"] == 0
    assert ret[("analytics", "transcripts")]["oldest"] is None
    assert ret[("aggregates", "calls_daily")]["limit_days"] is None


def test_stream_counters_of_landed_ranges_add_up(data: dict) -> None:
    stream = data["stream"]
    assert stream["sources"] == 2
    assert stream["dlq"] == {"bad_time": 3, "malformed": 3}
    assert stream["drop"] == {"recording_no_consent": 4}
    assert stream["consent"] == {"recording_no_consent": 4}
    assert stream["written"] == {"analytics": 88, "vault": 90}
    assert stream["other"] == {"messages": 100}
    # the fixture's stats carry no events_in: they do not add up, and the report says so
    rec = stream["reconciled"]
    assert (rec["vault_written"], rec["dead_letters"], rec["erased"], rec["adds_up"]) == (90, 6, 0, False)
    assert rec["fields_removed"] == {"recording_no_consent": 4} and rec["kept_out_of_analytics"] == {}
    held = {z["zone"]: z["rows"] for z in data["zones"]}
    assert rec["zones"]["vault"] == {"written": 90, "held": held["vault"]}
    assert "DOES NOT ADD UP" in report.render_text(data)


def test_stream_counters_that_add_up_say_so(lake: Path) -> None:
    write_stats(
        lake, "calls.raw-0", 0, 9, {"events_in": 10, "vault": 7, "dead_letter.malformed": 1, "drop.erased": 2}
    )
    manifest = lineage.manifest_path(lake, "calls.raw-0", 0, 9)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("{}")
    data = report.collect(duckdb.connect(), lake, DEFAULT_POLICY, as_of=AS_OF, sample=10, seed=1)
    assert data["stream"]["reconciled"]["adds_up"]
    assert (
        "events 10 = landed in the vault 7 + dead letters 1 + erased 2 + past retention 0 (adds up)"
        in report.render_text(data)
    )


def test_events_past_retention_when_they_landed_add_up_too(lake: Path) -> None:
    """An event landed nowhere (`expired`) or in analytics only (`vault_expired`) is not a vault
    row; one kept out of analytics (`analytics_expired`) or a value nulled is no event lost."""
    counts = {
        "events_in": 10,
        "vault": 5,
        "analytics": 6,
        "drop.expired": 2,
        "drop.vault_expired": 3,
        "drop.analytics_expired": 1,
        "drop.recording_expired": 4,
        "drop.transcript_expired": 2,
    }
    write_stats(lake, "calls.raw-0", 0, 9, counts)
    manifest = lineage.manifest_path(lake, "calls.raw-0", 0, 9)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("{}")
    data = report.collect(duckdb.connect(), lake, DEFAULT_POLICY, as_of=AS_OF, sample=10, seed=1)
    rec = data["stream"]["reconciled"]
    assert (rec["expired"], rec["adds_up"]) == (5, True)
    assert rec["kept_out_of_analytics"] == {"analytics_expired": 1}
    assert rec["fields_removed"] == {"recording_expired": 4, "transcript_expired": 2}
    assert "+ past retention 5 (adds up)" in report.render_text(data)


def test_job_history_newest_first(data: dict) -> None:
    assert [j["job"] for j in data["jobs"]] == ["retention", "anonymize"]
    assert data["jobs"][1]["files"] == 2


def test_aggregates_say_when_they_were_built_and_what_changed_the_lake_since(data: dict) -> None:
    # the fixture's retention run came after the build: its removals are still counted in them
    assert {a["name"]: a["changes_since"] for a in data["aggregates"]} == {
        "calls_daily": 1,
        "calls_hourly": 1,
    }
    assert all(a["built_at"].endswith("Z") for a in data["aggregates"])
    assert "1 erase/rectify/retention runs since" in report.render_text(data)
    assert "not in it until rebuilt" in report_html.render(data)


def test_vault_queries_are_counted_apart_and_do_not_push_jobs_out_of_the_history(lake: Path) -> None:
    audit.record(lake, job="erase", params={}, counts={}, files=[], duration_s=1, outcome="ok")
    for _ in range(report.HISTORY + 5):
        audit.record(
            lake, job="query", params={"vault": True}, counts={}, files=[], duration_s=0, outcome="ok"
        )
    data = report.collect(duckdb.connect(), lake, DEFAULT_POLICY, as_of=AS_OF, sample=10, seed=1)
    assert [j["job"] for j in data["jobs"]] == ["erase"] and data["jobs_total"] == 1
    assert data["reads"]["count"] == report.HISTORY + 5
    assert f"vault queries audited: {report.HISTORY + 5}" in report.render_text(data)
    assert f"vault queries audited: {report.HISTORY + 5}" in report_html.render(data)


def test_risk_figures_included(data: dict) -> None:
    assert {k["name"] for k in data["risk"]["k_anonymity"]} == {"calls_hourly", "calls_daily"}
    assert [u["resolution"] for u in data["risk"]["unicity"]] == [
        "fine",
        "day_cell",
        "hour_country",
        "coarse",
    ]


def test_text_rendering(data: dict) -> None:
    text = report.render_text(data)
    assert "transcripts" in text and "OVER LIMIT" in text
    assert "calls_hourly" in text and "p=4" in text
    json.dumps(data)  # the --json output needs no custom encoder


def test_html_is_self_contained_with_charts(data: dict) -> None:
    page = report_html.render(data)
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 6
    assert "<script" not in page
    # nothing fetched: the only URL is the SVG namespace
    assert set(re.findall(r"https?://[^\"' )]+", page)) <= {"http://www.w3.org/2000/svg"}
    assert not re.search(r"\b(src|href)=", page)


def test_html_escapes_text_from_the_lake(data: dict) -> None:
    data = {**data, "lake": "<script>x</script>"}
    assert "<script>x" not in report_html.render(data)


def test_empty_lake(lake: Path) -> None:
    con = duckdb.connect()
    data = report.collect(con, lake, DEFAULT_POLICY, as_of=datetime(2026, 7, 1, tzinfo=UTC))
    assert data["volume"] == [] and data["jobs"] == []
    assert "<svg" in report_html.render(data)
    assert "Zones" in report.render_text(data)


def test_aggregates_past_their_retention_are_named(lake: Path) -> None:
    write_zone(lake, "analytics", crowd(subjects=6, hours=2))
    con = duckdb.connect()
    anonymize(con, lake, k=5, as_of=AS_OF, noise=None)  # built without a limit
    policy = replace(DEFAULT_POLICY, retention=replace(DEFAULT_POLICY.retention, aggregates_days=10))
    data = report.collect(con, lake, policy, as_of=AS_OF, sample=10)
    ret = {(r["zone"], r["category"]): r for r in data["retention"]}
    assert (
        ret[("aggregates", "calls_hourly")]["past_limit"],
        ret[("aggregates", "calls_daily")]["past_limit"],
    ) == (2, 1)
    assert ret[("aggregates", "calls_hourly")]["limit_days"] == 10


@pytest.mark.parametrize(
    ("chart", "marks"),
    [
        (report_html.line_chart("t", [], {}), ("<svg", "</svg>")),
        (report_html.line_chart("t", ["d1"], {"a": [3.0]}), ("<circle", "<polyline")),
        (report_html.bar_chart("t", ["p = 1"], {"a": [1.5]}, percent=True), ("<rect", "150%")),
        (report_html.bar_chart("t", [], {}), ("<svg",)),
        (report_html.gauge_chart("t", [("vault calls", 120.0, 90.0)]), ("#dc2626", "limit 90 d")),
        (report_html.gauge_chart("t", [("aggregates x", None, None)]), ("aggregates x",)),
    ],
)
def test_charts_draw_edge_cases(chart: str, marks: tuple[str, ...]) -> None:
    for mark in marks:
        assert mark in chart
    assert chart.startswith("<svg") and chart.endswith("</svg>")


def test_the_report_shows_whether_aggregates_are_noisy_and_their_error_bars(lake: Path) -> None:
    write_zone(lake, "analytics", crowd(subjects=6, hours=2))
    con = duckdb.connect()
    anonymize(con, lake, k=5, as_of=AS_OF, noise=Noise(NoiseKey("v1", bytes(range(32))), Fraction(1)))
    data = report.collect(con, lake, DEFAULT_POLICY, as_of=AS_OF, sample=50)
    assert data["policy"]["noise"] == {"enabled": True, "epsilon": 1.0}
    text = report.render_text(data)
    assert "values noisy: discrete_laplace, epsilon 1 per row; error bars (95%) calls ±18" in text
    assert "calls ±90" in text  # the daily bound is 10 calls
    html = report_html.render(data)
    assert "subjects ±9" in html and "values (noise and 95% error bars)" in html
    anonymize(con, lake, k=5, as_of=AS_OF, noise=None)
    exact = report.render_text(report.collect(con, lake, DEFAULT_POLICY, as_of=AS_OF, sample=50))
    assert "values exact (built with noise off)" in exact
