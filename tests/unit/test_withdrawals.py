"""Which consent withdrawals call for a purge and which calls each covers (jobs.withdrawals, pure),
and which dead letters (raw bytes in every form `_rejects/` keeps; None when it cannot be told),
and what a purge leaves of a zone's table (jobs.withdraw.purged, on Arrow tables)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from jobs.withdraw import purged
from jobs.withdrawals import (
    ROWS,
    Withdrawal,
    as_requests,
    covers_dead_letter,
    purpose_columns,
    request_id,
    withdrawals,
    withdrawals_of,
)
from pipeline import codec
from pipeline.carrier import generate
from pipeline.consent import AccountState, record_consent, record_request
from pipeline.keys import PseudonymKey
from pipeline.policy import ConsentDefaults
from pipeline.raw_records import parse_container
from schemas.zones import TS

KEY = PseudonymKey(secret=bytes(range(32)), version="v1")
DEFAULTS = ConsentDefaults()


def history(*events: tuple[int, str, bool], requests: tuple[tuple[int, str], ...] = ()) -> AccountState:
    state = None
    for at, purpose, granted in events:
        state = record_consent(state, {"at": at, "purpose": purpose, "granted": granted})
    for at, kind in requests:
        state = record_request(state, {"at": at, "kind": kind, "request_id": "r"})
    assert state is not None
    return state


CASES: list[tuple[str, AccountState, ConsentDefaults, list[tuple[str, int]]]] = [
    ("a grant then a withdrawal", history((10, "recording", True), (20, "recording", False)), DEFAULTS,
     [("recording", 20)]),
    ("a withdrawal of what was never granted (off by default)", history((20, "recording", False)), DEFAULTS,
     []),
    ("a second withdrawal covers nothing more",
     history((10, "transcription", True), (20, "transcription", False), (30, "transcription", False)),
     DEFAULTS, [("transcription", 20)]),
    ("grant, withdraw, grant again, withdraw again: two purges",
     history((10, "recording", True), (20, "recording", False), (30, "recording", True),
             (40, "recording", False)), DEFAULTS, [("recording", 20), ("recording", 40)]),
    ("withdrawn then granted again: only the first",
     history((10, "recording", True), (20, "recording", False), (30, "recording", True)), DEFAULTS,
     [("recording", 20)]),
    ("granted and withdrawn at once: the withdrawal wins, nothing was held",
     history((10, "recording", True), (10, "recording", False)), DEFAULTS, []),
    ("analytics on by default: switching it off is a withdrawal", history((20, "analytics", False)),
     DEFAULTS, [("analytics", 20)]),
    ("analytics already off by an objection", history((20, "analytics", False), requests=((10, "object"),)),
     DEFAULTS, []),
    ("a policy with recording on by default", history((20, "recording", False)),
     ConsentDefaults(recording=True), [("recording", 20)]),
    ("grants only", history((10, "recording", True), (10, "analytics", True)), DEFAULTS, []),
    ("purposes apart",
     history((10, "recording", True), (10, "transcription", True), (20, "transcription", False)),
     DEFAULTS, [("transcription", 20)]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "state", "defaults", "expected"), CASES, ids=[c[0] for c in CASES])
def test_which_withdrawals_call_for_a_purge(
    name: str, state: AccountState, defaults: ConsentDefaults, expected: list[tuple[str, int]]
) -> None:
    found = withdrawals_of("acct-1", state, defaults)
    assert [(w.purpose, w.at_ms) for w in found] == expected
    assert all(w.account_id == "acct-1" for w in found)


def test_an_account_without_history_has_none_and_all_are_sorted_by_time() -> None:
    states = {
        "b": history((10, "recording", True), (50, "recording", False)),
        "a": history((10, "recording", True), (30, "recording", False)),
        "quiet": history((10, "analytics", True)),
    }
    assert [(w.account_id, w.at_ms) for w in withdrawals(states, DEFAULTS)] == [("a", 30), ("b", 50)]
    assert withdrawals({}, DEFAULTS) == []


@pytest.mark.parametrize(("started", "covered"), [(19, True), (20, False), (21, False), (-5, True)])
def test_a_withdrawal_covers_the_calls_started_before_it(started: int, covered: bool) -> None:
    assert Withdrawal("a", "recording", 20).covers(started) is covered


def test_the_request_id_is_stable_names_no_one_and_tells_withdrawals_apart() -> None:
    w = Withdrawal("acct-secret-42", "recording", 1_700_000_000_000)
    rid = request_id(KEY, w)
    assert rid == request_id(KEY, Withdrawal("acct-secret-42", "recording", 1_700_000_000_000))
    assert rid.startswith("withdraw-") and "acct-secret-42" not in rid and "acct" not in rid
    others = {
        request_id(KEY, Withdrawal("acct-secret-42", "transcription", w.at_ms)),
        request_id(KEY, Withdrawal("acct-secret-42", "recording", w.at_ms + 1)),
        request_id(KEY, Withdrawal("acct-secret-43", "recording", w.at_ms)),
    }
    assert rid not in others and len(others) == 3
    [record] = as_requests(KEY, [w])
    assert record == {
        "request_id": rid,
        "account_id": "acct-secret-42",
        "kind": "withdraw",
        "purpose": "recording",
        "at": w.at_ms,
    }


def test_what_each_purpose_holds_follows_the_schema() -> None:
    assert purpose_columns() == {
        "recording": {"vault": ("recording_uri",), "analytics": ("has_recording",)},
        "transcription": {"vault": ("transcript",), "analytics": ("transcript",)},
        "analytics": {"analytics": (ROWS,)},
    }


def _table(rows: list[dict[str, Any]], subject: str) -> pa.Table:
    schema = pa.schema(
        [(subject, pa.string()), ("started_at", TS), ("recording_uri", pa.string()), ("n", pa.int32())]
    )
    return pa.Table.from_pylist(rows, schema=schema)


ROWS_IN = [
    {"account_id": "a", "started_at": 10, "recording_uri": "s3://r/1", "n": 1},
    {"account_id": "a", "started_at": 20, "recording_uri": "s3://r/2", "n": 2},  # at the withdrawal
    {"account_id": "b", "started_at": 10, "recording_uri": "s3://r/3", "n": 3},  # another account
    {"account_id": None, "started_at": 10, "recording_uri": "s3://r/4", "n": 4},
]


def test_a_purge_nulls_the_columns_of_the_covered_calls_only() -> None:
    out = purged(_table(ROWS_IN, "account_id"), "vault", "a", 20, ("recording_uri",)).to_pylist()
    assert [r["recording_uri"] for r in out] == [None, "s3://r/2", "s3://r/3", "s3://r/4"]
    assert [r["n"] for r in out] == [1, 2, 3, 4]


def test_a_purge_of_rows_drops_the_covered_calls_only() -> None:
    rows = [{**r, "account_token": r.pop("account_id")} for r in (dict(x) for x in ROWS_IN)]
    out = purged(_table(rows, "account_token"), "analytics", "a", 20, (ROWS,)).to_pylist()
    assert [r["n"] for r in out] == [2, 3, 4]


# ---------------------------------------------------------------- dead letters a withdrawal covers

AT = 1_767_225_600_000  # the withdrawal: 2026-01-01T00:00:00Z
HOUR = 3_600_000


def _call(account: str, started: int, **held: Any) -> dict[str, Any]:
    call = generate.generate_calls(7, 1, started, 1)[0]
    return {
        **call,
        "account_id": account,
        "started_at": started,
        "recording_uri": None,
        "transcript": None,
        **held,
    }


def _json(call: dict[str, Any]) -> bytes:
    return codec.to_json(call, "CallEvent")


def _box(*calls: dict[str, Any]) -> bytes:
    return codec.encode_container(list(calls), "CallEvent")  # deflate, as `callpipe ingest` keeps it


def _damaged(raw: bytes) -> bytes:
    block = parse_container(raw).blocks[0]  # type: ignore[union-attr]
    at = len(raw) - len(block.data) - 16  # the first compressed byte, framing intact
    return raw[:at] + b"\x07" + raw[at + 1 :]  # deflate block type 3: never decompresses


TALK = {"transcript": "hello there"}
REC = {"recording_uri": "s3://rec/1.opus"}
DEAD_LETTER_CASES: list[tuple[str, str, bytes, bool | None]] = [
    ("a JSON line of a call before, with a transcript", "transcription", _json(_call("a", AT - HOUR, **TALK)),
     True),
    ("its recording, for a recording withdrawal", "recording", _json(_call("a", AT - HOUR, **REC)), True),
    ("ISO times, as JSON input may carry them", "transcription",
     codec.to_json(_call("a", AT - HOUR, **TALK), "CallEvent", iso_times=True), True),
    ("a call at the withdrawal", "transcription", _json(_call("a", AT, **TALK)), False),
    ("a call after it", "recording", _json(_call("a", AT + HOUR, **REC)), False),
    ("another account's", "transcription", _json(_call("b", AT - HOUR, **TALK)), False),
    ("no transcript", "transcription", _json(_call("a", AT - HOUR, **REC)), False),
    ("an empty transcript", "transcription", _json(_call("a", AT - HOUR, transcript="")), False),
    ("a transcript, for a recording withdrawal", "recording", _json(_call("a", AT - HOUR, **TALK)), False),
    ("analytics: dead letters are not analytics", "analytics", _json(_call("a", AT - HOUR, **TALK)), False),
    ("a deflate container, one call of it covered", "recording",
     _box(_call("b", AT - HOUR, **REC), _call("a", AT + HOUR, **REC), _call("a", AT - HOUR, **REC)), True),
    ("a deflate container of calls after it", "recording",
     _box(_call("a", AT + HOUR, **REC), _call("a", AT + 2 * HOUR, **REC)), False),
    ("a deflate container that does not decompress: nobody can tell", "recording",
     _damaged(_box(_call("a", AT - HOUR, **REC))), None),
    ("the account's, cut short: no record to tell by", "transcription",
     _json(_call("a", AT - HOUR, **TALK))[:-30], None),
    ("the account's, with no time that reads", "transcription",
     _json({**_call("a", AT - HOUR, **TALK), "started_at": "yesterday"}), None),
    ("withheld: no bytes", "transcription", b"", False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "purpose", "raw", "expected"), DEAD_LETTER_CASES, ids=[c[0] for c in DEAD_LETTER_CASES]
)
def test_which_dead_letters_a_withdrawal_covers(
    name: str, purpose: str, raw: bytes, expected: bool | None
) -> None:
    assert covers_dead_letter(Withdrawal("a", purpose, AT), raw) is expected
