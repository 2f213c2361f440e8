"""The analysts' jobs on what the stream writes: seeded carrier traffic through `callpipe ingest`
into a fresh lake, then `anonymize`, `query` and `report`, checked against the lake itself."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import polars as pl
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.carrier.generate import generate_traffic
from pipeline.keys import create_key_file
from schemas.clock import DAY_MS
from sinks.stats import read_stats
from tests.support.ops_lake import keep_all_policy, zone_source

pytestmark = pytest.mark.e2e

START = datetime(2026, 6, 1, tzinfo=UTC)


def _callpipe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(
        b"".join(orjson.dumps(r) + b"\n" for r in records) + b'{"not": "a call"}\n{broken json\n'
    )
    return path


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("ingest")
    lake = root / "lake"
    key = root / "key"
    create_key_file(key)
    env = {"CALLPIPE_LAKE": str(lake), "CALLPIPE_KEY_FILE": str(key), "CALLPIPE_BUCKETS": "4"}
    traffic = generate_traffic(5, 6000, int(START.timestamp() * 1000), 3 * DAY_MS, accounts=150)
    calls = _jsonl(root / "calls.jsonl", traffic.calls)
    consent = root / "consent.jsonl"
    consent.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in traffic.consents))
    requests = root / "requests.jsonl"
    requests.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in traffic.requests))
    # START is long past: the ingest keeps what the default limits would leave out at landing
    keep = {**env, "CALLPIPE_POLICY": str(keep_all_policy(root))}
    done = _callpipe(keep, "ingest", str(calls), "--consent", str(consent), "--requests", str(requests))
    assert done.returncode == 0, done.stderr
    return lake, env


def test_anonymize_report_query_on_an_ingested_lake(ingested: tuple[Path, dict[str, str]]) -> None:
    lake, env = ingested
    done = _callpipe(env, "jobs", "anonymize", "--as-of", "2026-06-10T00:00:00Z", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)

    con = duckdb.connect()
    analytics = str(lake / "analytics/calls/dt=*/bucket=*/*.parquet")
    [(analytics_rows,)] = con.execute(f"SELECT count(*) FROM read_parquet('{analytics}')").fetchall()
    [(vault_rows, transcripts)] = con.execute(
        f"SELECT count(*), count(transcript) FROM {zone_source(con, lake, 'vault')}"
    ).fetchall()
    assert result["source_rows"] == analytics_rows > 0
    for agg in result["aggregates"]:  # noise on (the default): within the error bars of the truth
        path = lake / agg["path"]
        [(groups, calls)] = con.execute(f"SELECT count(*), sum(calls) FROM '{path}'").fetchall()
        assert agg["min_subjects"] is None or agg["min_subjects"] >= 5
        counted = analytics_rows - agg["suppressed_calls"] - agg["clamped_calls"]
        spread = agg["noise"]["values"]["calls"]["sd"] * math.sqrt(groups)
        assert abs((calls or 0) - counted) <= 8 * spread

    policy = lake.parent / "exact.toml"
    policy.write_text("[aggregates.noise]\nenabled = false\n")
    done = _callpipe(
        {**env, "CALLPIPE_POLICY": str(policy)},
        "jobs",
        "anonymize",
        "--as-of",
        "2026-06-10T00:00:00Z",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    for agg in json.loads(done.stdout)["aggregates"]:  # noise off: the exact counts
        path = lake / agg["path"]
        [(low, calls)] = con.execute(f"SELECT min(subjects), sum(calls) FROM '{path}'").fetchall()
        assert low is None or low >= 5
        assert (calls or 0) + agg["suppressed_calls"] == analytics_rows
        assert agg["noise"] is None

    shown = _callpipe(env, "jobs", "report", "--as-of", "2026-06-10T00:00:00Z", "--json", "--sample", "100")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    zones = {z["zone"]: z for z in data["zones"]}
    assert zones["analytics"]["rows"] == analytics_rows
    assert (zones["vault"]["rows"], zones["vault"]["transcripts"]) == (vault_rows, transcripts)
    stats = read_stats(lake)
    dead = stats.dead_letters
    assert data["stream"]["dlq"] == dead
    assert sum(dead.values()) >= 2  # the two bad lines
    assert data["stream"]["drop"] == stats.drops
    assert data["stream"]["written"] == stats.written
    assert stats.written["vault"] == vault_rows
    assert data["jobs"][0]["job"] == "anonymize"
    assert {u["resolution"] for u in data["risk"]["unicity"]} == {
        "fine",
        "day_cell",
        "hour_country",
        "coarse",
    }

    asked = _callpipe(env, "query", "SELECT count(*) AS n FROM analytics_calls", "--json")
    assert json.loads(asked.stdout) == [{"n": analytics_rows}]
    tokens = _callpipe(env, "query", "SELECT * FROM calls_hourly LIMIT 1", "--csv")
    assert not [c for c in tokens.stdout.splitlines()[0].split(",") if c.endswith("_token")]


def _pairs(value: object) -> list[tuple[str, str]] | None:
    """A map cell as each reader gives it (a dict, or a list of pairs or of key/value structs)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return sorted(value.items())
    assert isinstance(value, list)
    return sorted((e["key"], e["value"]) if isinstance(e, dict) else tuple(e) for e in value)


