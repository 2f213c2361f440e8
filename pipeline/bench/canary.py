"""The in-process canaries' input: seeded carrier traffic with its accounts' consent and request
state, as `bench_chain` and `bench_runner` both run it (no broker, no files)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.carrier.generate import Traffic, generate_traffic
from pipeline.consent import AccountState, record_consent, record_request
from pipeline.keys import PseudonymKey
from schemas.clock import DAY_MS

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
KEY = PseudonymKey("v1", b"b" * 32)


@dataclass(frozen=True)
class Canary:
    traffic: Traffic
    states: dict[str, AccountState]  # every account with consent or request history
    now_ms: int  # two days after the traffic's start: every call is in the past


def seeded(events: int, seed: int = 7) -> Canary:
    traffic = generate_traffic(seed, events, START_MS)
    return Canary(traffic, states_of(traffic), START_MS + 2 * DAY_MS)


def states_of(traffic: Traffic) -> dict[str, AccountState]:
    """Every account's consent and request state after the traffic's control events."""
    states: dict[str, AccountState] = {}
    for c in traffic.consents:
        states[c["account_id"]] = record_consent(states.get(c["account_id"]), c)
    for r in traffic.requests:
        states[r["account_id"]] = record_request(states.get(r["account_id"]), r)
    return states
