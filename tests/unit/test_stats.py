"""The stream's counters are named once (sinks.stats) and parsed once, by StreamStats."""

from __future__ import annotations

from pathlib import Path

from sinks import lineage, stats
from sinks.stats import StreamStats, read_stats, write_stats


def test_counter_names_parse_back_into_what_they_mean() -> None:
    counts = {
        "events_in": 10,
        "messages": 4,
        "vault": 6,
        "analytics": 5,
        stats.dead_letter("malformed"): 2,
        stats.drop("erased"): 1,
        stats.rejected("consent", "bad_time"): 3,
        stats.CONTROL_APPLIED[1]: 7,
        "control_errors": 1,
    }
    parsed = StreamStats.from_counts(counts, sources=2)
    assert (parsed.sources, parsed.events_in, parsed.messages) == (2, 10, 4)
    assert parsed.written == {"analytics": 5, "vault": 6}
    assert parsed.dead_letters == {"malformed": 2} and parsed.dead == 2
    assert parsed.drops == {"erased": 1}
    assert parsed.control == {"consent_rejected.bad_time": 3, "privacy_requests": 7}
    assert parsed.other == {"control_errors": 1}


def test_only_ranges_with_a_manifest_count(tmp_path: Path) -> None:
    write_stats(tmp_path, "calls.raw-p000", 0, 9, {"events_in": 10, stats.dead_letter("malformed"): 1})
    write_stats(tmp_path, "calls.raw-p000", 10, 19, {"events_in": 10})  # its flush never committed
    lineage.write_manifest(tmp_path, lineage.Manifest("calls.raw-p000", 0, 9, ()))
    assert read_stats(tmp_path) == StreamStats(sources=1, events_in=10, dead_letters={"malformed": 1})
    assert read_stats(tmp_path / "nothing") == StreamStats()
