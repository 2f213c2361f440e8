"""What lands is what retention keeps: 500 days of calls ingested at T leave the lake that landing
them with nothing expired and then running `jobs retention --as-of T` leaves, zone by zone, row
by row, column by column, and every event is counted once on the way."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import duckdb
import pytest

from jobs import retention
from pipeline import codec
from pipeline.bench.canary import states_of
from pipeline.carrier.generate import generate_traffic
from pipeline.consent import AccountState
from pipeline.ingest import ingest_files
from pipeline.keys import PseudonymKey
from pipeline.policy import ConsentDefaults, Policy, Retention
from pipeline.reasons import PAST_RETENTION, Drop
from pipeline.settings import Settings
from schemas import clock
from schemas.clock import DAY_MS
from sinks.layout import ANALYTICS, VAULT, ZONES
from sinks.read import read_zone
from sinks.stats import read_stats

KEY = PseudonymKey("test", bytes(range(32)))
T = 1_767_225_600_000 + 12_345  # 2026-01-01T00:00:12.345Z: the limits fall between whole seconds
KEEP_ALL = Retention(vault_days=36500, analytics_days=36500, recording_days=36500, transcript_days=36500)
EXPIRY = PAST_RETENTION


def _shifted(call: dict[str, Any], started: int) -> dict[str, Any]:
    delta = started - call["started_at"]
    out = dict(call, started_at=started)
    for name in ("answered_at", "ended_at"):
        if out[name] is not None:
            out[name] += delta
    return out


def _traffic(retention_: Retention) -> tuple[list[dict[str, Any]], dict[str, AccountState]]:
    """500 days of calls before T, and calls a millisecond either side of every limit."""
    traffic = generate_traffic(17, 3_000, T - 500 * DAY_MS, 500 * DAY_MS, accounts=60)
    calls = list(traffic.calls)
    limits = {
        retention_.vault_days,
        retention_.analytics_days,
        retention_.recording_days,
        retention_.transcript_days,
    }
    edges = [T - days * DAY_MS + step for days in sorted(limits) for step in (-1, 0, 1)]
    for i, started in enumerate(edges * 4):  # a few accounts' calls on each edge
        calls.append(_shifted(dict(calls[i * 37], event_id=f"edge-{i}"), started))
    return calls, states_of(traffic)


def _land(lake: Path, calls: Path, states: dict[str, AccountState], policy: Policy) -> None:
    settings = dataclasses.replace(Settings(), lake=lake, buckets=4, policy=policy, ingest_flush_rows=1_000)
    ingest_files([calls], settings, KEY, states, T)


def _rows(lake: Path, zone: str) -> list[dict[str, Any]]:
    table = read_zone(lake, zone).replace_schema_metadata(None)
    return sorted(table.to_pylist(), key=lambda r: r["event_id"])


@pytest.mark.parametrize(
    "limits",
    [Retention(), Retention(vault_days=200, analytics_days=120, recording_days=45, transcript_days=7)],
    ids=["default", "analytics-shorter"],
)
def test_landing_at_t_leaves_what_landing_everything_and_retention_at_t_leave(
    tmp_path: Path, limits: Retention
) -> None:
    # recording and transcription on by default: most calls carry both, so their limits show
    consent = ConsentDefaults(recording=True, transcription=True)
    calls, states = _traffic(limits)
    path = tmp_path / "calls.jsonl"
    path.write_bytes(b"".join(codec.to_json(c, "CallEvent") + b"\n" for c in calls))

    landed, kept_then_expired = tmp_path / "landed", tmp_path / "retained"
    _land(landed, path, states, Policy(retention=limits, consent=consent))
    _land(kept_then_expired, path, states, Policy(retention=KEEP_ALL, consent=consent))
    assert not {d for d in read_stats(kept_then_expired).drops if d in EXPIRY}  # nothing expired
    done = retention.run(duckdb.connect(), kept_then_expired, Policy(retention=limits), clock.from_ms(T))
    assert done.summary.rows_removed[VAULT] > 0 and done.summary.values_nulled

    for zone in ZONES:
        want, got = _rows(kept_then_expired, zone), _rows(landed, zone)
        assert [r["event_id"] for r in got] == [r["event_id"] for r in want], zone
        assert got == want, zone

    stats = read_stats(landed)
    drops = stats.drops
    assert stats.events_in == len(calls)
    assert stats.written[VAULT] == len(_rows(landed, VAULT))
    assert stats.written[ANALYTICS] == len(_rows(landed, ANALYTICS))
    assert stats.events_in == (
        stats.written[VAULT]
        + stats.dead
        + drops.get(Drop.ERASED, 0)
        + drops.get(Drop.EXPIRED, 0)
        + drops.get(Drop.VAULT_EXPIRED, 0)
    )
    if limits.analytics_days < limits.vault_days:
        seen = EXPIRY - {Drop.VAULT_EXPIRED}
    else:
        seen = EXPIRY - {Drop.ANALYTICS_EXPIRED}
    assert {Drop(d) for d in drops if d in EXPIRY} == seen
    nulled = done.summary.values_nulled  # retention's own counts of what the landing left out
    assert drops[Drop.RECORDING_EXPIRED] == nulled.get(f"{VAULT}.recording_uri", 0)
