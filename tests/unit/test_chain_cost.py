"""The chain's cheaper forms give what they replace (issue 8): each is held to the definition it
stands in for over the seeded generator's traffic, its PII corpus and hostile input."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest

from pipeline.carrier.generate import generate_traffic
from pipeline.carrier.generate_pii import generate_transcript, number_pool
from pipeline.keys import Domain, PseudonymKey
from pipeline.memo import Memo
from pipeline.policy import DEFAULT_SECRET_NAMES
from pipeline.pseudonymize import token_of
from pipeline.secret_names import _is_secret, _map_fields, _strip

START_MS = 1_767_225_600_000
HOSTILE = ["", " ", "\x00", "a\nb", "ünï☃", "\u200b", "+1 (201) 555-0100", "x" * 5000, "🙂" * 40]


def _identifiers() -> list[str]:
    calls = generate_traffic(11, 400, START_MS).calls
    values: list[str] = []
    for call in calls:
        values += [v for v in (call["account_id"], call["org_id"], call["caller"], call["callee"]) if v]
        values += [call["cell_id"]] if call["cell_id"] else []
        values += list((call["attributes"] or {}).values())
    values += [n.international for n in number_pool(3, "GB")]
    rng = random.Random(5)
    values += [generate_transcript(rng, "US").text for _ in range(20)]
    return values + HOSTILE


def test_tokens_from_the_keyed_hash_state_are_the_keys_tokens() -> None:
    """token_of copies the HMAC state after secret and domain instead of keying a new HMAC per
    value: every domain, every kind of identifier, two keys sharing one memo."""
    keys = [PseudonymKey("v1", b"k" * 32), PseudonymKey("v2", bytes(range(40)))]
    memo = Memo()
    for value in _identifiers():
        for key in keys:
            for domain in Domain:
                expected = key.token(domain, value)
                assert token_of(key, domain, value, memo) == expected
                assert token_of(key, domain, value, memo) == expected  # remembered
                assert token_of(key, domain, value, Memo(1)) == expected  # a memo forgetting at once


def test_tokens_refuse_a_loose_string_domain_with_a_memo_too() -> None:
    with pytest.raises((TypeError, AttributeError)):
        token_of(PseudonymKey("v1", b"k" * 32), "account", "acct-1", Memo())  # type: ignore[arg-type]


def test_memo_look_ups_survive_forgetting_and_stay_bounded() -> None:
    """peek is the memo's own dict look-up: it sees what put stores, nothing after forget, and
    the memo never holds more than its bound."""
    memo = Memo(3)
    assert memo.peek("a") is None and memo.peek("a", 7) == 7
    memo.put("a", 1)
    assert memo.peek("a") == 1
    memo.forget()
    assert memo.peek("a") is None and len(memo) == 0
    for i in range(10):
        memo.put(i, i)
        assert memo.peek(i) == i and len(memo) <= 3
    assert memo.get("x", lambda: 5) == 5 and memo.peek("x") == 5


def _strip_reference(record: Mapping[str, Any], names: frozenset[str]) -> tuple[Mapping[str, Any], int]:
    """_strip as it was before the per-key verdicts: every map rebuilt and compared."""
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


def test_secret_stripping_by_remembered_verdicts_strips_what_it_did() -> None:
    names = frozenset(n.lower() for n in DEFAULT_SECRET_NAMES)
    calls = generate_traffic(13, 3000, START_MS).calls
    hostile: list[dict[str, Any]] = [
        {"attributes": {1: "x", None: "z", "password": "p"}},
        {"attributes": {(1, 2): "x", 2.5: "y"}},
        {"attributes": {"userPassword": "1", "x-api-key": "2", "codec": "opus"}},
        {"attributes": {"PIN": "1"}},
        {"attributes": {}},
        {"attributes": "not a map"},
        {"attributes": None},
        {},
    ]
    with_secret = 0
    for record in [*calls, *hostile]:
        got, n = _strip(record, names)
        want, m = _strip_reference(record, names)
        assert (got, n) == (want, m)
        assert (got is record) == (want is record)
        with_secret += n > 0
    assert with_secret > 20  # the generator puts credentials in some calls' attributes


def test_an_accounts_first_event_judged_alone_and_its_later_ones_by_table_route_as_decide_says() -> None:
    """The chain judges an account's first event with `decide` and builds the table by time at
    its second; every event lands where `decide` at its own time puts it, whether the memo is
    shared across batches, fresh per batch, or replaced states make the remembered ones stale."""
    from pipeline.chain import process_batch
    from pipeline.consent import AccountState, decide, record_consent, record_request
    from pipeline.policy import DEFAULT_POLICY

    traffic = generate_traffic(17, 1500, START_MS)
    states: dict[str, AccountState] = {}
    for c in traffic.consents:
        states[c["account_id"]] = record_consent(states.get(c["account_id"]), c)
    for r in traffic.requests:
        states[r["account_id"]] = record_request(states.get(r["account_id"]), r)
    key = PseudonymKey("v1", b"k" * 32)
    now = START_MS + 3 * 86_400_000
    calls = traffic.calls

    def expected(batch: list[dict[str, Any]]) -> tuple[list[int], list[str], list[str]]:
        erased, vault, analytics = [], [], []
        for i, call in enumerate(batch):
            d = decide(states.get(call["account_id"]), call["started_at"], DEFAULT_POLICY.consent)
            if d.erased:
                erased.append(i)
                continue
            vault.append(call["event_id"])
            if not d.restricted and d.analytics:
                analytics.append(call["event_id"])
        return erased, vault, analytics

    shared = Memo()
    for round_ in range(2):
        if round_:  # new state objects: what was remembered for the old ones must not be used
            states = {a: AccountState(bytes(bytearray(s))) for a, s in states.items()}
        for start in range(0, len(calls), 250):
            batch = calls[start : start + 250]
            for memo in (shared, Memo()):
                result = process_batch(batch, states, DEFAULT_POLICY, key, now, memo=memo)
                got = (
                    result.erased,
                    [r["event_id"] for r in result.vault_rows],
                    [r["event_id"] for r in result.analytics_rows],
                )
                assert got == expected(batch)


def test_a_full_memo_forgets_the_one_off_values_first_and_everything_when_they_are_few() -> None:
    """Cell areas and attribute values (one per call, seldom seen again) go first, so numbers
    and tokens outlive them; when they are too few to make room, everything goes, and the memo
    stays within its bound either way."""
    memo = Memo(8)
    for i in range(3):
        memo.put(("num", f"+4420794609{i:02d}"), i)
    for i in range(5):
        memo.put(("cell", f"234-15-1-{i}"), i)
    assert len(memo) == 8
    memo.put(("token", "x"), "t")  # full: the cells go, the numbers stay
    assert (
        len(memo) == 4
        and memo.peek(("num", "+442079460900")) == 0
        and memo.peek(("cell", "234-15-1-0")) is None
    )
    for i in range(4):
        memo.put(("facts", i), i)
    assert len(memo) == 8
    memo.put(("attr", "v"), "v")  # full of what is read again (8 > 3/4 of 8): everything goes
    assert len(memo) == 1 and memo.peek(("num", "+442079460900")) is None
    for i in range(50):
        memo.put(("cell" if i % 2 else "route", i), i)
        assert len(memo) <= 8


def test_the_memos_tables_are_bounded_and_forgotten_with_it() -> None:
    """The column chain's tables (str keys, looked up a batch at a time) count towards the
    bound, go when what is read again fills it, and are emptied by `forget` (an erasure)."""
    memo = Memo(8)
    numbers = memo.table("columns:intl")
    assert memo.table("columns:intl") is numbers
    numbers.update({f"+4420794609{i:02d}": i for i in range(5)})
    memo.settle()
    assert len(memo) == 5
    memo.put(("cell", "234-15-1-0"), 0)
    memo.put(("route", 1), 1)
    assert len(memo) == 7
    numbers.update({f"+4420794610{i:02d}": i for i in range(3)})
    memo.settle()  # 10 > 8, and without the cell 9 > 3/4 of 8: everything goes
    assert len(memo) == 0 and numbers == {} and memo.table("columns:intl") is numbers
    numbers["+442079460900"] = 0
    memo.settle()
    memo.put(("route", 2), 2)
    memo.forget()
    assert len(memo) == 0 and numbers == {}
