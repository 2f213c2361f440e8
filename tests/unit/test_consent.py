"""Consent and subject state: decisions at the event's time, and event-time ordering of calls."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.consent import (
    AccountState,
    Decision,
    EventTimeMerger,
    Stream,
    account_state,
    apply_consent,
    consent_fields,
    decide,
    entries,
    record_consent,
    record_request,
)
from pipeline.policy import ConsentDefaults
from pipeline.reasons import Drop

DEFAULTS = ConsentDefaults()


def consent(purpose: str, granted: bool, at: int) -> dict[str, Any]:
    return {"account_id": "a", "purpose": purpose, "granted": granted, "at": at, "source": "app"}


def request(kind: str, at: int, rid: str | None = None) -> dict[str, Any]:
    return {"request_id": rid or f"{kind}-{at}", "account_id": "a", "kind": kind, "at": at}


def state_of(*events: dict[str, Any]) -> AccountState:
    state = account_state()
    for e in events:
        state = record_request(state, e) if "kind" in e else record_consent(state, e)
    return state


# (events, at, expected (erased, restricted, recording, transcription, analytics))
CASES: list[tuple[list[dict[str, Any]], int, tuple[bool, bool, bool, bool, bool]]] = [
    ([], 100, (False, False, False, False, True)),  # unknown: no recording/transcription, analytics on
    ([consent("recording", True, 50)], 100, (False, False, True, False, True)),
    ([consent("recording", True, 150)], 100, (False, False, False, False, True)),  # granted later
    ([consent("recording", True, 100)], 100, (False, False, True, False, True)),  # at the same ms
    (
        [consent("recording", True, 10), consent("recording", False, 60)],
        100,
        (False, False, False, False, True),
    ),
    (
        [consent("recording", True, 10), consent("recording", False, 160)],
        100,
        (False, False, True, False, True),
    ),
    (
        [consent("recording", True, 100), consent("recording", False, 100)],
        100,
        (False, False, False, False, True),
    ),
    ([consent("transcription", True, 1)], 100, (False, False, False, True, True)),
    ([consent("analytics", False, 1)], 100, (False, False, False, False, False)),
    ([request("object", 50)], 100, (False, False, False, False, False)),
    ([request("object", 150)], 100, (False, False, False, False, True)),
    ([request("object", 50), consent("analytics", True, 70)], 100, (False, False, False, False, True)),
    ([consent("analytics", True, 50), request("object", 70)], 100, (False, False, False, False, False)),
    ([request("restrict", 50)], 100, (False, True, False, False, True)),
    ([request("restrict", 50), request("unrestrict", 80)], 100, (False, False, False, False, True)),
    ([request("restrict", 50), request("unrestrict", 180)], 100, (False, True, False, False, True)),
    ([request("erase", 50)], 100, (True, False, False, False, True)),
    ([request("erase", 100)], 100, (True, False, False, False, True)),
    ([request("erase", 150)], 100, (True, False, False, False, True)),  # erasure is final: older events too
    ([request("access", 50)], 100, (False, False, False, False, True)),
]


@pytest.mark.parametrize(("events", "at", "expected"), CASES)
def test_decide(events: list[dict[str, Any]], at: int, expected: tuple[bool, ...]) -> None:
    assert decide(state_of(*events), at, DEFAULTS) == Decision(*expected)


def test_decide_without_state_uses_defaults() -> None:
    assert decide(None, 5, DEFAULTS) == Decision(False, False, False, False, True)
    assert decide(None, 5, ConsentDefaults(recording=True, analytics=False)) == Decision(
        False, False, True, False, False
    )


@given(st.permutations([c for events, _, _ in CASES for c in events]))
def test_state_is_independent_of_arrival_order_and_repeats(events: list[dict[str, Any]]) -> None:
    once = state_of(*events)
    twice = state_of(*events, *events[:3])
    assert once == twice
    assert once == state_of(*sorted(events, key=lambda e: (e["at"], json.dumps(e, sort_keys=True))))


def test_state_reads_back_as_its_entries() -> None:
    state = state_of(
        consent("recording", True, 5),
        request("restrict", 7, "r-1"),
        consent("analytics", False, 9),
        request("erase", 3),
        request("access", 4),
    )
    assert entries(state) == [
        (5, "recording:granted"),
        (7, "restrict"),
        (9, "analytics:withdrawn"),
        (None, "erase"),  # held at every time
    ]
    assert state == account_state(
        [(9, "analytics", False), (5, "recording", True)], [(3, "erase", "r-2"), (7, "restrict", "r-1")]
    )
    assert entries(account_state()) == []


@pytest.mark.parametrize(
    ("decision", "kept", "drops"),
    [
        (Decision(False, False, True, True, True), ("uri", "text"), {}),
        (Decision(False, False, False, True, True), (None, "text"), {Drop.RECORDING_NO_CONSENT: 1}),
        (Decision(False, False, True, False, True), ("uri", None), {Drop.TRANSCRIPTION_NO_CONSENT: 1}),
        (
            Decision(False, False, False, False, True),
            (None, None),
            {Drop.RECORDING_NO_CONSENT: 1, Drop.TRANSCRIPTION_NO_CONSENT: 1},
        ),
    ],
)
def test_apply_consent(decision: Decision, kept: tuple[Any, Any], drops: dict[Drop, int]) -> None:
    record = {"recording_uri": "uri", "transcript": "text"}
    counter: Counter[Drop] = Counter()
    apply_consent(record, decision, counter)
    assert (record["recording_uri"], record["transcript"]) == kept
    assert dict(counter) == drops


def test_apply_consent_counts_only_what_was_there() -> None:
    record = {"recording_uri": None, "transcript": None}
    counter: Counter[Drop] = Counter()
    apply_consent(record, Decision(False, False, False, False, True), counter)
    assert not counter


# ---------------------------------------------------------------- EventTimeMerger


def test_call_waits_for_consent_stream_to_pass_its_time() -> None:
    merger: EventTimeMerger[str] = EventTimeMerger(max_idle_ms=1_000, now_ms=0)
    merger.observe(Stream.CONSENT, 10, now_ms=0)
    merger.observe(Stream.REQUESTS, 10, now_ms=0)
    merger.add([(50, "call@50")])
    assert merger.release(now_ms=100) == []  # both streams are behind the call
    merger.observe(Stream.CONSENT, 60, now_ms=200)
    assert merger.release(now_ms=200) == []  # requests still behind
    merger.observe(Stream.REQUESTS, 55, now_ms=300)
    assert merger.release(now_ms=300) == ["call@50"]
    assert len(merger) == 0


def test_idle_stream_does_not_hold_calls_back() -> None:
    merger: EventTimeMerger[str] = EventTimeMerger(max_idle_ms=1_000, now_ms=0)
    merger.add([(50, "call")])
    assert merger.release(now_ms=999) == []
    assert merger.release(now_ms=1_000) == ["call"]


def test_caught_up_keeps_a_quiet_stream_waiting() -> None:
    merger: EventTimeMerger[str] = EventTimeMerger(max_idle_ms=1_000, now_ms=0)
    merger.observe(Stream.REQUESTS, 100, now_ms=0)
    merger.add([(50, "call")])
    merger.caught_up(Stream.CONSENT, now_ms=900)
    assert merger.release(now_ms=1_500) == []  # consent polled at 900, so not idle until 1900
    assert merger.release(now_ms=1_900) == ["call"]


def test_releases_in_event_time_order_and_drains() -> None:
    merger: EventTimeMerger[int] = EventTimeMerger(max_idle_ms=10, now_ms=0)
    merger.observe(Stream.CONSENT, 25, now_ms=0)
    merger.observe(Stream.REQUESTS, 25, now_ms=0)
    merger.add([(30, 30), (10, 10), (20, 20), (40, 40), (10, 11)])
    assert merger.release(now_ms=5) == [10, 11, 20]
    assert merger.drain() == [30, 40]


def test_memory_is_bounded() -> None:
    merger: EventTimeMerger[int] = EventTimeMerger(max_idle_ms=10_000, now_ms=0, max_buffered=3)
    merger.observe(Stream.CONSENT, 0, now_ms=0)
    merger.observe(Stream.REQUESTS, 0, now_ms=0)
    merger.add([(t, t) for t in (5, 4, 3, 2, 1)])
    assert merger.release(now_ms=1) == [1, 2]
    assert merger.forced == 2
    assert len(merger) == 3


def test_consent_stamped_before_a_call_applies_even_if_read_after() -> None:
    """The stream scenario end to end: call read first, consent (earlier time) read later."""
    merger: EventTimeMerger[dict[str, Any]] = EventTimeMerger(max_idle_ms=2_000, now_ms=0)
    states: dict[str, AccountState] = {}
    merger.add([(1_000, {"account_id": "a", "started_at": 1_000})])
    assert merger.release(now_ms=10) == []
    states["a"] = record_consent(states.get("a"), consent("recording", True, 900))
    merger.observe(Stream.CONSENT, 900, now_ms=20)
    merger.observe(Stream.CONSENT, 1_100, now_ms=30)  # a later consent event of another account
    merger.observe(Stream.REQUESTS, 1_200, now_ms=30)
    (call,) = merger.release(now_ms=40)
    assert decide(states.get(call["account_id"]), call["started_at"], DEFAULTS).recording


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        EventTimeMerger(max_idle_ms=-1, now_ms=0)
    with pytest.raises(ValueError):
        EventTimeMerger(max_idle_ms=0, now_ms=0, max_buffered=0)


def test_sensitive_fields_and_their_purposes_come_from_the_schema() -> None:
    assert consent_fields() == (
        ("recording_uri", "recording", Drop.RECORDING_NO_CONSENT),
        ("transcript", "transcription", Drop.TRANSCRIPTION_NO_CONSENT),
    )


def test_calls_wait_for_every_active_control_partition_not_just_one() -> None:
    from pipeline.consent import Watermarks

    marks = Watermarks(max_idle_ms=2_000, now_ms=0)
    merger: EventTimeMerger[str] = EventTimeMerger(2_000, 0, watermarks=marks)
    other: EventTimeMerger[str] = EventTimeMerger(2_000, 0, watermarks=marks)  # another calls partition
    marks.observe(Stream.CONSENT, 100, now_ms=3_000, partition=0)
    marks.observe(Stream.CONSENT, 50, now_ms=3_000, partition=5)  # a partition another client wrote
    marks.observe(Stream.REQUESTS, 100, now_ms=3_000, partition=1)
    merger.add([(60, "call-60"), (40, "call-40")])
    other.add([(45, "other-45")])
    assert merger.release(3_100) == ["call-40"]  # partition 5 has not passed 60 yet
    assert other.release(3_100) == ["other-45"]  # the watermarks are shared
    marks.observe(Stream.CONSENT, 70, now_ms=3_200, partition=5)
    assert merger.release(3_300) == ["call-60"]


def test_a_silent_control_partition_stops_holding_calls_back_after_max_idle() -> None:
    from pipeline.consent import Watermarks

    marks = Watermarks(max_idle_ms=2_000, now_ms=0)
    merger: EventTimeMerger[str] = EventTimeMerger(2_000, 0, watermarks=marks)
    marks.observe(Stream.CONSENT, 10, now_ms=3_000, partition=2)
    merger.add([(500, "call")])
    assert merger.release(4_000) == []
    assert merger.release(5_001) == ["call"]


def test_decisions_by_time_agree_with_decide_at_every_time() -> None:
    """The chain's per-account table (`Decisions`) against `decide`, on random histories of
    every purpose and request kind, at every entry time, next to it and far from it."""
    import random

    from pipeline.consent import REQUEST_KINDS, Decisions, record_consent, record_request

    rng = random.Random(5)
    for _ in range(400):
        state = None
        for _ in range(rng.randrange(0, 8)):
            at = rng.randrange(0, 50)
            if rng.random() < 0.6:
                state = record_consent(
                    state,
                    {
                        "at": at,
                        "purpose": rng.choice(["recording", "transcription", "analytics"]),
                        "granted": rng.random() < 0.5,
                    },
                )
            else:
                kind = rng.choice(REQUEST_KINDS)
                state = record_request(state, {"at": at, "kind": kind, "request_id": f"r{rng.randrange(9)}"})
        if state is None:
            continue
        for defaults in (DEFAULTS, ConsentDefaults(recording=True, transcription=True, analytics=False)):
            table = Decisions(state, defaults)
            for at in [*range(-2, 53), 10**13, -(10**13)]:
                assert table.at(at) == decide(state, at, defaults), (state, at)
