"""The chain's output as Arrow tables, what the lake writer lands (`LakeWriter.add_tables`): the
vault rows converted once, in the chain, and the analytics zone made of the vault table per
column (docs/ARCHITECTURE.md "The chain per column"), not a dict per event converted later.

Pure, like the chain: no Kafka, files or clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from pipeline.chain import Routed
from pipeline.keys import PseudonymKey
from pipeline.memo import Memo
from pipeline.pseudonymize_columns import analytics_columns
from sinks.arrow import vault_table


@dataclass(frozen=True)
class Tables:
    """A routed batch's rows of both zones; `buckets[i]` is the bucket of `vault`'s row i."""

    vault: pa.Table
    buckets: pa.Array
    analytics: pa.Table


def tables_of(routed: Routed, key: PseudonymKey, memo: Memo) -> Tables:
    """Both zones' tables of a routed batch (`pipeline.chain.route_batch`)."""
    vault = vault_table(routed.vault_rows)
    buckets = pa.array([route.bucket for route in routed.vault_routes], pa.int32())
    analytics = analytics_columns(
        vault.take(pa.array(routed.analytics, pa.int64())), routed.regions, key, memo
    )
    return Tables(vault, buckets, analytics)
