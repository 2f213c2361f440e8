"""process_batch gives, byte for byte, what the chain's definitions give step by step: the rules
checked field by field (`check_fields`, `project`), `decide` per event, the plan walked by
`interpret`, tokens from the key itself, retention's limits as `jobs.retention.apply_limits` says
them. The hot path remembers, fuses and inlines; this holds it to the same vault rows, analytics
rows, routes, rejections and drops (values, their types and their keys' order) over seeded
traffic, damaged records, every batch size and every kind of memo, and traffic of 500 days."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.bench.canary import KEY, START_MS, seeded, states_of
from pipeline.carrier.generate import generate_traffic
from pipeline.chain import ChainResult, Route, process_batch
from pipeline.codec import Lineage
from pipeline.consent import AccountState, account_state, apply_consent, decide
from pipeline.field_rules import check_fields, project, schema_rules
from pipeline.keys import Domain, PseudonymKey
from pipeline.memo import Memo
from pipeline.phones import normalize_numbers
from pipeline.policy import DEFAULT_POLICY, ConsentDefaults, Policy, Retention
from pipeline.pseudonymize import interpret
from pipeline.reasons import PAST_RETENTION, Drop, Reason, Rejection, Stage
from pipeline.rejected_field import field_of
from pipeline.secret_names import _is_secret, _map_fields
from pipeline.validate import MAX_FUTURE_MS, _check_times, rejected_bytes
from schemas.clock import DAY_MS, EPOCH_OF_SERVICE_MS
from sinks.layout import bucket_of


def _strip(record: Mapping[str, Any], names: frozenset[str]) -> tuple[Mapping[str, Any], int]:
    out: dict[str, Any] | None = None
    stripped = 0
    for name in _map_fields():
        value = record.get(name)
        if isinstance(value, Mapping):
            kept = {k: v for k, v in value.items() if not (isinstance(k, str) and _is_secret(k, names))}
            if len(kept) != len(value):
                if out is None:
                    out = dict(record)
                out[name] = kept
                stripped += len(value) - len(kept)
    return (record if out is None else out), stripped


def reference(
    records: Sequence[Any],
    states: Mapping[str, AccountState],
    policy: Policy,
    key: PseudonymKey,
    now_ms: int,
    sources: Sequence[Lineage] | None = None,
    buckets: int = 8,
) -> ChainResult:
    """The chain as its definitions say it, one step after another, nothing remembered."""
    names = frozenset(n.lower() for n in policy.secret_names)
    rules = schema_rules()
    result = ChainResult()
    drops = result.drops
    accepted: list[tuple[dict[str, Any], int, tuple[str, ...]]] = []
    seen: set[str] = set()
    for index, raw in enumerate(records):
        reason: Reason | None
        if not isinstance(raw, Mapping):
            reason, record = Reason.MALFORMED, raw
        else:
            record, stripped = _strip(raw, names)
            if stripped:
                drops[Drop.SECRET_ATTRIBUTE] += stripped
            reason = check_fields(record, rules)
            if reason is None:
                reason = _check_times(record, now_ms)
            if reason is None and record["event_id"] in seen:
                reason = Reason.DUPLICATE
        if reason is not None:
            partition, offset, place = sources[index] if sources is not None else (-1, index, 0)
            blamed = field_of(raw, reason, EPOCH_OF_SERVICE_MS, now_ms + MAX_FUTURE_MS)
            result.rejections.append(
                Rejection(
                    reason, Stage.VALIDATE, partition, offset, place, rejected_bytes(raw, names), blamed
                )
            )
            continue
        seen.add(record["event_id"])
        clean = project(record, rules)
        accepted.append((clean, index, normalize_numbers(clean, Memo())))
    # retention's limits at now_ms: a row or value started before its cutoff does not land
    limits = policy.retention
    vault_cut, analytics_cut = now_ms - limits.vault_days * DAY_MS, now_ms - limits.analytics_days * DAY_MS
    recording_cut = now_ms - limits.recording_days * DAY_MS
    transcript_cut = now_ms - limits.transcript_days * DAY_MS
    landing = []
    for record, index, regions in accepted:
        decision = decide(states.get(record["account_id"]), record["started_at"], policy.consent)
        if decision.erased:
            drops[Drop.ERASED] += 1
            result.erased.append(index)
            continue
        to_analytics = decision.analytics and not decision.restricted
        in_vault = record["started_at"] >= vault_cut
        in_analytics = to_analytics and record["started_at"] >= analytics_cut
        if not (in_vault or in_analytics):
            drops[Drop.EXPIRED] += 1
            result.expired.append(index)
            continue
        apply_consent(record, decision, drops)
        partition, offset, place = sources[index] if sources is not None else (-1, index, 0)
        record["source_partition"], record["source_offset"], record["source_index"] = partition, offset, place
        token = key.token(Domain.ACCOUNT, record["account_id"])
        day = datetime.fromtimestamp(record["started_at"] / 1000, UTC).strftime("%Y-%m-%d")
        route = Route(day, bucket_of(token, buckets), token)
        if decision.restricted:
            drops[Drop.RESTRICTED] += 1
        elif not decision.analytics:
            drops[Drop.ANALYTICS_OBJECTED] += 1
        landing.append((record, route, regions, in_vault, to_analytics, in_analytics))
    for record, route, regions, in_vault, to_analytics, in_analytics in landing:
        old = record["started_at"]
        if to_analytics and not in_analytics:
            drops[Drop.ANALYTICS_EXPIRED] += 1
        if not in_vault:
            drops[Drop.VAULT_EXPIRED] += 1
        if record["transcript"] is not None and old < transcript_cut:  # both zones
            record["transcript"] = None
            drops[Drop.TRANSCRIPT_EXPIRED] += 1
        if in_analytics:  # has_recording as it landed: retention leaves it
            result.analytics_rows.append(interpret(record, key, regions, record, Memo()))
            result.analytics_routes.append(route)
        if in_vault:
            if record["recording_uri"] is not None and old < recording_cut:
                record["recording_uri"] = None
                drops[Drop.RECORDING_EXPIRED] += 1
            result.vault_rows.append(record)
            result.vault_routes.append(route)
    return result


def _exact(value: Any) -> Any:
    """A value with its type and, for maps, its keys' order made part of what compares."""
    if isinstance(value, dict):
        return ("dict", [(k, _exact(v)) for k, v in value.items()])
    if isinstance(value, tuple | list):
        return (type(value).__name__, [_exact(v) for v in value])
    return (type(value).__name__, value)


