"""Finding one data subject's rows without reading the lake: bucket, statistics, Bloom filters.

Each zone names the subject in one column (vault: account_id, analytics: account_token). The
files that may hold it are found in three narrowing steps, each cheaper than reading data:
1. bucket: the subject's rows are written under `bucket=NN`, NN = bucket_of(account token,
   buckets) (skipped when `bucket` is None, e.g. to verify or for an access request);
2. statistics: a row group whose min/max of the column excludes the value is skipped
   (`parquet_metadata`; with rows sorted by account inside a file this prunes row groups);
3. Bloom filters: DuckDB's `parquet_bloom_probe` reads each remaining row group's filter
   (not for encrypted vault files, which carry none: `sinks.files.write_table`).
Only the files left are read, and only their subject column, to count the rows exactly.
Encrypted vault files are read the same way through pyarrow (`sinks.read.footers` and `scan`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb

from schemas.zones import SUBJECT_COLUMN
from sinks.layout import table_dir
from sinks.read import footers, scan

CANDIDATES_SQL = """
WITH stats AS (
    SELECT file_name, row_group_id
    FROM {footers}
    WHERE path_in_schema = $column
      AND coalesce(stats_min_value <= $value, true)
      AND coalesce(stats_max_value >= $value, true)
),
blooms AS (
    SELECT file_name, row_group_id
    FROM parquet_bloom_probe($files, $column, $value)
    WHERE NOT bloom_filter_excludes
)
SELECT DISTINCT file_name FROM stats JOIN blooms USING (file_name, row_group_id)
ORDER BY file_name
"""

# Encrypted files have no Bloom filters: statistics only.
CANDIDATES_STATS_SQL = """
SELECT DISTINCT file_name
FROM {footers}
WHERE path_in_schema = $column
  AND coalesce(stats_min_value <= $value, true)
  AND coalesce(stats_max_value >= $value, true)
ORDER BY file_name
"""

COUNT_SQL = """
SELECT filename, count(*) AS rows
FROM {source}
WHERE {column} = $value
GROUP BY filename
"""


@dataclass(frozen=True)
class Located:
    zone: str
    files_total: int  # files in the zone
    files_probed: int  # after the bucket step
    files_maybe: int  # after statistics and Bloom filters
    hits: dict[str, int]  # file (absolute) -> rows of the subject


def zone_files(lake: Path, zone: str, bucket: int | None = None, until_day: str | None = None) -> list[Path]:
    """The zone's files (of one bucket; of the days up to `until_day`, YYYY-MM-DD, included)."""
    pattern = "dt=*/bucket=*/*.parquet" if bucket is None else f"dt=*/bucket={bucket:02d}/*.parquet"
    found = sorted(table_dir(lake, zone).glob(pattern))
    if until_day is None:
        return found
    return [f for f in found if f.parent.parent.name.removeprefix("dt=") <= until_day]


def locate(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    zone: str,
    value: str,
    bucket: int | None,
    until_day: str | None = None,
) -> Located:
    """The files of `zone` holding rows whose subject column equals `value`, with row counts
    (only the day partitions up to `until_day` when given: a consent withdrawal's calls)."""
    total = len(zone_files(lake, zone))
    files = [str(f) for f in zone_files(lake, zone, bucket, until_day)]
    column = SUBJECT_COLUMN[zone]
    if not files:
        return Located(zone, total, 0, 0, {})
    meta, params = footers(con, files)
    sql = (CANDIDATES_SQL if "files" in params else CANDIDATES_STATS_SQL).format(footers=meta)
    maybe = [r[0] for r in con.execute(sql, {**params, "column": column, "value": value}).fetchall()]
    hits: dict[str, int] = {}
    if maybe:
        source, params = scan(con, maybe)
        rows = con.execute(
            COUNT_SQL.format(column=column, source=source), {**params, "value": value}
        ).fetchall()
        hits = {name: int(n) for name, n in rows if n}
    return Located(zone, total, len(files), len(maybe), hits)


# Above this many values in a bucket, its files' subject column is read once for all of them
# rather than each value's Bloom filter probed in every file (a probe per value per row group
# soon costs more than the column); the hits are the same, Bloom filters only prune.
BLOOM_MAX = 16
BLOOM_SQL = """
SELECT $value{i} AS value, file_name, row_group_id
FROM parquet_bloom_probe($files, $column, $value{i})
WHERE NOT bloom_filter_excludes
"""

STATS_MANY_SQL = """
SELECT DISTINCT v.value, f.file_name, f.row_group_id
FROM {footers} AS f, (SELECT unnest($values) AS value) AS v
WHERE f.path_in_schema = $column
  AND coalesce(f.stats_min_value <= v.value, true)
  AND coalesce(f.stats_max_value >= v.value, true)
"""

COUNT_MANY_SQL = """
SELECT filename, {column} AS value, count(*) AS rows
FROM {source}
WHERE {column} IN (SELECT unnest($values))
GROUP BY ALL
"""


def locate_many(
    con: duckdb.DuckDBPyConnection, lake: Path, zone: str, buckets: Mapping[str, int]
) -> dict[str, dict[str, int]]:
    """`locate(con, lake, zone, value, bucket).hits` for each value of `buckets` (value -> its
    bucket), bucket by bucket: each bucket's files listed and footers read once, the statistics
    of all its values in one query, their Bloom filters in one more (up to BLOOM_MAX values a
    bucket), then one count over the files left. Each value's hits are limited to the files its
    own statistics (and Bloom filters) left, and neither ever drops a file holding the value, so
    each is exactly what `locate` finds for it alone."""
    by_bucket: dict[int, list[str]] = {}
    for value, bucket in buckets.items():
        by_bucket.setdefault(bucket, []).append(value)
    column = SUBJECT_COLUMN[zone]
    out: dict[str, dict[str, int]] = {value: {} for value in buckets}
    for bucket, values in sorted(by_bucket.items()):
        files = [str(f) for f in zone_files(lake, zone, bucket)]
        if not files:
            continue
        meta, params = footers(con, files)
        stats = con.execute(
            STATS_MANY_SQL.format(footers=meta), {**params, "column": column, "values": values}
        ).fetchall()
        groups = {(str(v), str(f), int(g)) for v, f, g in stats}
        if "files" in params and len(values) <= BLOOM_MAX:  # plaintext files: Bloom filters too
            sql = " UNION ALL ".join(BLOOM_SQL.format(i=i) for i in range(len(values)))
            probe = {f"value{i}": v for i, v in enumerate(values)}
            found = con.execute(sql, {"files": files, "column": column, **probe}).fetchall()
            groups &= {(str(v), str(f), int(g)) for v, f, g in found}
        maybe: dict[str, set[str]] = {}
        for value, name, _group in groups:
            maybe.setdefault(value, set()).add(name)
        if not maybe:
            continue
        source, params = scan(con, sorted(set().union(*maybe.values())))
        rows = con.execute(
            COUNT_MANY_SQL.format(column=column, source=source), {**params, "values": sorted(maybe)}
        ).fetchall()
        for name, value, n in rows:
            if n and name in maybe.get(value, ()):
                out[value][name] = int(n)
    return out
