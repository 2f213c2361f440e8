"""Reading a zone back, for tests, jobs and `callpipe query`: pyarrow tables and DuckDB views.

Only published files are read (`*.parquet`; temp files end in `.tmp`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

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
    dataset = ds.dataset(paths, schema=schema, format="parquet")
    return dataset.to_table(columns=columns, filter=filter)


def duckdb_view(con: duckdb.DuckDBPyConnection, lake: Path, zone: str, name: str | None = None) -> str:
    """Create (or replace) a DuckDB view `name` (default: the zone) over a zone, with the hive
    partition columns dt (DATE) and bucket (INTEGER). New files show up in later queries."""
    view = name or zone
    if not view.isidentifier():
        raise ValueError("a view name is an identifier")
    if zone_files(lake, zone):
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
