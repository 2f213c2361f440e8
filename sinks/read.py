"""Reading a zone back, for tests, jobs and `callpipe query`: pyarrow tables and DuckDB views.

Only published files are read (`*.parquet`; temp files end in `.tmp`). Encrypted vault files
(`sinks.crypt`) are decrypted by pyarrow and handed to DuckDB as Arrow datasets, which it scans
lazily (projection and filter pushdown): `duckdb_view`, `scan` and `footers` give the jobs'
SQL the same relations over encrypted and plaintext files.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from sinks import crypt
from sinks.arrow import zone_schema
from sinks.layout import glob, table_dir


def zone_files(lake: Path, zone: str) -> list[Path]:
    """Every published file of a zone, sorted by path."""
    return sorted(table_dir(lake, zone).glob("dt=*/bucket=*/*.parquet"))


def read_zone(lake: Path, zone: str, *, columns: list[str] | None = None, filter: Any = None) -> pa.Table:
    """A zone as one table of its schema (empty when the zone has no files).

    `filter` is a pyarrow.compute expression, e.g. `pc.field("account_id") == "a-1"`.
    """
    schema = zone_schema(zone)
    paths = [str(p) for p in zone_files(lake, zone)]
    if not paths:
        empty = schema.empty_table()
        return empty.select(columns) if columns is not None else empty
    dataset = ds.dataset(paths, schema=schema, format=crypt.file_format(paths))
    return dataset.to_table(columns=columns, filter=filter)


def duckdb_view(con: duckdb.DuckDBPyConnection, lake: Path, zone: str, name: str | None = None) -> str:
    """Create (or replace) a DuckDB view `name` (default: the zone) over a zone, with the hive
    partition columns dt (DATE) and bucket (INTEGER). New files show up in later queries."""
    view = name or zone
    if not view.isidentifier():
        raise ValueError("a view name is an identifier")
    found = zone_files(lake, zone)
    if found and crypt.any_encrypted(found):
        columns = pa.schema([("dt", pa.date32()), ("bucket", pa.int32())])
        dataset = ds.dataset(
            [str(p) for p in found],
            schema=pa.schema([*zone_schema(zone), *columns]),
            format=crypt.file_format(found),
            partitioning=ds.partitioning(columns, flavor="hive"),
            partition_base_dir=str(table_dir(lake, zone)),
        )
        con.register(f"__{view}_decrypted", dataset)
        con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM __{view}_decrypted")
    elif found:
        path = glob(lake, zone).replace("'", "''")
        con.execute(
            f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM read_parquet('{path}', "
            "hive_partitioning = true, hive_types = {'dt': DATE, 'bucket': INTEGER})"
        )
    else:  # read_parquet fails on a glob that matches nothing: an empty view of the same columns
        schema = zone_schema(zone)
        empty = (
            schema.append(pa.field("dt", pa.date32())).append(pa.field("bucket", pa.int32())).empty_table()
        )
        con.register(f"__{view}_empty", empty)
        con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM __{view}_empty")
    return view


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def scan(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[Path | str],
    *,
    filename: bool = True,
    union_by_name: bool = False,
    decrypt: bool | None = None,
) -> tuple[str, dict[str, Any]]:
    """(FROM item, its parameters) reading lake files in DuckDB SQL like
    `read_parquet($files, filename = ..., hive_partitioning = false, union_by_name = ...)`.

    When any of the files is encrypted, each file is a decrypting Arrow dataset registered with
    `con` and the FROM item a view over them all (`UNION ALL BY NAME`, each with its `filename`).
    `decrypt` forces one way or the other (None: decide by the files)."""
    paths = [str(f) for f in files]
    if not (crypt.any_encrypted(paths) if decrypt is None else decrypt):
        options = f", filename = {str(filename).lower()}, hive_partitioning = false"
        if union_by_name:
            options += ", union_by_name = true"
        return f"read_parquet($files{options})", {"files": paths}
    fmt = crypt.file_format(paths)
    name = f"__scan_{uuid.uuid4().hex[:12]}"
    parts = []
    for i, path in enumerate(paths):
        con.register(f"{name}_{i}", ds.dataset(path, format=fmt))
        parts.append(f"SELECT *{f', {_literal(path)} AS filename' if filename else ''} FROM {name}_{i}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS " + " UNION ALL BY NAME ".join(parts))
    return name, {}


FOOTERS_SCHEMA = pa.schema(
    [
        ("file_name", pa.string()),
        ("row_group_id", pa.int64()),
        ("row_group_num_rows", pa.int64()),
        ("path_in_schema", pa.string()),
        ("stats_min_value", pa.string()),
        ("stats_max_value", pa.string()),
        ("stats_null_count", pa.int64()),
    ]
)


def _stat(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def footers(con: duckdb.DuckDBPyConnection, files: Sequence[Path | str]) -> tuple[str, dict[str, Any]]:
    """(FROM item, its parameters) with the columns of DuckDB's `parquet_metadata($files)` that
    the jobs plan with (row groups, their row counts, min/max/null statistics per column). For
    encrypted files the footers are decrypted by pyarrow into an Arrow table."""
    paths = [str(f) for f in files]
    if not crypt.any_encrypted(paths):
        return "parquet_metadata($files)", {"files": paths}
    rows: dict[str, list[Any]] = {name: [] for name in FOOTERS_SCHEMA.names}
    for path in paths:
        meta = crypt.read_metadata(path)
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                column = group.column(c)
                stats = column.statistics
                has = stats is not None and stats.has_min_max
                rows["file_name"].append(path)
                rows["row_group_id"].append(g)
                rows["row_group_num_rows"].append(group.num_rows)
                rows["path_in_schema"].append(column.path_in_schema.replace(".", ", "))
                rows["stats_min_value"].append(_stat(stats.min) if has else None)
                rows["stats_max_value"].append(_stat(stats.max) if has else None)
                rows["stats_null_count"].append(
                    stats.null_count if stats is not None and stats.has_null_count else None
                )
    name = f"__footers_{uuid.uuid4().hex[:12]}"
    con.register(name, pa.table(rows, schema=FOOTERS_SCHEMA))
    return name, {}
