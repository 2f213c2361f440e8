"""`callpipe bench`: the command parses, --json prints one object with the expected keys (tiny
runs, no broker, no timing assertions), and the pure figures it is built from are right."""

from __future__ import annotations

import json
import sys
import types
from typing import Any

import pytest

from pipeline.bench import batch, detect, stream
from pipeline.bench.common import percentile, table
from pipeline.bench.kafka import Sent
from pipeline.bench.passthrough import Commit
from pipeline.cli import build_parser, main


@pytest.mark.parametrize(
    ("argv", "what", "quick", "as_json"),
    [
        (["bench", "stream"], "stream", False, False),
        (["bench", "detect", "--quick"], "detect", True, False),
        (["bench", "jobs", "--quick", "--json"], "jobs", True, True),
    ],
)
def test_bench_parses(argv: list[str], what: str, quick: bool, as_json: bool) -> None:
    args = build_parser().parse_args(argv)
    assert (args.what, args.quick, args.json) == (what, quick, as_json)


def test_unknown_bench_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", "everything"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _phonenumbers_as_presidio(default_regions: bool = False) -> detect.Tool:
    return detect.phonenumbers_tool


def test_detect_json_has_the_figures(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Presidio is an optional extra; the shape of the output is what is checked here.
    monkeypatch.setattr(detect, "presidio_tool", _phonenumbers_as_presidio)
    monkeypatch.setattr(detect, "QUICK_TRANSCRIPTS", 24)
    assert main(["bench", "detect", "--quick", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["bench"] == "detect" and figures["quick"] is True
    assert figures["transcripts"] == 24
    assert set(figures["tools"]) == {"callpipe", "phonenumbers", "presidio", "presidio_default_regions"}
    for tool in figures["tools"].values():
        assert {"transcripts_per_s", "recall", "precision", "speed_vs_presidio", "recall_by_category"} <= set(
            tool
        )
    assert set(figures["targets"]) == {
        "speed_at_least_10x_presidio",
        "recall_at_least_presidio",
        "precision_at_least_presidio",
    }
    assert figures["tools"]["callpipe"]["recall"] == 1.0  # the generator's planted PII, all found


def test_detect_without_presidio_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # import fails as if not installed
    assert main(["bench", "detect", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "callpipe[bench]" in err[0] and "presidio-analyzer" in err[0]


def test_jobs_json_lists_parts_and_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = types.ModuleType("benchmarks_fake_part")

    def run(quick: bool) -> dict[str, Any]:
        return {
            "rows": 10,
            "copy": {"seconds": 1.0, "rows_per_s": 10},
            "retention": {"seconds": 2.0, "rows_per_s": 5, "ratio_to_copy": 0.5},
        }

    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchmarks_fake_part", fake)
    monkeypatch.setattr(batch, "PARTS", ("benchmarks_fake_part", "benchmarks_not_there"))
    assert main(["bench", "jobs", "--quick", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["bench"] == "jobs" and figures["missing"] == ["benchmarks_not_there"]
    assert set(figures["targets"]) == {
        "retention_at_least_70pct_of_copy",
        "erase_touches_at_most_5pct_of_files",
    }
    assert figures["parts"]["benchmarks_fake_part"]["retention"]["ratio_to_copy"] == 0.5
    text = batch.render(figures)
    assert "retention" in text and "benchmarks_not_there" in text


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, 0.0),
        ([5.0], 99, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        (list(map(float, range(1, 101))), 99, 99.0),
    ],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_rates_leave_out_idle_time() -> None:
    commits = [Commit("p000", 0, 9, 110.0, 600), Commit("p001", 0, 9, 120.0, 400)]
    figures = stream.rates(100.0, commits, idle_s=10.0)
    assert figures == {
        "events_per_s": 100,
        "end_to_end_events_per_s": 50,
        "seconds": 20.0,
        "idle_seconds": 10.0,
    }
    assert stream.rates(0.0, [])["events_per_s"] == 0


def test_latency_is_commit_time_minus_produce_time() -> None:
    commits = [
        Commit("calls.raw-p000", 0, 4, 10.0, 5),
        Commit("calls.raw-p000", 5, 9, 12.0, 5),
        Commit("calls.raw-p001", 0, 9, 11.0, 10),
    ]
    sent = [Sent(0, 3, (9_000, 9_500, 9_900)), Sent(1, 0, (10_000,)), Sent(2, 0, (10_000,))]
    assert stream.latencies_ms(commits, sent, 3) == [1_000.0, 500.0, 2_100.0, 1_000.0]


def test_table_is_markdown() -> None:
    text = table(["case", "ev/s"], [["single", 12_345], ["batch", None]])
    lines = text.splitlines()
    assert lines[0].startswith("| case") and lines[1].startswith("|---")
    assert "12,345" in lines[2] and "-" in lines[3]


@pytest.mark.parametrize(
    ("parts", "quick", "expected"),
    [
        ({}, False, (None, None)),
        (
            {"bench_jobs": {"retention": {"ratio_to_copy": 0.9}, "erase": {"files_touched_share": 0.02}}},
            False,
            (True, True),
        ),
        (
            {"bench_jobs": {"retention": {"ratio_to_copy": 0.5}, "erase": {"files_touched_share": 0.2}}},
            False,
            (False, False),
        ),
        (
            {"bench_jobs": {"retention": {"ratio_to_copy": 0.9}, "erase": {"files_touched_share": 0.02}}},
            True,
            (None, None),
        ),
    ],
)
def test_jobs_targets(parts: dict[str, Any], quick: bool, expected: tuple[bool | None, bool | None]) -> None:
    got = batch.targets(parts, quick)
    assert (got["retention_at_least_70pct_of_copy"], got["erase_touches_at_most_5pct_of_files"]) == expected


def test_the_runner_bench_splits_an_events_cpu_time_into_the_runners_steps() -> None:
    """docs/BENCHMARKS.md quotes `bench_runner --stages`: the three steps and their total, each
    a positive figure that adds up."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "pipeline.bench.bench_runner", "400", "1", "--stages"],
        capture_output=True,
        check=True,
        timeout=300,
    )
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "400 events in 1-event messages, CPU us per event (mean of 3 runs):"
    figures = {name: float(value) for name, value in (line.split() for line in lines[1:])}
    assert list(figures) == ["feed", "pump", "flush", "total"]
    assert all(v > 0 for v in figures.values())
    assert abs(figures["feed"] + figures["pump"] + figures["flush"] - figures["total"]) < 0.2
