"""The chain's output as Arrow tables, what the lake writer lands (`LakeWriter.add_tables`): the
vault rows converted once, in the chain, and the analytics zone made of the vault table per
column (docs/ARCHITECTURE.md "The chain per column"), not a dict per event converted later.
What is past retention's limits (`Routed.vault_expired`, `recording_expired`) leaves the vault
table only after the analytics table is made of it, as `process_batch` does with rows.

Pure, like the chain: no Kafka, files or clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.chain import Routed
from pipeline.expiry import RECORDING
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
    if routed.vault_expired or routed.recording_expired:
        vault, buckets = _within_limits(vault, buckets, routed)
    return Tables(vault, buckets, analytics)


def concat_tables(parts: list[Tables]) -> Tables:
    """Tables of one batch made in parts (the column chain's rows, the row chain's), as one."""
    return Tables(
        pa.concat_tables([p.vault for p in parts]),
        pa.concat_arrays([p.buckets for p in parts]),
        pa.concat_tables([p.analytics for p in parts]),
    )


def _within_limits(vault: pa.Table, buckets: pa.Array, routed: Routed) -> tuple[pa.Table, pa.Array]:
    """The vault table without the rows past the vault's limit, recording_uri nulled where it is
    past its own."""
    rows = vault.num_rows
    if routed.recording_expired:
        old = np.zeros(rows, dtype=bool)
        old[routed.recording_expired] = True
        at = vault.schema.get_field_index(RECORDING)
        values = vault.column(at).combine_chunks()
        nulled = pc.if_else(pa.array(old), pa.nulls(rows, values.type), values)
        vault = vault.set_column(at, vault.schema.field(at), nulled)
    if routed.vault_expired:
        keep = np.ones(rows, dtype=bool)
        keep[routed.vault_expired] = False
        mask = pa.array(keep)
        vault, buckets = vault.filter(mask), buckets.filter(mask)
    return vault, buckets
