"""process_batch: every event accounted for, each privacy rule applied, rows in the zones' shape."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.chain import ChainResult, process_batch
from pipeline.codec import Lineage
from pipeline.consent import AccountState, account_state, decide, record_consent, record_request
from pipeline.keys import PseudonymKey
from pipeline.policy import DEFAULT_POLICY, Policy, Retention
from pipeline.reasons import Drop, Reason, Stage
from schemas import clock
from schemas.zones import analytics_schema, vault_schema
from sinks.arrow import analytics_table, vault_table
from sinks.layout import bucket_of

KEY = PseudonymKey("v1", b"k" * 32)
NOW = 1_710_500_000_000
T0 = NOW - 86_400_000  # 2024-03-14T10:53:20Z
CORPUS = Path(__file__).resolve().parent.parent / "canary" / "transcripts.jsonl"


def call(n: int, account: str = "a", **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": f"ev-{n}",
        "account_id": account,
        "org_id": "org-1",
        "carrier_id": "gb-carrier",
        "kind": "voice",
        "direction": "outbound",
        "caller": "+44 7911 123456",
        "callee": "020 7946 0958",
        "started_at": T0 + n * 1000,
        "answered_at": None,
        "ended_at": None,
        "duration_s": 0,
        "status": "no_answer",
        "cell_id": None,
        "caller_ip": "203.0.113.45",
        "device": None,
        "recording_uri": "s3://rec/x.wav",
        "transcript": "reach me on 020 7946 0958",
        "attributes": {"pin": "1234", "plan": "gold"},
    }
    record.update(overrides)
    return record


def states(**histories: list[dict[str, Any]]) -> dict[str, AccountState]:
    out: dict[str, AccountState] = {}
    for account, events in histories.items():
        state = account_state()
        for e in events:
            state = record_request(state, e) if "kind" in e else record_consent(state, e)
        out[account] = state
    return out


def grant(purpose: str, at: int = 0, granted: bool = True) -> dict[str, Any]:
    return {"purpose": purpose, "granted": granted, "at": at, "source": "app"}


def req(kind: str, at: int = 0) -> dict[str, Any]:
    return {"request_id": f"{kind}-{at}", "kind": kind, "at": at}


def run(records: list[Any], known: dict[str, AccountState] | None = None, **kw: Any) -> ChainResult:
    return process_batch(records, known or {}, DEFAULT_POLICY, KEY, NOW, **kw)


def accounted(result: ChainResult, n: int) -> bool:
    return len(result.vault_rows) + len(result.rejections) + len(result.erased) == n


# account -> (history, vault?, analytics?, drops expected for one event)
ROUTING: list[tuple[list[dict[str, Any]], bool, bool, dict[Drop, int]]] = [
    ([], True, True, {Drop.RECORDING_NO_CONSENT: 1, Drop.TRANSCRIPTION_NO_CONSENT: 1}),
    ([grant("recording"), grant("transcription")], True, True, {}),
    ([req("restrict"), grant("recording"), grant("transcription")], True, False, {Drop.RESTRICTED: 1}),
    (
        [req("restrict"), req("unrestrict", 5)],
        True,
        True,
        {Drop.RECORDING_NO_CONSENT: 1, Drop.TRANSCRIPTION_NO_CONSENT: 1},
    ),
    ([req("object"), grant("recording"), grant("transcription")], True, False, {Drop.ANALYTICS_OBJECTED: 1}),
    (
        [grant("analytics", granted=False), grant("recording")],
        True,
        False,
        {
            Drop.ANALYTICS_OBJECTED: 1,
            Drop.TRANSCRIPTION_NO_CONSENT: 1,
        },
    ),
    ([req("erase")], False, False, {Drop.ERASED: 1}),
    ([req("erase", NOW)], False, False, {Drop.ERASED: 1}),  # an older event arriving after the erasure
]


@pytest.mark.parametrize(("history", "vault", "analytics", "drops"), ROUTING)
def test_routing(history: list[dict[str, Any]], vault: bool, analytics: bool, drops: dict[Drop, int]) -> None:
    result = run([call(1)], states(a=history))
    assert len(result.vault_rows) == int(vault)
    assert len(result.analytics_rows) == int(analytics)
    assert result.erased == ([] if vault else [0])
    assert {d: n for d, n in result.drops.items() if d != Drop.SECRET_ATTRIBUTE} == drops
    assert accounted(result, 1)


def test_consent_nulls_in_both_zones() -> None:
    result = run(
        [call(1, "none"), call(2, "rec", transcript=None), call(3, "both")],
        states(rec=[grant("recording")], both=[grant("recording"), grant("transcription")]),
    )
    by_id = {r["event_id"]: r for r in result.vault_rows}
    an = {r["event_id"]: r for r in result.analytics_rows}
    assert (by_id["ev-1"]["recording_uri"], by_id["ev-1"]["transcript"]) == (None, None)
    assert (an["ev-1"]["has_recording"], an["ev-1"]["transcript"]) == (False, None)
    assert by_id["ev-2"]["recording_uri"] == "s3://rec/x.wav" and an["ev-2"]["has_recording"] is True
    assert by_id["ev-3"]["transcript"] == "reach me on 020 7946 0958"  # the vault keeps the original
    assert an["ev-3"]["transcript"] == "reach me on [PHONE]"
    assert result.drops[Drop.RECORDING_NO_CONSENT] == 1
    assert result.drops[Drop.TRANSCRIPTION_NO_CONSENT] == 1


def test_consent_is_judged_at_each_events_time() -> None:
    history = [grant("recording", T0 + 1500), grant("recording", T0 + 3500, granted=False)]
    result = run([call(n) for n in (1, 2, 3, 4)], states(a=history))
    kept = [r["recording_uri"] is not None for r in result.vault_rows]
    assert kept == [False, True, True, False]


def test_mixed_batch_accounts_for_every_event() -> None:
    batch: list[Any] = [
        call(1, "ok"),
        call(2, "gone"),
        call(3, "ok", duration_s=-5),
        call(1, "ok"),  # duplicate event id
        "garbage",
        call(4, "locked"),
        call(5, "objector"),
        call(6, "ok", kind="fax"),
    ]
    known = states(gone=[req("erase")], locked=[req("restrict")], objector=[req("object")])
    result = run(batch, known)
    assert accounted(result, len(batch))
    assert [r["event_id"] for r in result.vault_rows] == ["ev-1", "ev-4", "ev-5"]
    assert [r["event_id"] for r in result.analytics_rows] == ["ev-1"]
    assert result.erased == [1]
    assert [(r.offset, r.reason, r.stage) for r in result.rejections] == [
        (2, Reason.BAD_DURATION, Stage.VALIDATE),
        (3, Reason.DUPLICATE, Stage.VALIDATE),
        (4, Reason.MALFORMED, Stage.VALIDATE),
        (7, Reason.UNKNOWN_ENUM, Stage.VALIDATE),
    ]
    assert result.drops[Drop.ERASED] == 1
    assert result.drops[Drop.RESTRICTED] == 1
    assert result.drops[Drop.ANALYTICS_OBJECTED] == 1


def test_rows_match_the_zone_schemas() -> None:
    everything = call(
        1,
        answered_at=T0 + 2000,
        ended_at=T0 + 62_000,
        duration_s=60,
        status="answered",
        cell_id="234-15-1234-5678",
        device={"device_id": "d", "device_type": "phone", "os": "Android 14", "app_version": "5.1.0"},
    )
    result = run([everything, call(2, transcript=None, attributes=None, caller_ip=None)])
    for row in result.vault_rows:
        assert list(row) == vault_schema().names
    for row in result.analytics_rows:
        assert set(row) == set(analytics_schema().names)
    assert vault_table(result.vault_rows).num_rows == 2
    assert analytics_table(result.analytics_rows).num_rows == 2


def test_secrets_never_reach_a_zone() -> None:
    result = run([call(1, attributes={"userPassword": "hunter2", "authToken": "t0k", "plan": "gold"})])
    assert result.vault_rows[0]["attributes"] == {"plan": "gold"}
    assert result.analytics_rows[0]["attributes"] == {"plan": "gold"}
    assert result.drops[Drop.SECRET_ATTRIBUTE] == 2


def test_routes_and_lineage() -> None:
    sources = [Lineage(3, 100, 0), Lineage(3, 100, 1), Lineage(3, 101, 0)]
    result = run([call(1, "a"), call(2, "b"), call(3, "a")], sources=sources, buckets=16)
    assert [(r["source_partition"], r["source_offset"], r["source_index"]) for r in result.vault_rows] == [
        (3, 100, 0),
        (3, 100, 1),
        (3, 101, 0),
    ]
    for row, route in zip(result.analytics_rows, result.analytics_routes, strict=True):
        assert route.account_token == row["account_token"]
        assert route.bucket == bucket_of(route.account_token, 16)
        assert route.dt == "2024-03-14"
    assert result.vault_routes == result.analytics_routes


def test_default_lineage_is_the_batch_position() -> None:
    result = run([call(1), call(2)])
    assert [(r["source_partition"], r["source_offset"]) for r in result.vault_rows] == [(-1, 0), (-1, 1)]


def test_sources_must_match_records() -> None:
    with pytest.raises(ValueError):
        run([call(1)], sources=[])


def test_input_is_not_changed() -> None:
    record = call(1)
    before = json.dumps(record, sort_keys=True)
    run([record])
    assert json.dumps(record, sort_keys=True) == before


def test_canary_corpus_through_the_chain() -> None:
    """Planted PII in transcripts and attributes never reaches the analytics zone; ordinary
    numbers do."""
    entries = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
    callers = {"GB": "+442079460958", "US": "+14155552671", "DE": "+4930901820", "FR": "+33142685300"}
    batch = []
    for i, e in enumerate(entries):
        region = (e["regions"] or ["GB"])[0]
        number = callers.get(region, "+442079460958")
        batch.append(
            call(
                i,
                "consenting",
                caller=number,
                callee=number,
                carrier_id=f"carrier-{region.lower()}",
                transcript=e["text"],
                attributes={"note": e["text"]},
            )
        )
    known = states(consenting=[grant("transcription")])
    result = run(batch, known)
    assert len(result.analytics_rows) == len(entries)
    drops: Counter[str] = Counter()
    for e, row in zip(entries, result.analytics_rows, strict=True):
        for text in (row["transcript"], row["attributes"]["note"]):
            for _label, value in e["pii"]:
                assert value not in text, e["id"]
            for keep in e["keep"]:
                if keep not in text:
                    drops[e["id"]] += 1
    assert not drops


EVENTS = st.one_of(
    st.builds(
        grant,
        st.sampled_from(["recording", "transcription", "analytics"]),
        st.integers(0, 9000),
        st.booleans(),
    ),
    st.builds(
        req, st.sampled_from(["erase", "restrict", "unrestrict", "object", "access"]), st.integers(0, 9000)
    ),
)
BROKEN = [{}, {"duration_s": -1}, {"kind": "fax"}, {"event_id": ""}, {"started_at": "soon"}]


@given(
    calls=st.lists(
        st.tuples(st.sampled_from("abcd"), st.integers(0, 8), st.integers(-1, len(BROKEN) - 1)), max_size=25
    ),
    histories=st.dictionaries(st.sampled_from("abcd"), st.lists(EVENTS, max_size=5)),
)
def test_every_event_accounted_for_and_every_rule_kept(
    calls: list[tuple[str, int, int]], histories: dict[str, list[dict[str, Any]]]
) -> None:
    batch = [call(n, account, **(BROKEN[b] if b >= 0 else {})) for account, n, b in calls]
    account_states = states(**histories)
    result = run(batch, account_states)
    assert accounted(result, len(batch))
    assert len(result.erased) == result.drops[Drop.ERASED]
    for row in result.vault_rows:
        decision = decide(account_states.get(row["account_id"]), row["started_at"], DEFAULT_POLICY.consent)
        assert not decision.erased
        assert decision.recording or row["recording_uri"] is None
        assert decision.transcription or row["transcript"] is None
    allowed = {
        r["event_id"]
        for r in result.vault_rows
        if (
            d := decide(account_states.get(r["account_id"]), r["started_at"], DEFAULT_POLICY.consent)
        ).analytics
        and not d.restricted
    }
    assert {r["event_id"] for r in result.analytics_rows} == allowed


def test_a_rejection_names_its_source_and_holds_the_event_without_secrets() -> None:
    """What validation rejects is the dead letter itself: the source message's coordinates (for
    `dlq replay`) and the event as JSON, secret-named attributes masked."""
    bad = call(1, duration_s=-1, attributes={"password": "hunter2", "plan": "gold"})
    (rej,) = run([call(0), bad], sources=[Lineage(3, 40, 0), Lineage(3, 41, 7)]).rejections
    assert (rej.reason, rej.stage, rej.partition, rej.offset, rej.index) == (
        Reason.BAD_DURATION,
        Stage.VALIDATE,
        3,
        41,
        7,
    )
    held = json.loads(rej.raw)
    assert held["event_id"] == bad["event_id"] and held["attributes"] == {"plan": "gold"}
    assert b"hunter2" not in rej.raw


DAY = 86_400_000
LIMITS = (30, 90, 400)  # recordings and transcripts, vault, analytics: the default policy's days
# the age of a call at NOW: on each limit (kept: retention removes what started before it), a
# millisecond inside it and a millisecond past it
AGES = [0, *(d * DAY + step for d in LIMITS for step in (-1, 0, 1))]
KEPT_BY = {"both": ("vault", "analytics"), "objector": ("vault",), "gone": ()}


def expected_landing(account: str, age: int) -> tuple[bool, bool, bool, dict[Drop, int]]:
    """(vault row?, analytics row?, recording and transcript kept?, drops) for a call of `account`
    that is `age` old at NOW under the default policy, as `jobs retention --as-of NOW` leaves it."""
    if account == "gone":
        return False, False, False, {Drop.ERASED: 1}
    zones = KEPT_BY[account]
    in_vault = "vault" in zones and age <= 90 * DAY
    in_analytics = "analytics" in zones and age <= 400 * DAY
    drops: Counter[Drop] = Counter()
    if account == "objector" and in_vault:
        drops[Drop.ANALYTICS_OBJECTED] += 1
    if not (in_vault or in_analytics):
        return False, False, False, {Drop.EXPIRED: 1}
    if not in_vault:
        drops[Drop.VAULT_EXPIRED] += 1
    fresh = age <= 30 * DAY
    if not fresh:
        drops[Drop.TRANSCRIPT_EXPIRED] += 1
        if in_vault:
            drops[Drop.RECORDING_EXPIRED] += 1
    return in_vault, in_analytics, fresh, dict(drops)


@pytest.mark.parametrize("account", sorted(KEPT_BY))
@pytest.mark.parametrize("age", AGES)
def test_what_is_past_retention_at_now_never_lands(account: str, age: int) -> None:
    history = [grant("recording"), grant("transcription")]
    known = states(both=history, objector=[req("object"), *history], gone=[req("erase"), *history])
    result = run([call(1, account, started_at=NOW - age)], known)
    vault, analytics, kept, drops = expected_landing(account, age)
    assert len(result.vault_rows) == int(vault) and len(result.vault_routes) == int(vault)
    assert len(result.analytics_rows) == int(analytics) and len(result.analytics_routes) == int(analytics)
    assert result.expired == ([0] if Drop.EXPIRED in drops else [])
    assert {d: n for d, n in result.drops.items() if d != Drop.SECRET_ATTRIBUTE} == drops
    for row in result.vault_rows:
        assert (row["recording_uri"], row["transcript"]) == (
            ("s3://rec/x.wav", "reach me on 020 7946 0958") if kept else (None, None)
        )
    for row in result.analytics_rows:
        assert row["has_recording"] is True  # retention leaves it as it landed
        assert row["transcript"] == ("reach me on [PHONE]" if kept else None)
        assert row["started_at"] == NOW - age
    landed_only_in_analytics = result.drops[Drop.VAULT_EXPIRED]
    assert (
        len(result.vault_rows)
        + len(result.rejections)
        + len(result.erased)
        + len(result.expired)
        + (landed_only_in_analytics)
        == 1
    )


def test_a_batch_of_every_age_and_account_is_accounted_for_in_order() -> None:
    """One batch of all of the above: the rows that land keep their batch order, the routes
    stay beside their rows, and every event is counted once."""
    history = [grant("recording"), grant("transcription")]
    known = states(both=history, objector=[req("object"), *history], gone=[req("erase"), *history])
    batch = [
        call(n, account, started_at=NOW - age)
        for n, (account, age) in enumerate((a, age) for age in AGES for a in sorted(KEPT_BY))
    ]
    result = run(batch, known)
    want_vault, want_analytics, want_drops = [], [], Counter[Drop]()
    for record in batch:
        vault, analytics, _kept, drops = expected_landing(record["account_id"], NOW - record["started_at"])
        want_vault += [record["event_id"]] if vault else []
        want_analytics += [record["event_id"]] if analytics else []
        want_drops.update(drops)
    assert [r["event_id"] for r in result.vault_rows] == want_vault
    assert [r["event_id"] for r in result.analytics_rows] == want_analytics
    assert [r.dt for r in result.vault_routes] == [
        clock.day_of_ms(r["started_at"]) for r in result.vault_rows
    ]
    assert [r.account_token for r in result.analytics_routes] == [
        r["account_token"] for r in result.analytics_rows
    ]
    assert +Counter({d: n for d, n in result.drops.items() if d != Drop.SECRET_ATTRIBUTE}) == +want_drops
    assert len(result.expired) == result.drops[Drop.EXPIRED] > 0
    assert len(result.vault_rows) + len(result.rejections) + len(result.erased) + len(result.expired) + (
        result.drops[Drop.VAULT_EXPIRED]
    ) == len(batch)


def test_an_analytics_limit_shorter_than_the_vaults_keeps_the_row_in_the_vault_only() -> None:
    policy = Policy(retention=Retention(vault_days=90, analytics_days=60))
    batch = [call(1, started_at=NOW - 60 * DAY), call(2, started_at=NOW - 60 * DAY - 1)]
    result = process_batch(batch, {}, policy, KEY, NOW)
    assert [r["event_id"] for r in result.vault_rows] == ["ev-1", "ev-2"]
    assert [r["event_id"] for r in result.analytics_rows] == ["ev-1"]
    assert result.drops[Drop.ANALYTICS_EXPIRED] == 1 and not result.expired


def test_a_value_consent_removed_is_not_counted_as_expired_too() -> None:
    """Consent comes first: a recording the account never allowed is `recording_no_consent`, and
    only what consent kept can expire."""
    result = run([call(1, "none", started_at=NOW - 60 * DAY)])
    assert result.drops[Drop.RECORDING_NO_CONSENT] == result.drops[Drop.TRANSCRIPTION_NO_CONSENT] == 1
    assert not result.drops[Drop.RECORDING_EXPIRED] and not result.drops[Drop.TRANSCRIPT_EXPIRED]
