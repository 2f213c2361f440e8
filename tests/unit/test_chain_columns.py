"""The column chain gives what the row chain gives: for every batch, the rows it takes on plus the
row chain's output for the rows it leaves make the row chain's tables (row for row, by lineage),
counts and rejections. Held on the bench's traffic and on batches made to hit each way out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.bench.canary import KEY, START_MS, seeded
from pipeline.chain import route_batch
from pipeline.chain_columns import route_columns
from pipeline.chain_tables import Tables, concat_tables, tables_of
from pipeline.codec import Lineage
from pipeline.consent import AccountState, record_consent, record_request
from pipeline.memo import Memo
from pipeline.policy import DEFAULT_POLICY, Policy
from pipeline.reasons import Drop, Reason, Rejection
from schemas.clock import DAY_MS
from schemas.zones import vault_schema
from sinks.arrow import to_table

CALLS = pa.schema([f for f in vault_schema() if not f.name.startswith("source_")])
PARTITION = 3


def _by_lineage(table: pa.Table) -> pa.Array:
    return pc.sort_indices(table, sort_keys=[("source_offset", "ascending"), ("source_index", "ascending")])


def _both(
    calls: Sequence[dict[str, Any]],
    states: dict[str, AccountState],
    now_ms: int,
    *,
    policy: Policy = DEFAULT_POLICY,
    row_memo: Memo | None = None,
    column_memo: Memo | None = None,
    first_offset: int = 0,
) -> tuple[Tables, Counter[Drop], list[Rejection], int]:
    """The row chain's tables, counts and rejections of `calls`, after checking the column
    chain (with the row chain for what it leaves) gives the same; and how many it left."""
    row_memo = row_memo if row_memo is not None else Memo()
    column_memo = column_memo if column_memo is not None else Memo()
    sources = [Lineage(PARTITION, first_offset + i, 0) for i in range(len(calls))]
    routed = route_batch(
        [dict(c) for c in calls],
        states,
        policy,
        KEY,
        now_ms,
        sources=sources,
        memo=row_memo,
        admitted=True,
    )
    expected = tables_of(routed, KEY, row_memo)

    offsets = np.arange(first_offset, first_offset + len(calls), dtype=np.int64)
    columns = route_columns(
        to_table(calls, CALLS),
        PARTITION,
        offsets,
        np.zeros(len(calls), np.int64),
        states,
        policy,
        KEY,
        now_ms,
        memo=column_memo,
    )
    left = columns.rows.tolist()
    rest = route_batch(
        [dict(calls[i]) for i in left],
        states,
        policy,
        KEY,
        now_ms,
        sources=[sources[i] for i in left],
        memo=column_memo,
        admitted=True,
    )
    got = concat_tables([columns.tables, tables_of(rest, KEY, column_memo)])

    mine, theirs = _by_lineage(got.vault), _by_lineage(expected.vault)
    assert got.vault.take(mine).equals(expected.vault.take(theirs))
    assert got.buckets.take(mine).equals(expected.buckets.take(theirs))
    assert got.analytics.take(_by_lineage(got.analytics)).equals(
        expected.analytics.take(_by_lineage(expected.analytics))
    )
    assert got.vault.schema == vault_schema()
    drops = Counter(columns.drops)
    drops.update(rest.drops)
    assert drops == Counter(routed.drops)
    assert rest.rejections == routed.rejections
    return expected, drops, routed.rejections, len(left)


@pytest.mark.parametrize("batch", [1, 37, 2_000])
def test_the_column_chain_gives_the_row_chains_tables_on_the_bench_traffic(batch: int) -> None:
    canary = seeded(4_000)
    calls = canary.traffic.calls
    row_memo, column_memo = Memo(), Memo()
    seen: Counter[Drop] = Counter()
    vault = left = 0
    for i in range(0, len(calls), batch):
        tables, drops, _rejections, n = _both(
            calls[i : i + batch],
            canary.states,
            canary.now_ms,
            row_memo=row_memo,
            column_memo=column_memo,
            first_offset=i,
        )
        seen.update(drops)
        vault += tables.vault.num_rows
        left += n
    # the traffic reaches every outcome the column chain decides itself
    for drop in (
        Drop.ERASED,
        Drop.ANALYTICS_OBJECTED,
        Drop.RECORDING_NO_CONSENT,
        Drop.TRANSCRIPTION_NO_CONSENT,
        Drop.SECRET_ATTRIBUTE,
    ):
        assert seen[drop] > 0, drop
    # and all of it goes the column way, secret-named attributes stripped there too
    assert left == 0
    assert vault > len(calls) * 0.9


def _planted(calls: list[dict[str, Any]], now_ms: int) -> list[dict[str, Any]]:
    """The bench's calls with one of every kind the column chain leaves to rows."""
    out = [dict(c) for c in calls]
    out[1] = {**out[1], "started_at": now_ms + 2 * DAY_MS}  # in the future: rejected
    out[2] = {**out[2], "duration_s": -1}  # rejected
    out[3] = {**out[3], "answered_at": out[3]["started_at"] - 1}  # before the start: rejected
    out[4] = {**out[4], "event_id": out[5]["event_id"]}  # the same id twice: the second rejected
    out[6] = {**out[6], "started_at": START_MS - 400 * DAY_MS, "answered_at": None, "ended_at": None}
    out[7] = {**out[7], "attributes": {"api_key": "s3cr3t", "trunk": "a"}}  # stripped
    out[8] = {**out[8], "attributes": {"never seen key": "x"}}  # kept, once judged
    out[10] = {**out[10], "attributes": {"password": "x", "Password": "y"}}  # both stripped, left {}
    out[11] = {**out[11], "started_at": now_ms + 3 * DAY_MS, "attributes": {"token": "t"}}  # the row way
    out[9] = {**out[9], "ended_at": None, "answered_at": None}
    return out


