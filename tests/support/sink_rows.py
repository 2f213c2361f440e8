"""Row fixtures for the sink tests, built from the zone schemas (so a new column is filled too).

A vault row is a CallEvent dict (timestamps as int epoch ms) plus lineage keys; an analytics row
is a dict keyed by analytics_schema().names. Both rows of an event share its account token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.keys import Domain, PseudonymKey
from schemas.clock import DAY_MS
from schemas.zones import analytics_schema, vault_schema

KEY = PseudonymKey("v1", b"k" * 32)
T0 = 1_764_374_400_000  # 2025-11-29T00:00:00Z


def _value(field: pa.Field, i: int) -> Any:
    kind = field.type
    if pa.types.is_timestamp(kind):
        return T0 + i * 1000
    if pa.types.is_integer(kind):
        return i % 1000
    if pa.types.is_boolean(kind):
        return i % 2 == 0
    if pa.types.is_string(kind):
        return f"{field.name}-{i % 97}"
    if pa.types.is_map(kind):
        return {"plan": f"p{i % 3}"}
    if pa.types.is_struct(kind):
        return {child.name: _value(child, i) for child in kind}
    raise AssertionError(f"no fixture value for {kind}")


def filled(schema: pa.Schema, i: int, **overrides: Any) -> dict[str, Any]:
    row = {f.name: _value(f, i) for f in schema}
    row.update(overrides)
    return row


@dataclass(frozen=True)
class Event:
    offset: int
    token: str
    vault: dict[str, Any]
    analytics: dict[str, Any]


def event(offset: int, *, account: str, started_at: int, index: int = 0, partition: int = 3) -> Event:
    token = KEY.token(Domain.ACCOUNT, account)
    lineage = {"source_partition": partition, "source_offset": offset, "source_index": index}
    event_id = f"ev-{offset}-{index}"
    vault = filled(
        vault_schema(), offset, event_id=event_id, account_id=account, started_at=started_at, **lineage
    )
    analytics = filled(
        analytics_schema(),
        offset,
        event_id=event_id,
        account_token=token,
        started_at=started_at,
        key_version=KEY.version,
        **lineage,
    )
    return Event(offset, token, vault, analytics)


def events(n: int, *, accounts: int = 20, days: int = 3, first_offset: int = 0) -> list[Event]:
    """n events at consecutive offsets, spread over `accounts` accounts and `days` UTC days."""
    out = []
    for k in range(n):
        offset = first_offset + k
        started = T0 + (offset % days) * DAY_MS + (offset * 7919) % DAY_MS
        out.append(event(offset, account=f"acct-{(offset * 31) % accounts:04d}", started_at=started))
    return out
