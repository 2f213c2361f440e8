"""Small lakes for the analysis jobs' tests: rows in, Parquet files at the layout's paths out.

Rows are dicts with the analytics (or vault) columns; missing columns are filled with plausible
values. Files go to `<lake>/<zone>/calls/dt=YYYY-MM-DD/bucket=NN/part-0.parquet`, one per partition.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.zones import analytics_schema, vault_schema
from sinks.layout import ANALYTICS, bucket_of, partition_dir

BUCKETS = 4
T0 = datetime(2026, 6, 1, tzinfo=UTC)


def token(i: int) -> str:
    return f"{i:032x}"


def analytics_row(subject: int, at: datetime, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "event_id": f"e-{subject}-{at.timestamp():.0f}-{random.random()}",
        "account_token": token(subject),
        "org_token": token(10_000 + subject % 7),
        "carrier_id": "carrier-a",
        "kind": "voice",
        "direction": "outbound",
        "caller_token": token(20_000 + subject),
        "caller_country": 44,
        "caller_type": "mobile",
        "callee_token": token(30_000),
        "callee_country": 44,
        "callee_type": "mobile",
        "started_at": at,
        "answered_at": at,
        "ended_at": at + timedelta(seconds=120),
        "duration_s": 120,
        "status": "answered",
        "cell_area": "234-10-1",
        "has_recording": False,
        "transcript": None,
        "key_version": "v1",
        "source_partition": 0,
        "source_offset": 0,
        "source_index": 0,
    }
    row.update(extra)
    return row


def vault_row(subject: int, at: datetime, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "event_id": f"v-{subject}-{at.timestamp():.0f}-{random.random()}",
        "account_id": f"acct-{subject}",
        "org_id": "org-1",
        "carrier_id": "carrier-a",
        "kind": "voice",
        "direction": "outbound",
        "caller": "+447700900123",
        "callee": "+447700900456",
        "started_at": at,
        "duration_s": 120,
        "status": "answered",
        "recording_uri": None,
        "transcript": None,
        "source_partition": 0,
        "source_offset": 0,
        "source_index": 0,
    }
    row.update(extra)
    return row


def write_zone(lake: Path, zone: str, rows: Iterable[dict[str, Any]]) -> list[Path]:
    schema = analytics_schema() if zone == ANALYTICS else vault_schema()
    key = "account_token" if zone == ANALYTICS else "account_id"
    parts: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        ident = row[key] if zone == ANALYTICS else hashlib.sha256(row[key].encode()).hexdigest()
        bucket = bucket_of(ident, BUCKETS)
        parts[(row["started_at"].strftime("%Y-%m-%d"), bucket)].append(row)
    written = []
    for (dt, bucket), part in sorted(parts.items()):
        folder = partition_dir(lake, zone, dt, bucket)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "part-0.parquet"
        pq.write_table(pa.Table.from_pylist(part, schema=schema), path)
        written.append(path)
    return written


def crowd(subjects: int, hours: int, seed: int = 1) -> list[dict[str, Any]]:
    """A crowd where everyone calls every hour from a few shared cells: many subjects per group."""
    rng = random.Random(seed)
    rows = []
    for s in range(subjects):
        for h in range(hours):
            at = T0 + timedelta(hours=h, minutes=rng.randrange(60))
            rows.append(analytics_row(s, at, cell_area=f"234-10-{rng.randrange(3)}"))
    return rows
