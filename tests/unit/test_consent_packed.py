"""The packed account state decides exactly as the tuple form it replaced: the tuple form is kept
here as the reference (its record and decide as they were), and random histories, in random
arrival order with repeats, times with ties, negative and at the int64 ends, are judged by both
at every time that matters, under every consent default."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.consent import (
    PURPOSES,
    REQUEST_KINDS,
    AccountState,
    Decision,
    Decisions,
    account_state,
    decide,
    entries,
    record_consent,
    record_request,
)
from pipeline.policy import ConsentDefaults

# ---------------------------------------------------------------- the tuple form, as it was

Consent = tuple[int, str, bool]
Request = tuple[int, str, str]


def _added(history: tuple[Any, ...], entry: Any, key: Any) -> tuple[Any, ...]:
    if entry in history:
        return history
    return tuple(sorted((*history, entry), key=key))


def ref_record(state: tuple[tuple[Consent, ...], tuple[Request, ...]], e: dict[str, Any]) -> Any:
    consents, requests = state
    if "kind" in e:
        entry = (int(e["at"]), str(e["kind"]), str(e["request_id"]))
        return consents, _added(requests, entry, lambda r: (r[0], REQUEST_KINDS.index(r[1]), r[2]))
    entry_c = (int(e["at"]), str(e["purpose"]), bool(e["granted"]))
    return _added(consents, entry_c, lambda c: (c[0], not c[2], c[1])), requests


def ref_decide(state: Any, at_ms: int, defaults: ConsentDefaults) -> Decision:
    consents, requests = state
    last: dict[str, bool] = {}
    for at, purpose, granted in consents:
        if at > at_ms:
            break
        last[purpose] = granted
    analytics_at = max((at for at, p, _ in consents if p == "analytics" and at <= at_ms), default=-1)
    erased = any(kind == "erase" for _at, kind, _id in requests)
    restricted = False
    for at, kind, _ in requests:
        if at > at_ms:
            break
        if kind == "restrict":
            restricted = True
        elif kind == "unrestrict":
            restricted = False
        elif kind == "object" and at >= analytics_at:
            last["analytics"] = False
    return Decision(
        erased=erased,
        restricted=restricted,
        recording=last.get("recording", defaults.recording),
        transcription=last.get("transcription", defaults.transcription),
        analytics=last.get("analytics", defaults.analytics),
    )


# ---------------------------------------------------------------- random histories

INT64 = (-(1 << 63), (1 << 63) - 1)
# few distinct times, so ties are common; -2 and -1 sit either side of the objection rule's -1
TIMES = st.sampled_from([INT64[0], INT64[0] + 1, -2, -1, 0, 1, 5, 7, 1_780_000_000_000, INT64[1]])

CONSENTS = st.builds(
    lambda at, p, g: {"account_id": "a", "purpose": p, "granted": g, "at": at, "source": "app"},
    TIMES,
    st.sampled_from(PURPOSES),
    st.booleans(),
)
REQUESTS = st.builds(
    lambda at, k, i: {"account_id": "a", "kind": k, "at": at, "request_id": f"r-{i}"},
    TIMES,
    st.sampled_from(REQUEST_KINDS),
    st.integers(0, 2),
)
HISTORIES = st.lists(st.one_of(CONSENTS, REQUESTS), max_size=14)
DEFAULTS = [ConsentDefaults(*flags) for flags in itertools.product((False, True), repeat=3)]


def both(events: list[dict[str, Any]]) -> tuple[AccountState, Any]:
    packed: AccountState | None = None
    tuples: Any = ((), ())
    for e in events:
        packed = record_request(packed, e) if "kind" in e else record_consent(packed, e)
        tuples = ref_record(tuples, e)
    return packed if packed is not None else account_state(), tuples


def times_that_matter(events: list[dict[str, Any]]) -> set[int]:
    at = {e["at"] for e in events} | set(INT64)
    return at | {t - 1 for t in at if t > INT64[0]} | {t + 1 for t in at if t < INT64[1]}


@settings(max_examples=400)
@given(HISTORIES, st.randoms(use_true_random=False))
def test_packed_states_decide_as_the_tuple_form_did(events: list[dict[str, Any]], rnd: Any) -> None:
    arrived = [*events, *rnd.sample(events, min(3, len(events)))]  # some repeated
    rnd.shuffle(arrived)
    packed, tuples = both(arrived)
    assert packed == both(sorted(events, key=lambda e: e["at"]))[0]  # whatever the arrival order
    for defaults in DEFAULTS:
        table = Decisions(packed, defaults)
        for t in times_that_matter(events):
            want = ref_decide(tuples, t, defaults)
            assert decide(packed, t, defaults) == want, (t, defaults, entries(packed))
            assert table.at(t) == want


@given(HISTORIES)
def test_a_version_1_snapshots_histories_pack_to_the_same_state(events: list[dict[str, Any]]) -> None:
    packed, (consents, requests) = both(events)
    assert account_state(consents, requests) == packed


def test_only_what_decisions_read_is_kept() -> None:
    state = account_state(
        [(5, "recording", True), (5, "recording", True)],
        [(6, "access", "r-1"), (6, "rectify", "r-2"), (7, "restrict", "r-3"), (7, "restrict", "r-4")],
    )
    assert entries(state) == [(5, "recording:granted"), (7, "restrict")]
    assert len(state) == 18  # two entries of 9 bytes
    erased = record_request(
        record_request(state, {"at": 9, "kind": "erase", "request_id": "e1"}),
        {"at": 1, "kind": "erase", "request_id": "e2"},
    )
    assert entries(erased)[-1] == (None, "erase") and len(erased) == 27  # one erase, whatever its time
    # a consent after the erase, even at the last possible time, leaves the erase last
    later = record_consent(erased, {"at": INT64[1], "purpose": "analytics", "granted": True})
    assert entries(later)[-1] == (None, "erase") and decide(later, INT64[1], DEFAULTS[0]).erased


def test_a_time_beyond_int64_is_refused_but_an_erase_still_holds() -> None:
    """The decoder admits only int64 times; anything else fails its record (counted and
    dead-lettered by the control reader), except an erase, which holds whatever its time."""
    with pytest.raises(ValueError):
        record_consent(None, {"at": 1 << 63, "purpose": "recording", "granted": True})
    with pytest.raises(ValueError):
        record_request(None, {"at": -(1 << 63) - 1, "kind": "restrict", "request_id": "r"})
    assert decide(
        record_request(None, {"at": 1 << 70, "kind": "erase", "request_id": "r"}), 0, DEFAULTS[0]
    ).erased