def test_rows_the_column_chain_leaves_are_judged_by_the_row_chain_alike() -> None:
    canary = seeded(300)
    calls = _planted(list(canary.traffic.calls), canary.now_ms)
    _tables, drops, rejections, left = _both(calls, canary.states, canary.now_ms)
    reasons = Counter(r.reason for r in rejections)
    assert reasons[Reason.BAD_TIME] == 3 and reasons[Reason.BAD_DURATION] == 1
    assert reasons[Reason.DUPLICATE] == 1
    assert drops[Drop.SECRET_ATTRIBUTE] >= 4  # three in the columns, one the row way
    # the bad times and duration, both of the duplicated id, the old call, the future one
    assert left == 7
    attributes = _tables.vault.column("attributes").to_pylist()
    assert [] in attributes and not any(
        k in ("password", "Password", "api_key") for m in attributes if m for k, _v in m
    )


def test_event_ids_the_row_chain_holds_send_theirs_to_it() -> None:
    """A batch's events outside the columns (another format) and in them: one id twice is
    rejected once, whichever way each came."""
    canary = seeded(50)
    calls = [dict(c) for c in canary.traffic.calls[:10]]
    columns = route_columns(
        to_table(calls, CALLS),
        PARTITION,
        np.arange(10, dtype=np.int64),
        np.zeros(10, np.int64),
        canary.states,
        DEFAULT_POLICY,
        KEY,
        canary.now_ms,
        memo=Memo(),
        seen=[calls[4]["event_id"], None, 7],
    )
    assert columns.rows.tolist() == [4]


def test_numbers_written_nationally_are_read_in_the_other_numbers_region_then_the_carriers() -> None:
    canary = seeded(200)
    calls = [dict(c) for c in canary.traffic.calls[:12]]
    national = [
        ("+442079460958", "02079460959", "uk-carrier"),  # the other's region: GB
        ("020 7946 0958", "0161 496 0000", "gb-vodafone"),  # both national: the carrier's
        ("020 7946 0958", "0161 496 0000", "acme"),  # no region anywhere: kept as written
        ("(415) 555-0123", "+14155550199", "carrier-x"),
        ("00442079460958", "+33142685300", "fr-orange"),  # "00": international
        ("not a number", "+14155550123", "us-att"),
    ]
    for i, (caller, callee, carrier) in enumerate(national):
        calls[i] = {**calls[i], "caller": caller, "callee": callee, "carrier_id": carrier}
        calls[i + 6] = {**calls[i + 6], "caller": callee, "callee": caller, "carrier_id": carrier}
    tables, _drops, _rejections, left = _both(calls, canary.states, canary.now_ms)
    assert left == 0
    assert "+442079460959" in tables.vault.column("callee").to_pylist()


