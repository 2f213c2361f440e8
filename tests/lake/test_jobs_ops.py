"""The operators' jobs end to end on a synthetic lake, through the `callpipe` command line, each
checked against DuckDB queries on a copy of the lake taken before the job ran."""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import orjson
import pyarrow.compute as pc
import pytest

from jobs import audit, compact
from jobs.synth import SynthSpec, build
from pipeline.keys import Domain, PseudonymKey
from sinks import crypt, files, lineage
from sinks.layout import VAULT
from tests.support.ops_lake import (
    callpipe_cmd,
    callpipe_env,
    callpipe_json,
    digest,
    make_key,
    per_subject,
    stray_files,
    zone_source,
)

pytestmark = pytest.mark.e2e

AS_OF = datetime(2026, 12, 20, 6, 0, tzinfo=UTC)
SUBJECT = "acct-0000042"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, PseudonymKey]:
    root = tmp_path_factory.mktemp("ops")
    key_file, key = make_key(root)
    lake = root / "base"
    build(lake, key, SynthSpec(rows=60_000, days=40, buckets=4, workers=1, seed=11))
    return lake, key_file, key


@pytest.fixture
def lake(base: tuple[Path, Path, PseudonymKey], tmp_path: Path) -> Path:
    copy = tmp_path / "lake"
    shutil.copytree(base[0], copy)
    return copy


def _tree(lake: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(lake)), p.stat().st_size, p.stat().st_mtime_ns) for p in lake.rglob("*"))


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


POLICY = "[retention.vault]\ndays = 25\n[retention.analytics]\ndays = 30\n[retention.transcript]\ndays = 12\n"


def test_retention_dry_run_prints_the_plan_and_touches_nothing(
    base: tuple[Path, Path, PseudonymKey], lake: Path, tmp_path: Path
) -> None:
    env = callpipe_env(lake, base[1], _policy(tmp_path, POLICY))
    before = _tree(lake)
    plan = callpipe_json(env, "jobs", "retention", "--as-of", AS_OF.isoformat(), "--dry-run")
    assert _tree(lake) == before
    con = duckdb.connect()
    vault = zone_source(con, lake, "vault")
    cutoff = AS_OF - timedelta(days=25)
    expired_days = con.execute(
        f"SELECT count(DISTINCT started_at::DATE) FROM {vault} WHERE started_at + INTERVAL 1 DAY <= $c",
        {"c": cutoff},
    ).fetchone()
    assert expired_days is not None
    assert [d["dt"] for d in plan["partitions"] if d["zone"] == "vault"] == sorted(
        d["dt"] for d in plan["partitions"] if d["zone"] == "vault"
    )
    assert sum(1 for d in plan["partitions"] if d["zone"] == "vault") == expired_days[0]
    expired = con.execute(f"SELECT count(*) FROM {vault} WHERE started_at < $c", {"c": cutoff}).fetchone()
    assert expired is not None and plan["summary"]["rows_removed"]["vault"] == expired[0]
    nulled = con.execute(
        f"SELECT count(transcript) FROM {vault} WHERE started_at >= $c AND started_at < $t",
        {"c": cutoff, "t": AS_OF - timedelta(days=12)},
    ).fetchone()
    assert nulled is not None and plan["summary"]["values_nulled"]["vault.transcript"] == nulled[0]