def assert_same(got: ChainResult, want: ChainResult) -> None:
    for name in (
        "vault_rows",
        "vault_routes",
        "analytics_rows",
        "analytics_routes",
        "rejections",
        "erased",
        "expired",
    ):
        assert _exact(getattr(got, name)) == _exact(getattr(want, name)), name
    assert type(got.drops) is Counter
    assert list(got.drops.items()) == list(want.drops.items())


def _damaged(calls: list[dict[str, Any]], seed: int) -> list[Any]:
    """The traffic with some records broken in every way validation knows, and some repeated."""
    rng = random.Random(seed)
    damage: list[tuple[str, Any]] = [
        ("duration_s", -1),
        ("duration_s", True),
        ("kind", "fax"),
        ("event_id", ""),
        ("account_id", "a\x00b"),
        ("caller", "x" * 80),
        ("started_at", "soon"),
        ("started_at", 5),
        ("answered_at", 1),
        ("ended_at", 10**15),
        ("attributes", {"k": 1}),
        ("attributes", {"password": "p", "apiKey": "k", "plan": "gold"}),
        ("attributes", {}),
        ("device", {"device_id": "d"}),
        ("device", {"device_id": " ", "device_type": "phone", "os": "x", "app_version": "1"}),
        ("device", {"device_id": "d-1", "device_type": "phone", "os": "x", "app_version": "1", "extra": 1}),
        ("cell_id", "not-a-cell"),
        ("cell_id", "234-15-1234-5678"),
        ("caller_ip", "2001:db8::1"),
        ("caller_ip", "::ffff:10.1.2.3"),
        ("caller_ip", "nonsense"),
        ("caller", "020 7946 0958"),
        ("callee", "+44 20 7946 0958"),
        ("callee", "0044 20 7946 0958"),
        ("recording_uri", "s3://r/x.wav"),
        ("transcript", "call me on +1 415 555 2671 or mail a@b.example"),
        ("org_id", None),
        ("status", 3),
    ]
    out: list[Any] = []
    for call in calls:
        roll = rng.random()
        if roll < 0.25:
            name, bad = rng.choice(damage)
            out.append({**call, name: bad})
        elif roll < 0.27:
            out.append({k: v for k, v in call.items() if k != rng.choice(list(call))})
        elif roll < 0.28:
            out.append(rng.choice(["garbage", None, 7, ["list"]]))
        elif roll < 0.30 and out:
            out.append(rng.choice(out))  # a duplicate, perhaps
        else:
            out.append(call)
    return out


