"""Retention and erase on a lake of 10 million calls over 180 days (issue 4, "What it must show"),
checked with DuckDB against a copy of the lake taken before each job. Slow: it builds the lake
(`jobs.synth`, a few minutes on 2 cores); the phases' times are printed (pytest -s)."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from jobs.bench_jobs import typical_subject
from jobs.synth import SynthSpec, build
from pipeline.keys import Domain
from tests.support.ops_lake import (
    callpipe_env,
    callpipe_json,
    make_key,
    per_subject,
    stray_files,
    zone_source,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.soak]  # the 10M-row lake: the soak suite

AS_OF = datetime(2026, 11, 29, tzinfo=UTC)  # the day after the lake's last day


def _one(con: duckdb.DuckDBPyConnection, sql: str, **params: object) -> int:
    [row] = con.execute(sql, params).fetchall()  # done with: the connection registers scans next
    return int(row[0])


def test_retention_and_erase_on_ten_million_rows(tmp_path_factory: pytest.TempPathFactory) -> None:
    times: dict[str, float] = {}
    root = tmp_path_factory.mktemp("ten_million")
    key_file, key = make_key(root)
    lake = root / "lake"
    started = time.monotonic()
    built = build(lake, key, SynthSpec(rows=10_000_000, days=180, buckets=8))
    times["build"] = time.monotonic() - started
    assert built["vault_rows"] >= 10_000_000 and built["spec"]["days"] == 180
    env = callpipe_env(lake, key_file)
    env["CALLPIPE_BUCKETS"] = "8"
    con = duckdb.connect()

    subject, subject_days, _calls = typical_subject(con, lake)  # active on ~35 of the 180 days
    before = root / "before"
    shutil.copytree(lake, before)
    started = time.monotonic()
    result = callpipe_json(env, "jobs", "retention", "--as-of", AS_OF.isoformat())
    times["retention"] = time.monotonic() - started
    vault_cut, text_cut = AS_OF - timedelta(days=90), AS_OF - timedelta(days=30)
    con = duckdb.connect()  # a fresh connection: scans are registered on it (typical_subject's stays open)
    old, new = zone_source(con, before, "vault"), zone_source(con, lake, "vault")
    # no vault row older than its limit
    assert _one(con, f"SELECT count(*) FROM {new} WHERE started_at < $c", c=vault_cut) == 0
    # no younger row gone (by event id) and none added
    young = _one(con, f"SELECT count(*) FROM {old} WHERE started_at >= $c", c=vault_cut)
    assert young > 0 and _one(con, f"SELECT count(*) FROM {new}") == young
    missing = f"SELECT count(*) FROM {old} o ANTI JOIN {new} n USING (event_id) WHERE o.started_at >= $c"
    assert _one(con, missing, c=vault_cut) == 0
    # transcripts and recordings older than 30 days are null, younger ones unchanged
    for zone, columns in (("vault", ("transcript", "recording_uri")), ("analytics", ("transcript",))):
        o, n = zone_source(con, before, zone), zone_source(con, lake, zone)
        for column in columns:
            assert _one(con, f"SELECT count({column}) FROM {n} WHERE started_at < $t", t=text_cut) == 0
            assert _one(con, f"SELECT count({column}) FROM {o} WHERE started_at < $t", t=text_cut) > 0
            changed = (
                f"SELECT count(*) FROM {o} a JOIN {n} b USING (event_id) "
                f"WHERE a.started_at >= $t AND a.{column} IS DISTINCT FROM b.{column}"
            )
            assert _one(con, changed, t=text_cut) == 0
    assert stray_files(lake) == []
    shutil.rmtree(before)

    token = key.token(Domain.ACCOUNT, subject)
    subjects = {"vault": per_subject(lake, "vault", con), "analytics": per_subject(lake, "analytics", con)}
    assert subjects["vault"][subject][0] > 0
    started = time.monotonic()
    erased = callpipe_json(env, "jobs", "erase", "--no-topic", "--account", subject)
    times["erase"] = time.monotonic() - started
    assert erased["rows_remaining"] == 0
    assert erased["rows_removed"] == {
        "vault": subjects["vault"][subject][0],
        "analytics": subjects["analytics"][token][0],
    }
    assert erased["files_touched_share"] <= 0.05
    exported = callpipe_json(env, "jobs", "export", "--account", subject, "--out", str(root / "export.json"))
    assert (exported["vault"], exported["analytics"]) == (0, 0)
    del subjects["vault"][subject], subjects["analytics"][token]
    assert {
        "vault": per_subject(lake, "vault", con),
        "analytics": per_subject(lake, "analytics", con),
    } == subjects
    print(
        f"\n10M lake: {built['vault_rows']:,} vault + {built['analytics_rows']:,} analytics rows,"
        f" {built['files']} files; retention rewrote {result['summary']['files_rewritten']} files and dropped"
        f" {result['summary']['partitions_dropped']} partitions; erase rewrote {erased['files_rewritten']}"
        f" of {erased['files_total']} files ({100 * erased['files_touched_share']:.2f}%) for a subject"
        f" on {subject_days} days;"
        f" times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items())
    )