def test_retention_matches_duckdb_on_the_copy_taken_before_and_reruns_as_a_no_op(
    base: tuple[Path, Path, PseudonymKey], lake: Path, tmp_path: Path
) -> None:
    before = tmp_path / "before"
    shutil.copytree(lake, before)
    env = callpipe_env(lake, base[1], _policy(tmp_path, POLICY))
    result = callpipe_json(env, "jobs", "retention", "--as-of", AS_OF.isoformat())
    assert result["summary"]["partitions_dropped"] > 0 and result["summary"]["files_rewritten"] > 0
    con = duckdb.connect()
    category_days = {"transcript": 12, "recording_uri": 30}  # recording keeps the default
    limits = {"vault": (25, ("transcript", "recording_uri")), "analytics": (30, ("transcript",))}
    sources = {z: (zone_source(con, before, z), zone_source(con, lake, z)) for z in limits}
    for zone, (days, categories) in limits.items():
        old, new = sources[zone]
        params = {"c": AS_OF - timedelta(days=days)}
        params.update({c: AS_OF - timedelta(days=category_days[c]) for c in categories})
        nulls = ", ".join(f"CASE WHEN started_at < ${c} THEN NULL ELSE {c} END AS {c}" for c in categories)
        expected = f"SELECT * REPLACE ({nulls}) FROM {old} WHERE started_at >= $c"
        # no row older than its limit, no younger row gone, expired categories null, nothing else changed
        for a, b in ((expected, f"SELECT * FROM {new}"), (f"SELECT * FROM {new}", expected)):
            diff = con.execute(f"SELECT count(*) FROM ({a} EXCEPT ALL {b})", params).fetchone()
            assert diff == (0,), zone
        cut = {"c": params["c"]}
        young = con.execute(f"SELECT count(*) FROM {old} WHERE started_at >= $c", cut).fetchone()
        assert con.execute(f"SELECT count(*) FROM {new}").fetchone() == young
        assert con.execute(f"SELECT count(*) FROM {new} WHERE started_at < $c", cut).fetchone() == (0,)
    assert stray_files(lake) == []
    tree = _tree(lake)
    again = callpipe_json(env, "jobs", "retention", "--as-of", AS_OF.isoformat())
    assert again["summary"]["files_rewritten"] == again["summary"]["partitions_dropped"] == 0
    assert [t for t in _tree(lake) if not t[0].startswith("_")] == [
        t for t in tree if not t[0].startswith("_")
    ]
    runs = [e for e in audit.read(lake) if e["job"] == "retention"]
    assert [e["run"] for e in runs] == [result["run"], again["run"]]
    assert all(e["outcome"] == "ok" for e in runs)
    replaced = [f for f in runs[0]["files"] if f["action"] == "replaced"]
    assert replaced and all(audit.sha256_file(lake / f["path"]) == f["sha256"] for f in replaced)


def test_erase_removes_only_the_subject_touching_only_its_files(
    base: tuple[Path, Path, PseudonymKey], lake: Path, tmp_path: Path
) -> None:
    key_file, key = base[1], base[2]
    env = callpipe_env(lake, key_file)
    env["CALLPIPE_BUCKETS"] = "4"
    token = key.token(Domain.ACCOUNT, SUBJECT)
    con = duckdb.connect()
    holding = con.execute(
        f"SELECT count(DISTINCT filename) FROM {zone_source(con, lake, 'vault', filename=True)}"
        " WHERE account_id = $a",
        {"a": SUBJECT},
    ).fetchone()
    holding_a = con.execute(
        f"SELECT count(DISTINCT filename) FROM read_parquet('{lake}/analytics/calls/*/*/*.parquet',"
        " filename = true) WHERE account_token = $t",
        {"t": token},
    ).fetchone()
    assert holding is not None and holding_a is not None and holding[0] > 0
    others = {zone: per_subject(lake, zone) for zone in ("vault", "analytics")}
    exported = callpipe_json(
        env, "jobs", "export", "--account", SUBJECT, "--out", str(tmp_path / "before.json")
    )
    assert (
        exported["vault"] == others["vault"][SUBJECT][0]
        and exported["analytics"] == others["analytics"][token][0]
    )

    tree = _tree(lake)
    preview = callpipe_json(env, "jobs", "erase", "--account", SUBJECT, "--dry-run")
    assert _tree(lake) == tree  # a dry run touches nothing

    result = callpipe_json(env, "jobs", "erase", "--no-topic", "--account", SUBJECT)
    assert result["rows_remaining"] == 0
    assert result["rows_removed"] == {"vault": exported["vault"], "analytics": exported["analytics"]}
    assert (preview["rows_removed"], preview["files_rewritten"]) == (
        result["rows_removed"],
        result["files_rewritten"],
    )
    # exactly the files that held the subject were rewritten: statistics and Bloom filters kept the rest
    assert result["files_rewritten"] == holding[0] + holding_a[0]
    assert result["files_touched_share"] == round(result["files_rewritten"] / result["files_total"], 4)

    after = callpipe_json(env, "jobs", "export", "--account", SUBJECT, "--out", str(tmp_path / "after.json"))
    assert (after["vault"], after["analytics"]) == (0, 0)
    doc = orjson.loads((tmp_path / "after.json").read_bytes())
    assert doc["vault"] == doc["analytics"] == []
    assert [e["job"] for e in doc["audit"]] == ["export", "erase"]  # the access request before, the erasure
    assert stat.S_IMODE((tmp_path / "after.json").stat().st_mode) == 0o600
    del others["vault"][SUBJECT], others["analytics"][token]
    assert {zone: per_subject(lake, zone) for zone in ("vault", "analytics")} == others
    # the audit names the subject by token only
    trail = b"".join(p.read_bytes() for p in (lake / "_audit").iterdir())
    assert SUBJECT.encode() not in trail and token.encode() in trail
    # the output states the share of files touched
    human = subprocess.run(
        callpipe_cmd("jobs", "erase", "--no-topic", "--account", SUBJECT),
        env=env,
        capture_output=True,
        check=True,
    )
    assert b"% of files touched" in human.stdout and b"files rewritten 0 of" in human.stdout