def test_the_analytics_facts_of_numbers_that_do_not_read_as_valid_are_the_row_chains() -> None:
    """A number kept as written still has facts in the analytics zone: a "+" spelling its country
    code as parse reads it and type unknown, any other none and unknown; as the row chain gives."""
    canary = seeded(200)
    calls = [dict(c) for c in canary.traffic.calls[:8]]
    kept = [
        ("+44 20 1", "+1 999 555 0100"),  # "+" but not valid: country code, unknown
        ("12", "0000"),  # written nationally, valid nowhere
        ("+999 123 4567", "+44 7700 900123"),  # no such country code; a valid mobile
        ("0044 20 1", "not a number"),
    ]
    for i, (caller, callee) in enumerate(kept):
        calls[i] = {**calls[i], "caller": caller, "callee": callee, "carrier_id": "gb-vodafone"}
        calls[i + 4] = {**calls[i + 4], "caller": callee, "callee": caller, "carrier_id": "acme"}
    tables, _drops, _rejections, left = _both(calls, {}, canary.now_ms)
    assert left == 0
    countries = set(tables.analytics.column("caller_country").to_pylist())
    assert {44, 1, None} <= countries
    assert "unknown" in tables.analytics.column("callee_type").to_pylist()


def test_erasure_restriction_objection_and_consent_at_each_events_time() -> None:
    canary = seeded(100)
    calls = [dict(c) for c in canary.traffic.calls[:40]]
    t = canary.traffic.calls[0]["started_at"]
    states: dict[str, AccountState] = {}
    accounts = ["acct-erased", "acct-restricted", "acct-objected", "acct-no-recording", "acct-late-consent"]
    for i, call in enumerate(calls):
        call["account_id"] = accounts[i % len(accounts)]
        call["started_at"] = t + i * 1_000
        call["answered_at"] = call["ended_at"] = None
        call["recording_uri"] = f"s3://rec/{i}"
        call["transcript"] = "hello"
    states["acct-erased"] = record_request(None, _request("acct-erased", "erase", t + 5_000))
    states["acct-restricted"] = record_request(None, _request("acct-restricted", "restrict", t + 10_000))
    states["acct-objected"] = record_request(None, _request("acct-objected", "object", t))
    states["acct-no-recording"] = record_consent(None, _consent("acct-no-recording", "recording", False, t))
    states["acct-late-consent"] = record_consent(
        None, _consent("acct-late-consent", "transcription", False, t + 20_000)
    )
    tables, drops, _rejections, left = _both(calls, states, canary.now_ms)
    assert left == 0
    assert drops[Drop.ERASED] == 8 and drops[Drop.RESTRICTED] > 0 and drops[Drop.ANALYTICS_OBJECTED] > 0
    assert drops[Drop.RECORDING_NO_CONSENT] >= 8 and drops[Drop.TRANSCRIPTION_NO_CONSENT] > 0
    assert "acct-erased" not in tables.vault.column("account_id").to_pylist()


def test_a_batch_wholly_erased_or_left_gives_empty_tables_of_the_zones_schemas() -> None:
    canary = seeded(20)
    calls = [dict(c) for c in canary.traffic.calls[:5]]
    for call in calls:
        call["account_id"] = "acct-gone"
    states = {"acct-gone": record_request(None, _request("acct-gone", "erase", START_MS))}
    _both(calls, states, canary.now_ms)
    future = [{**c, "started_at": canary.now_ms + 9 * DAY_MS} for c in calls]
    _both(future, {}, canary.now_ms)


def _request(account: str, kind: str, at: int) -> dict[str, Any]:
    return {"request_id": f"r-{account}-{kind}", "account_id": account, "kind": kind, "at": at}


def _consent(account: str, purpose: str, granted: bool, at: int) -> dict[str, Any]:
    return {"account_id": account, "purpose": purpose, "granted": granted, "at": at}
