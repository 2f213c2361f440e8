"""Paths of the lake (docs/ARCHITECTURE.md "Lake layout"): zone / table / dt=YYYY-MM-DD / bucket=NN / file.

<lake>/vault/calls/dt=YYYY-MM-DD/bucket=NN/*.parquet        restricted (dirs 0700, files 0600)
<lake>/analytics/calls/dt=YYYY-MM-DD/bucket=NN/*.parquet    pseudonymized
<lake>/aggregates/<name>/...                               anonymous, k-checked
<lake>/_audit/                                             append-only job and request record
<lake>/_requests/                                          request ledger, topic position (0700)
<lake>/_outbox/                                            access exports, breach lists (jobs/outbox.py), 0700
<lake>/vault/requests/                                     raw subject ids of requests (0700/0600)
<lake>/_groups/                                            group flushes under way (sinks/group.py), 0700
<lake>/_stats/                                             stream counters per range (sinks/stats.py)
<lake>/_rejects/                                           dead letters kept whole (sinks/rejects.py), 0700
<lake>/_manifest/                                          committed ranges per source (sinks/lineage.py)
<lake>/_jobs/                                              journals of file-replacing jobs (jobs/replace.py)
"""

from __future__ import annotations

from pathlib import Path

from schemas.zones import ANALYTICS, VAULT

AGGREGATES = "aggregates"
AUDIT = "_audit"
REQUESTS = "_requests"
OUTBOX = "_outbox"
GROUPS_DIR = "_groups"  # group flushes under way (sinks/group.py)
STATS = "_stats"  # the stream's counters per landed range (sinks/stats.py)
REJECTS = "_rejects"  # dead letters kept whole in the lake (sinks/rejects.py)
MANIFESTS = "_manifest"  # what each source's flushes committed (sinks/lineage.py)
JOBS = "_jobs"  # journals and lock of the file-replacing jobs (jobs/replace.py)
VAULT_REQUESTS = (VAULT, "requests")  # under the vault: the only place a request's raw id is kept
ZONES = (VAULT, ANALYTICS)
TABLE = "calls"
DIR_MODE = {VAULT: 0o700, ANALYTICS: 0o755}
FILE_MODE = {VAULT: 0o600, ANALYTICS: 0o644}


def bucket_of(token: str, buckets: int) -> int:
    """The hash bucket of an account inside a day partition, from its account token."""
    return int(token[-8:], 16) % buckets


def partition_dir(lake: Path, zone: str, dt: str, bucket: int) -> Path:
    return lake / zone / TABLE / f"dt={dt}" / f"bucket={bucket:02d}"


def table_dir(lake: Path, zone: str) -> Path:
    return lake / zone / TABLE


def glob(lake: Path, zone: str) -> str:
    """A DuckDB/pyarrow glob over every file of a zone."""
    return str(table_dir(lake, zone) / "dt=*" / "bucket=*" / "*.parquet")
