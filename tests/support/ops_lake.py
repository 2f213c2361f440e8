"""Helpers of the operators' job tests: a seeded synthetic lake, its content digests, and the
`callpipe` command run as a subprocess with the lake and key in its environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipeline.keys import PseudonymKey, load_key
from sinks.layout import ANALYTICS, VAULT
from sinks.read import scan

ROOT = Path(__file__).resolve().parents[2]
SUBJECT_COLUMN = {VAULT: "account_id", ANALYTICS: "account_token"}


FIXED_KEY = bytes(range(32)).hex()  # tests are deterministic: the same tokens and buckets every run


def make_key(folder: Path) -> tuple[Path, PseudonymKey]:
    path = folder / "key.hex"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(FIXED_KEY + "\n")
    return path, load_key(path, "v1")


def keep_all_policy(folder: Path) -> Path:
    """A policy file keeping rows and values for 36,500 days (the most it allows), for tests that
    `callpipe ingest` traffic of fixed past dates: ingest lands at the wall clock's now and leaves
    out what the default limits no longer allow (pipeline/expiry.py). Give it to the ingest only,
    so the jobs after it run on the default policy."""
    path = folder / "keep-all.toml"
    path.write_text(
        "".join(
            f"[retention.{name}]\ndays = 36500\n"
            for name in ("vault", "analytics", "recording", "transcript")
        )
    )
    return path


def zone_glob(lake: Path, zone: str) -> str:
    return str(lake / zone / "calls" / "dt=*" / "bucket=*" / "*.parquet")


def zone_source(con: duckdb.DuckDBPyConnection, lake: Path, zone: str, *, filename: bool = False) -> str:
    """A FROM item (no parameters) over a zone's files, registered with `con`, the vault decrypted
    with this process's keys (`sinks.read.scan`): a test's SQL reads hand-built and job-written
    lakes alike, encrypted or not."""
    files = sorted(lake.glob(f"{zone}/calls/dt=*/bucket=*/*.parquet"))
    source, _ = scan(con, files, filename=filename, decrypt=True)
    return source


def digest(lake: Path, con: duckdb.DuckDBPyConnection | None = None) -> dict[str, tuple[int, int]]:
    """Per zone: (rows, order-independent content checksum) as DuckDB reads the lake."""
    con = con or duckdb.connect()
    out = {}
    for zone in (VAULT, ANALYTICS):
        if not list(lake.glob(f"{zone}/calls/dt=*/bucket=*/*.parquet")):
            out[zone] = (0, 0)
            continue
        source = zone_source(con, lake, zone)
        [row] = con.execute(f"SELECT count(*), coalesce(sum(hash(t)), 0) FROM {source} t").fetchall()
        assert row is not None
        out[zone] = (int(row[0]), int(row[1]))
    return out


def per_subject(
    lake: Path, zone: str, con: duckdb.DuckDBPyConnection | None = None
) -> dict[str, tuple[int, int]]:
    """Per subject of a zone: (rows, content checksum)."""
    con = con or duckdb.connect()
    column = SUBJECT_COLUMN[zone]
    sql = f"SELECT {column}, count(*), sum(hash(t)) FROM {zone_source(con, lake, zone)} t GROUP BY 1"
    return {r[0]: (int(r[1]), int(r[2])) for r in con.execute(sql).fetchall()}


def stray_files(lake: Path) -> list[str]:
    """Temps and trash a finished job must not leave behind."""
    found = [p for p in lake.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".trash-")]
    return sorted(str(p.relative_to(lake)) for p in found)


def callpipe_env(lake: Path, key_file: Path, policy: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLPIPE_")}
    env.update({"CALLPIPE_LAKE": str(lake), "CALLPIPE_KEY_FILE": str(key_file), "PYTHONPATH": str(ROOT)})
    if "CALLPIPE_VAULT_KEY_FILE" in os.environ:  # the suite's vault keys (tests/conftest.py)
        env["CALLPIPE_VAULT_KEY_FILE"] = os.environ["CALLPIPE_VAULT_KEY_FILE"]
    if policy is not None:
        env["CALLPIPE_POLICY"] = str(policy)
    return env


def callpipe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def callpipe_json(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(
        callpipe_cmd(*args, "--json"), env=env, capture_output=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    return orjson.loads(done.stdout)
