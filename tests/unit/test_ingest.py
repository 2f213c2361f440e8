"""`callpipe ingest` of several files over many days: one group flush lands them all with one file
per zone x dt x bucket, every event once; a re-run lands nothing; a crash (raised, or a real
process exit) at any step of a group flush leaves each file landed whole or not at all, and the
next run finishes the job exactly once."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import codec, ingest
from pipeline.carrier.generate import generate_traffic
from pipeline.ingest import IngestError, IngestResult, ingest_files, load_states
from pipeline.keys import PseudonymKey
from pipeline.settings import Settings
from schemas.clock import DAY_MS
from sinks import layout, lineage
from sinks.lake import claim, file_source
from sinks.layout import ANALYTICS, VAULT, ZONES
from sinks.read import read_zone, zone_files
from sinks.stats import read_stats

KEY = PseudonymKey("test", bytes(range(32)))
START = 1_767_225_600_000
# when the runs land: every call of `inputs` (at most 30 days) is in the past and within every
# retention limit of the default policy, so each lands whole in both zones as it was
NOW = START + 30 * DAY_MS
HERE = Path(__file__).resolve().parent


class Crash(Exception):
    """Stands in for the process dying at a step of a flush."""


def inputs(root: Path, files: int = 3, per_file: int = 40, days: int = 30) -> dict[str, list[Path]]:
    """Avro container files of calls spread over `days`, plus consent and request files."""
    traffic = generate_traffic(7, files * per_file, START, days * DAY_MS, accounts=30)
    root.mkdir(parents=True, exist_ok=True)
    calls = []
    for i in range(files):
        path = root / f"calls-{i}.avro"
        path.write_bytes(
            codec.encode_container(traffic.calls[i * per_file : (i + 1) * per_file], "CallEvent")
        )
        calls.append(path)
    consent = root / "consent.jsonl"
    consent.write_bytes(b"\n".join(codec.to_json(r, "ConsentEvent") for r in traffic.consents))
    requests = root / "requests.jsonl"
    requests.write_bytes(b"\n".join(codec.to_json(r, "PrivacyRequest") for r in traffic.requests))
    return {"calls": calls, "consent": [consent], "requests": [requests]}


def run(
    lake: Path,
    given: dict[str, list[Path]],
    *,
    calls: list[Path] | None = None,
    budget: int = 1_000_000,
    buckets: int = 2,
    hook: Callable[[str], None] | None = None,
    jobs: int = 1,
) -> list[IngestResult]:
    settings = dataclasses.replace(Settings(), lake=lake, buckets=buckets, ingest_flush_rows=budget)
    states, _ = load_states(given["consent"], given["requests"])
    chosen = given["calls"] if calls is None else calls
    return ingest_files(chosen, settings, KEY, states, NOW, hook=hook, jobs=jobs)


def landed(lake: Path) -> dict[str, Counter[str]]:
    """Per zone, how many rows each event has in the lake."""
    return {
        zone: Counter(read_zone(lake, zone, columns=["event_id"])["event_id"].to_pylist()) for zone in ZONES
    }


def assert_exactly_once(lake: Path, expected: dict[str, Counter[str]]) -> None:
    got = landed(lake)
    assert got == expected
    assert all(n == 1 for zone in ZONES for n in got[zone].values())


@pytest.fixture(scope="module")
def given(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return inputs(tmp_path_factory.mktemp("input"))


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, given: dict[str, list[Path]]
) -> dict[str, Counter[str]]:
    """What each file ingested on its own (one run per file) lands."""
    lake = tmp_path_factory.mktemp("reference") / "lake"
    for path in given["calls"]:
        run(lake, given, calls=[path])
    return landed(lake)


def test_a_backfill_lands_every_event_once_in_one_file_per_partition(
    lake: Path, given: dict[str, list[Path]], reference: dict[str, Counter[str]]
) -> None:
    results = run(lake, given)
    assert_exactly_once(lake, reference)
    assert sum(r.counts["vault"] for r in results) == sum(reference[VAULT].values())
    assert sum(r.counts["analytics"] for r in results) == sum(reference[ANALYTICS].values())
    for zone in ZONES:
        folders = Counter(path.parent for path in zone_files(lake, zone))
        assert len(folders) > 20 and set(folders.values()) == {1}  # 30 days, one file each
    for result, path in zip(results, given["calls"], strict=True):
        assert lineage.held_ranges(lake, result.source) == [(0, 39)]
        assert result.source.startswith(f"ingest-{path.stem}")
    first = zone_files(lake, VAULT)[0]
    assert set(lineage.read_lineage(first)) == {r.source for r in results}
    assert read_stats(lake).events_in == 120
    assert not list((lake / layout.GROUPS_DIR).glob("*.json"))


def test_a_file_ingested_again_lands_nothing(
    lake: Path, given: dict[str, list[Path]], reference: dict[str, Counter[str]]
) -> None:
    run(lake, given, calls=given["calls"][:1])
    before = sorted(p for zone in ZONES for p in zone_files(lake, zone))
    again = run(lake, given, calls=[given["calls"][0], given["calls"][0]])
    assert [r.skipped for r in again] == [40, 0] and not again[0].counts["vault"]
    assert sorted(p for zone in ZONES for p in zone_files(lake, zone)) == before
    results = run(lake, given)  # the other two land, the first is skipped
    assert [r.skipped for r in results] == [40, 0, 0]
    assert_exactly_once(lake, reference)


def test_processes_sharing_the_files_land_each_event_once_and_report_in_order(
    lake: Path, given: dict[str, list[Path]], reference: dict[str, Counter[str]]
) -> None:
    first, second, third = given["calls"]
    results = run(lake, given, calls=[first, second, first, third], jobs=2)
    assert [r.source for r in results] == [file_source(p) for p in (first, second, first, third)]
    assert [r.counts["events_in"] for r in results] == [40, 40, 0, 40]  # given twice: landed once
    assert_exactly_once(lake, reference)
    assert sum(r.counts["vault"] for r in results) == sum(reference[VAULT].values())
    again = run(lake, given, jobs=3)
    assert [r.skipped for r in again] == [40, 40, 40]
    assert_exactly_once(lake, reference)


def test_a_share_that_fails_is_reported_and_the_others_land(
    lake: Path, given: dict[str, list[Path]], reference: dict[str, Counter[str]]
) -> None:
    first, second, third = given["calls"]
    held = claim(lake, file_source(second))  # another process writes it (a POSIX lock: not this one's)
    try:
        with pytest.raises(IngestError, match="another process is writing this source"):
            run(lake, given, jobs=3)
    finally:
        os.close(held)
    assert lineage.held_ranges(lake, file_source(second)) == []
    for path in (first, third):
        assert lineage.held_ranges(lake, file_source(path)) == [(0, 39)]
    run(lake, given, jobs=3)
    assert_exactly_once(lake, reference)


def test_a_budget_smaller_than_the_input_lands_it_in_several_groups_and_ranges(
    lake: Path,
    given: dict[str, list[Path]],
    reference: dict[str, Counter[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ingest, "CHUNK", 10)  # the budget is looked at after every chunk
    results = run(lake, given, budget=30)
    assert_exactly_once(lake, reference)
    assert all(len(lineage.held_ranges(lake, r.source)) > 1 for r in results)
    assert max(Counter(path.parent for path in zone_files(lake, VAULT)).values()) > 1


def test_a_crash_at_every_step_of_a_group_flush_then_a_rerun_lands_each_event_once(
    tmp_path: Path, reference: dict[str, Counter[str]]
) -> None:
    given = inputs(tmp_path / "in", per_file=40, days=2)
    steps: list[str] = []
    run(tmp_path / "dry", given, buckets=1, budget=100, hook=steps.append)
    expected = landed(tmp_path / "dry")
    want = {"intent_written", "temp_written", "temps_durable", "committed", "manifest_written", "renamed"}
    assert want | {"published"} <= set(steps)
    for at in range(len(steps)):
        lake = tmp_path / f"crash-{at}"
        calls = 0

        def crash(step: str, at: int = at) -> None:
            nonlocal calls
            calls += 1
            if calls == at + 1:
                raise Crash(step)

        with pytest.raises(Crash):
            run(lake, given, buckets=1, budget=100, hook=crash)
        # only the last file is given again: recovering it finishes or undoes the whole group
        run(lake, given, calls=given["calls"][-1:], buckets=1, budget=100)
        run(lake, given, buckets=1, budget=100)
        assert_exactly_once(lake, expected)
        assert not list((lake / layout.GROUPS_DIR).glob("*.json"))


CHILD = """
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from pipeline.settings import Settings
from sinks import crypt
from test_ingest import inputs, run
crypt.configure(Settings.from_env().vault_crypto())  # as the CLI does
target, lake, root = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
def hook(step):
    if step == target:
        os._exit(137)
run(lake, inputs(root), hook=hook)
"""


@pytest.mark.parametrize(
    "step", ["intent_written", "temp_written", "committed", "manifest_written", "renamed"]
)
def test_a_killed_ingest_recovers_exactly_once(
    tmp_path: Path, step: str, given: dict[str, list[Path]], reference: dict[str, Counter[str]]
) -> None:
    """A real process exit (no unwinding, no finally, locks dropped by the kernel)."""
    lake = tmp_path / "lake"
    args = [sys.executable, "-c", CHILD, step, str(lake), str(given["calls"][0].parent), str(HERE)]
    assert subprocess.run(args, check=False, timeout=300).returncode == 137
    run(lake, given)
    assert_exactly_once(lake, reference)