def test_erase_finds_rows_written_under_another_bucket_count(
    base: tuple[Path, Path, PseudonymKey], lake: Path
) -> None:
    env = callpipe_env(lake, base[1])
    env["CALLPIPE_BUCKETS"] = "7"  # the lake was written with 4
    result = callpipe_json(env, "jobs", "erase", "--no-topic", "--account", SUBJECT)
    assert result["rows_remaining"] == 0 and result["rows_removed"]["vault"] > 0
    assert result["files_outside_bucket"] > 0
    assert per_subject(lake, "vault").get(SUBJECT) is None


def test_compact_merges_small_files_keeping_rows_and_lineage(
    base: tuple[Path, Path, PseudonymKey], tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    build(lake, base[2], SynthSpec(rows=8_000, days=3, buckets=2, files_per_partition=3, workers=1, seed=5))
    part = lake / "vault/calls/dt=2026-11-28/bucket=01"
    for i, path in enumerate(sorted(part.glob("*.parquet"))):
        table = crypt.read_table(path)
        meta = lineage.lineage_metadata({"calls.raw-p000": [(i * 100, i * 100 + 99)]})
        files.write_table(table.replace_schema_metadata(meta), path, VAULT)
    manifest = lake / "_manifest" / "calls.raw-p000" / "000000000000-000000000299.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"version": 1}')
    before = digest(lake)
    files_before = len(list(lake.rglob("*.parquet")))
    env = callpipe_env(lake, base[1])
    result = callpipe_json(env, "jobs", "compact", "--target-mb", "64")
    assert result["files_in"] == files_before and result["files_out"] == files_before // 3
    assert result["checksums_equal"] == result["files_out"]
    assert digest(lake) == before
    merged = list(part.glob("*.parquet"))
    assert len(merged) == 1
    assert lineage.read_lineage(merged[0]) == {"calls.raw-p000": [(0, 299)]}
    assert manifest.read_text() == '{"version": 1}'
    assert callpipe_json(env, "jobs", "compact", "--target-mb", "64")["files_in"] == 0


def test_policy_check_names_the_line_or_prints_the_policy(tmp_path: Path) -> None:
    bad = _policy(tmp_path, "[aggregates]\nk = 5\n[retention.vault]\ndays = -3\n")
    done = subprocess.run(callpipe_cmd("policy", "check", str(bad)), capture_output=True, check=False)
    assert done.returncode == 2
    assert f"{bad}:4: retention.vault.days: must be an integer" in done.stderr.decode()
    good = _policy(tmp_path, "[aggregates]\nk = 9\n")
    doc = orjson.loads(
        subprocess.run(
            callpipe_cmd("policy", "check", str(good), "--json"), capture_output=True, check=True
        ).stdout
    )
    assert doc["k"] == 9 and doc["retention"]["vault_days"] == 90


def test_erase_deletes_a_file_that_held_only_the_subject(
    base: tuple[Path, Path, PseudonymKey], lake: Path
) -> None:
    source = next(p for p in sorted(lake.glob("vault/calls/dt=*/bucket=00/*.parquet")))
    table = crypt.read_table(source)
    first = table["account_id"][0].as_py()
    only = source.with_name("only-one-subject.parquet")
    files.write_table(table.filter(pc.equal(table["account_id"], first)), only, VAULT)
    env = callpipe_env(lake, base[1])
    env["CALLPIPE_BUCKETS"] = "4"
    result = callpipe_json(env, "jobs", "erase", "--no-topic", "--account", first)
    assert result["rows_remaining"] == 0 and not only.exists()
    entry = [e for e in audit.read(lake) if e["job"] == "erase"][-1]
    assert {"path": str(only.relative_to(lake)), "action": "removed"}.items() <= next(
        f for f in entry["files"] if f["path"].endswith("only-one-subject.parquet")
    ).items()


def test_compact_refuses_a_merge_that_lost_a_row_and_leaves_the_lake_as_it_was(
    base: tuple[Path, Path, PseudonymKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = tmp_path / "lake"
    build(lake, base[2], SynthSpec(rows=4_000, days=2, buckets=2, files_per_partition=2, workers=1, seed=9))
    before, tree = digest(lake), _tree(lake)
    merge = compact._merge
    monkeypatch.setattr(compact, "_merge", lambda m, lk: merge(m, lk).slice(1))  # a fault: one row lost
    with pytest.raises(compact.CompactionMismatch):
        compact.run(duckdb.connect(), lake, target_bytes=64 << 20)
    assert digest(lake) == before and stray_files(lake) == []
    files = [t for t in tree if t[0].endswith(".parquet")]
    assert [t for t in _tree(lake) if t[0].endswith(".parquet")] == files


def test_export_and_erase_cover_the_subjects_dead_letters(
    base: tuple[Path, Path, PseudonymKey], lake: Path
) -> None:
    folder = lake / "_rejects" / "ingest-cdrs-0123456789ab"
    folder.mkdir(parents=True, mode=0o700)
    raws = [
        b'{"event_id": "x1", "account_id": "' + SUBJECT.encode() + b'", "started_at": "yesterday"}',
        b'{"event_id": "x2", "account_id": "acct-0000001", "started_at": "never"}',
    ]
    lines = [
        orjson.dumps(
            {
                "reason": "invalid_time",
                "stage": "validate",
                "offset": i,
                "index": None,
                "raw_b64": base64.b64encode(raw).decode(),
            }
        )
        for i, raw in enumerate(raws)
    ]
    path = folder / "000000000000-000000000001.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    path.chmod(0o600)
    env = callpipe_env(lake, base[1])
    env["CALLPIPE_BUCKETS"] = "4"
    out = lake.parent / "export.json"
    assert callpipe_json(env, "jobs", "export", "--account", SUBJECT, "--out", str(out))["dead_letters"] == 1
    assert orjson.loads(out.read_bytes())["dead_letters"][0]["raw"] == raws[0].decode()
    result = callpipe_json(env, "jobs", "erase", "--no-topic", "--account", SUBJECT)
    assert result["dead_letters_removed"] == 1 and result["rows_remaining"] == 0
    remaining = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [base64.b64decode(e["raw_b64"]) for e in remaining] == [raws[1]]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