@pytest.fixture(scope="module")
def traffic() -> tuple[list[Any], dict[str, AccountState], int]:
    canary = seeded(1200, seed=23)
    return _damaged(canary.traffic.calls, 5), canary.states, canary.now_ms


@pytest.mark.parametrize("size", [1, 7, 64, 1200])
def test_the_chain_gives_what_its_definitions_give(
    traffic: tuple[list[Any], dict[str, AccountState], int], size: int
) -> None:
    calls, states, now = traffic
    shared, tiny = Memo(), Memo(3)
    for start in range(0, len(calls), size):
        batch = calls[start : start + size]
        want = reference(batch, states, DEFAULT_POLICY, KEY, now)
        for memo in (shared, tiny, Memo(), None):
            assert_same(process_batch(batch, states, DEFAULT_POLICY, KEY, now, memo=memo), want)


def test_sources_buckets_keys_and_policies_change_what_they_should(
    traffic: tuple[list[Any], dict[str, AccountState], int],
) -> None:
    calls, states, now = traffic
    calls = calls[:300]
    policies = [
        DEFAULT_POLICY,
        Policy(consent=ConsentDefaults(recording=True, transcription=True, analytics=False)),
        Policy(secret_names=("plan", "codec")),
    ]
    keys = [KEY, PseudonymKey("v2", b"z" * 32)]
    memo = Memo()
    for size in (1, 300):
        for policy in policies:
            for key, buckets in zip(keys, (8, 16), strict=True):
                for start in range(0, len(calls), size):
                    batch = calls[start : start + size]
                    sources = [Lineage(2, 1000 + start + i, i % 3) for i in range(len(batch))]
                    want = reference(batch, states, policy, key, now, sources, buckets)
                    got = process_batch(
                        batch, states, policy, key, now, sources=sources, buckets=buckets, memo=memo
                    )
                    assert_same(got, want)


def test_replaced_states_are_judged_anew(traffic: tuple[list[Any], dict[str, AccountState], int]) -> None:
    calls, states, now = traffic
    memo = Memo()
    for round_ in range(3):
        if round_:
            states = {a: AccountState(bytes(bytearray(s))) for a, s in states.items()}  # equal, new
        if round_ == 2:
            states = {a: account_state(requests=[(0, "erase", "r")]) for a in states}
        for start in range(0, 600, 100):
            batch = calls[start : start + 100]
            got = process_batch(batch, states, DEFAULT_POLICY, KEY, now, memo=memo)
            assert_same(got, reference(batch, states, DEFAULT_POLICY, KEY, now))


@pytest.fixture(scope="module")
def aged() -> tuple[list[Any], dict[str, AccountState], int]:
    """Traffic of the 500 days before now, damaged: every retention limit falls inside it."""
    traffic = generate_traffic(31, 1500, START_MS - 500 * DAY_MS, 500 * DAY_MS)
    return _damaged(traffic.calls, 9), states_of(traffic), START_MS


EXPIRY = PAST_RETENTION


@pytest.mark.parametrize(
    ("retention", "seen"),
    [
        (Retention(), EXPIRY - {Drop.ANALYTICS_EXPIRED}),
        (
            Retention(vault_days=400, analytics_days=90, recording_days=120, transcript_days=7),
            EXPIRY - {Drop.VAULT_EXPIRED},
        ),
        (Retention(vault_days=1, analytics_days=1, recording_days=1, transcript_days=1), {Drop.EXPIRED}),
        (
            Retention(vault_days=36500, analytics_days=36500, recording_days=36500, transcript_days=36500),
            set(),
        ),
    ],
)
def test_the_chain_applies_retention_as_its_definitions_say(
    aged: tuple[list[Any], dict[str, AccountState], int], retention: Retention, seen: set[Drop]
) -> None:
    calls, states, now = aged
    policy = Policy(retention=retention, consent=ConsentDefaults(recording=True, transcription=True))
    memo = Memo()
    for size in (1, 40, 1500):
        for start in range(0, len(calls), size):
            batch = calls[start : start + size]
            want = reference(batch, states, policy, KEY, now)
            assert_same(process_batch(batch, states, policy, KEY, now, memo=memo), want)
    whole = process_batch(calls, states, policy, KEY, now)
    assert {d for d in whole.drops if d in EXPIRY} == seen
    assert len(whole.expired) == whole.drops[Drop.EXPIRED]
