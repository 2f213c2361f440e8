"""The chain's tables (what the runner lands) are the row chain's rows as tables: the vault rows
converted, the analytics zone made per column equal to the row form's, the buckets the routes'."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.bench.canary import KEY, START_MS, seeded, states_of
from pipeline.carrier.generate import generate_traffic
from pipeline.chain import process_batch, route_batch
from pipeline.chain_tables import tables_of
from pipeline.memo import Memo
from pipeline.policy import DEFAULT_POLICY, ConsentDefaults, Policy
from pipeline.reasons import Drop
from schemas.clock import DAY_MS
from sinks.arrow import analytics_table, vault_table


@pytest.mark.parametrize("batch", [1, 37, 2_000])
def test_the_chains_tables_are_its_rows_as_tables(batch: int) -> None:
    canary = seeded(3_000)
    calls = canary.traffic.calls
    row_memo, column_memo = Memo(), Memo()
    analytics_rows = vault_rows = 0
    for i in range(0, len(calls), batch):
        chunk = calls[i : i + batch]
        rows = process_batch(
            [dict(c) for c in chunk], canary.states, DEFAULT_POLICY, KEY, canary.now_ms, memo=row_memo
        )
        routed = route_batch(
            [dict(c) for c in chunk], canary.states, DEFAULT_POLICY, KEY, canary.now_ms, memo=column_memo
        )
        tables = tables_of(routed, KEY, column_memo)
        assert tables.vault.equals(vault_table(rows.vault_rows))
        assert tables.analytics.equals(analytics_table(rows.analytics_rows))
        assert tables.buckets.equals(pa.array([r.bucket for r in rows.vault_routes], pa.int32()))
        assert routed.rejections == rows.rejections and routed.erased == rows.erased
        assert list(routed.drops.items()) == list(rows.drops.items())
        analytics_rows += tables.analytics.num_rows
        vault_rows += tables.vault.num_rows
    # the traffic reaches both zones and skips analytics for some (restricted, objected, erased)
    assert 0 < analytics_rows < vault_rows <= len(calls)


def test_attribute_keys_holding_personal_data_are_redacted_alike_in_both_forms() -> None:
    """Keys are free text too: a number, an address, two keys that redact to one text."""
    canary = seeded(600)
    calls = [dict(c) for c in canary.traffic.calls]
    planted = [
        {"callback:+14155550123": "yes", "bob@example.com": "vip", "trunk_group": "tg-1"},
        {"a@example.com": "1", "b@example.org": "2", "from 198.51.100.7": "x"},
        {"ring 020 7946 0958": "ok"},  # national: redacted in a GB call only
    ]
    for i, call in enumerate(calls):
        if i % 3 == 0:
            call["attributes"] = {**(call.get("attributes") or {}), **planted[i // 3 % len(planted)]}
    for batch in (1, 50, 600):
        row_memo, column_memo = Memo(), Memo()
        analytics = []
        for i in range(0, len(calls), batch):
            chunk = calls[i : i + batch]
            rows = process_batch(
                [dict(c) for c in chunk], canary.states, DEFAULT_POLICY, KEY, canary.now_ms, memo=row_memo
            )
            routed = route_batch(
                [dict(c) for c in chunk], canary.states, DEFAULT_POLICY, KEY, canary.now_ms, memo=column_memo
            )
            tables = tables_of(routed, KEY, column_memo)
            assert tables.analytics.equals(analytics_table(rows.analytics_rows))
            analytics += tables.analytics.column("attributes").to_pylist()
        keys = {k for m in analytics if m for k, _v in m}
        assert {"callback:[PHONE]", "[EMAIL]", "[EMAIL]#2", "from [IP]"} <= keys
        for raw in ("+14155550123", "bob@example.com", "@example", "198.51.100.7"):
            assert raw not in str(analytics), raw


def test_a_batch_wholly_rejected_or_erased_gives_empty_tables_of_the_zones_schemas() -> None:
    canary = seeded(50)
    bad = [{"event_id": "x"}, "not a record", None]
    routed = route_batch(bad, canary.states, DEFAULT_POLICY, KEY, canary.now_ms)
    tables = tables_of(routed, KEY, Memo())
    assert len(routed.rejections) == 3
    assert tables.vault.num_rows == tables.analytics.num_rows == len(tables.buckets) == 0
    assert tables.vault.schema.equals(vault_table([]).schema)
    assert tables.analytics.schema.equals(analytics_table([]).schema)


def test_rows_past_retention_leave_the_tables_as_they_leave_the_rows() -> None:
    """Traffic of 500 days: the vault table loses the rows past its limit and the recordings
    past theirs only after analytics is made of it (has_recording stays as it landed)."""
    traffic = generate_traffic(13, 2_000, START_MS - 500 * DAY_MS, 500 * DAY_MS)
    states = states_of(traffic)
    policy = Policy(consent=ConsentDefaults(recording=True, transcription=True))
    for batch in (1, 64, 2_000):
        row_memo, column_memo = Memo(), Memo()
        drops: dict[Drop, int] = {}
        for i in range(0, len(traffic.calls), batch):
            chunk = traffic.calls[i : i + batch]
            rows = process_batch([dict(c) for c in chunk], states, policy, KEY, START_MS, memo=row_memo)
            routed = route_batch([dict(c) for c in chunk], states, policy, KEY, START_MS, memo=column_memo)
            tables = tables_of(routed, KEY, column_memo)
            assert tables.vault.equals(vault_table(rows.vault_rows))
            assert tables.analytics.equals(analytics_table(rows.analytics_rows))
            assert tables.buckets.equals(pa.array([r.bucket for r in rows.vault_routes], pa.int32()))
            assert routed.expired == rows.expired and list(routed.drops.items()) == list(rows.drops.items())
            for drop, n in rows.drops.items():
                drops[drop] = drops.get(drop, 0) + n
        assert all(drops.get(d) for d in (Drop.EXPIRED, Drop.VAULT_EXPIRED, Drop.RECORDING_EXPIRED))