def test_analysts_read_the_analytics_zone_with_polars_pyarrow_and_duckdb_alike(
    ingested: tuple[Path, dict[str, str]],
) -> None:
    """The analytics zone and the aggregates are plain hive-partitioned Parquet: polars and
    pyarrow read the same rows and values as DuckDB (and `callpipe query`), maps and times
    included, without callpipe."""
    lake, env = ingested
    done = _callpipe(env, "jobs", "anonymize", "--as-of", "2026-06-10T00:00:00Z")
    assert done.returncode == 0, done.stderr
    columns = ["event_id", "account_token", "caller_token", "started_at", "duration_s", "transcript", "dt"]
    order = "event_id"
    glob = str(lake / "analytics/calls/dt=*/bucket=*/*.parquet")
    con = duckdb.connect()
    by_duckdb = con.execute(
        f"SELECT {', '.join(columns)}, attributes "
        f"FROM read_parquet('{glob}', hive_partitioning = true) ORDER BY {order}"
    ).fetchall()
    assert len(by_duckdb) > 1000

    frame = pl.scan_parquet(glob, hive_partitioning=True).select(*columns, "attributes").sort(order).collect()
    by_duckdb = [(*row[:-1], _pairs(row[-1])) for row in by_duckdb]
    by_polars = [(*row[:-1], _pairs(row[-1])) for row in frame.iter_rows()]
    assert any(row[-1] for row in by_duckdb) and any(row[-3] for row in by_duckdb)  # maps, transcripts
    table = pads.dataset(lake / "analytics/calls", format="parquet", partitioning="hive").to_table()
    table = table.sort_by(order)
    by_pyarrow = [
        (*(row[c] for c in columns), _pairs(row["attributes"]))
        for row in table.select([*columns, "attributes"]).to_pylist()
    ]
    # the hive column: a date to DuckDB and polars, the folder's text to pyarrow's default
    assert [r[:-2] + r[-1:] for r in by_polars] == [r[:-2] + r[-1:] for r in by_duckdb]
    assert [r[-2] for r in by_polars] == [r[-2] for r in by_duckdb]
    assert [r[:-2] + r[-1:] for r in by_pyarrow] == [r[:-2] + r[-1:] for r in by_duckdb]
    assert [r[-2] for r in by_pyarrow] == [r[-2].isoformat() for r in by_duckdb]

    for name in ("calls_hourly", "calls_daily"):
        path = lake / "aggregates" / name / f"{name}.parquet"
        rows = con.execute(f"SELECT * FROM '{path}' ORDER BY ALL").fetchall()
        assert rows
        assert pl.read_parquet(path).sort(pl.all()).rows() == rows
        assert sorted(tuple(r.values()) for r in pq.read_table(path).to_pylist()) == rows
