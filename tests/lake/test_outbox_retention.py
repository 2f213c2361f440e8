"""Access exports in `<lake>/_outbox/` expire (jobs/outbox.py, jobs/retention_outbox.py): `jobs
retention` removes an export with its manifest once its request was fulfilled more than
`retention.outbox.days` before `as_of`, counts it, and keeps younger exports, other subjects'
exports and breach lists. The age is the ledger's fulfilment time, not the file's mtime. Nothing
else in the outbox outlives the policy either: an export of a request never marked fulfilled
expires from when work on it began (and the next requests pass writes it again), a file no
request names by its own clock; each is counted apart, never named. Exports are made by the real
requests job over a synthetic lake, as tests/lake/test_erase_outbox.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from jobs import audit, breach, ledger, retention
from jobs.synth import SynthSpec, build
from pipeline.policy import Policy, Retention
from tests.lake.test_erase_outbox import pass_at
from tests.lake.test_requests import AT, env_of, req
from tests.support.ops_lake import callpipe_cmd, make_key

pytestmark = pytest.mark.e2e

SUBJECT, OTHER = (f"acct-{i:07d}" for i in (7, 11))
MADE = datetime(2026, 11, 29, tzinfo=UTC)  # the old export's fulfilment
YOUNG = MADE + timedelta(days=8)  # the young exports' fulfilment
AS_OF = MADE + timedelta(days=15)  # with 10 days: cutoff MADE + 5 d, between the two
POLICY = Policy(retention=Retention(outbox_days=10))
OLD_FILES = ["access-r-old.json", "access-r-old.manifest.json"]
KEPT_FILES = [
    "access-r-other.json",
    "access-r-other.manifest.json",
    "access-r-young.json",
    "access-r-young.manifest.json",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A lake whose outbox holds an old export of SUBJECT, a young one of SUBJECT and of OTHER,
    and a breach list; mtimes swapped (old export fresh, the rest ancient) so that an age read
    from the files instead of the ledger picks the wrong ones."""
    root = tmp_path_factory.mktemp("outbox-retention")
    key_file, key = make_key(root)
    lake = root / "base"
    build(lake, key, SynthSpec(rows=6_000, days=6, buckets=2, workers=1, seed=5, restricted_share=0.0))
    made = {"root": root, "lake": lake, "key_file": key_file, "key": key}
    pass_at(made, lake, MADE, req("r-old", "access", SUBJECT))
    pass_at(
        made, lake, YOUNG, req("r-young", "access", SUBJECT, AT + 1), req("r-other", "access", OTHER, AT + 2)
    )
    one = sorted((lake / "vault" / "calls").glob("dt=*/bucket=*/*.parquet"))[0]
    scoped = breach.scope(duckdb.connect(), lake, key, "vault", files=[one], now=MADE)
    outbox = lake / "_outbox"
    fresh, ancient = AS_OF.timestamp(), (MADE - timedelta(days=400)).timestamp()
    for path in outbox.iterdir():
        stamp = fresh if path.name in OLD_FILES else ancient
        os.utime(path, (stamp, stamp))
    made["breach"] = scoped["outbox"]
    assert held(lake) == sorted([*OLD_FILES, *KEPT_FILES, scoped["outbox"]])
    return made


def copy(base: dict[str, Any], tmp_path: Path, name: str) -> Path:
    lake = tmp_path / name
    shutil.copytree(base["lake"], lake)
    return lake


def held(lake: Path) -> list[str]:
    return sorted(p.name for p in (lake / "_outbox").iterdir())


def contents(lake: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (lake / "_outbox").iterdir()}


def test_an_expired_export_goes_with_its_manifest_and_the_rest_stays(
    base: dict[str, Any], tmp_path: Path
) -> None:
    lake = copy(base, tmp_path, "run")
    before = contents(lake)
    result = retention.run(duckdb.connect(), lake, POLICY, AS_OF)
    assert result.summary.access_exports_removed == 1
    assert result.cutoffs["outbox"] == {"access_exports": (MADE + timedelta(days=5)).isoformat()}
    assert held(lake) == sorted([*KEPT_FILES, base["breach"]])
    after = contents(lake)
    assert after == {name: data for name, data in before.items() if name not in OLD_FILES}  # untouched
    entry = [e for e in audit.read(lake) if e["job"] == "retention"][-1]
    assert entry["counts"]["access_exports_removed"] == 1
    raw = orjson.dumps(entry)
    assert SUBJECT.encode() not in raw and b"r-old" not in raw and b"access-" not in raw  # a count only
    assert ledger.requests(lake)["r-old"].status == "fulfilled"  # the ledger keeps the record
    again = retention.run(duckdb.connect(), lake, POLICY, AS_OF)
    assert again.summary.access_exports_removed == 0 and held(lake) == sorted([*KEPT_FILES, base["breach"]])


def test_exports_younger_than_the_policy_days_are_kept(base: dict[str, Any], tmp_path: Path) -> None:
    lake = copy(base, tmp_path, "young")
    before = contents(lake)
    result = retention.run(duckdb.connect(), lake, Policy(), AS_OF)  # the default: 30 days
    assert result.summary.access_exports_removed == 0
    assert contents(lake) == before
    late = retention.run(duckdb.connect(), lake, Policy(), MADE + timedelta(days=30, seconds=1))
    assert late.summary.access_exports_removed == 1
    assert held(lake) == sorted([*KEPT_FILES, base["breach"]])


def test_the_command_reads_the_setting_and_its_dry_run_removes_nothing(
    base: dict[str, Any], tmp_path: Path
) -> None:
    lake = copy(base, tmp_path, "cli")
    policy = tmp_path / "policy.toml"
    policy.write_text("[retention.outbox]\ndays = 10\n")
    env = {**env_of(base, lake), "CALLPIPE_POLICY": str(policy)}
    before = contents(lake)

    def retention_cmd(*args: str) -> str:
        done = subprocess.run(
            callpipe_cmd("jobs", "retention", "--as-of", AS_OF.isoformat(), *args),
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        out = done.stdout.decode()
        assert SUBJECT not in out and OTHER not in out and "r-old" not in out  # counts only
        return out

    plan = orjson.loads(retention_cmd("--dry-run", "--json"))
    assert plan["dry_run"] is True and plan["summary"]["access_exports_removed"] == 1
    assert "expired access exports removed from the outbox: 1" in retention_cmd("--dry-run")
    assert contents(lake) == before
    assert "expired access exports removed from the outbox: 1" in retention_cmd()
    assert held(lake) == sorted([*KEPT_FILES, base["breach"]])


def ledger_file(lake: Path) -> Path:
    return lake / "_requests" / "ledger.jsonl"


def killed_pass(base: dict[str, Any], lake: Path, now: datetime, *records: dict[str, Any]) -> None:
    """A requests pass killed after writing its exports, before recording them fulfilled."""
    real = ledger.append

    def append(lake: Path, entries: Any) -> None:
        entries = list(entries)
        if any(e["event"] == "fulfilled" for e in entries):
            raise SystemExit("killed")
        real(lake, entries)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ledger, "append", append)
        with pytest.raises(SystemExit):
            pass_at(base, lake, now, *records)


def test_what_no_fulfilled_request_names_expires_too_counted_apart(
    base: dict[str, Any], tmp_path: Path
) -> None:
    lake = copy(base, tmp_path, "strays")
    outbox = lake / "_outbox"
    # A ledger restored from before an access was answered: its export and manifest are unledgered.
    saved = ledger_file(lake).read_bytes()
    pass_at(base, lake, MADE, req("r-lost", "access", OTHER, AT + 3))
    ledger_file(lake).write_bytes(saved)
    # A pass killed between writing an export and marking its request fulfilled.
    killed_pass(base, lake, MADE, req("r-killed", "access", OTHER, AT + 4))
    assert ledger.requests(lake)["r-killed"].status == "in_progress"
    # Put there by hand: an old note, and a young export copy without its manifest.
    (outbox / "notes.txt").write_bytes(SUBJECT.encode())
    (outbox / "access-r-bare.json").write_bytes((outbox / "access-r-lost.json").read_bytes())
    fresh, made = AS_OF.timestamp(), MADE.timestamp()
    for name in (
        "access-r-lost.json",
        "access-r-lost.manifest.json",
        "access-r-killed.json",
        "access-r-bare.json",
    ):
        os.utime(outbox / name, (fresh, fresh))  # copied or touched: their mtime says nothing
    os.utime(outbox / "notes.txt", (made, made))
    young = sorted([*KEPT_FILES, base["breach"], "access-r-bare.json"])
    before = contents(lake)
    env = {**env_of(base, lake), "CALLPIPE_POLICY": str(tmp_path / "policy.toml")}
    (tmp_path / "policy.toml").write_text("[retention.outbox]\ndays = 10\n")

    def retention_cmd(*args: str) -> str:
        done = subprocess.run(
            callpipe_cmd("jobs", "retention", "--as-of", AS_OF.isoformat(), *args),
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        out = done.stdout.decode()
        for secret in (SUBJECT, OTHER, "r-lost", "r-killed", "r-bare", "notes"):
            assert secret not in out  # counts only
        return out

    expected = {
        "access_exports_removed": 1,  # r-old, by its fulfilment
        "unfulfilled_exports_removed": 1,  # r-killed, from when work on it began
        "unledgered_files_removed": 3,  # r-lost's export and manifest (its manifest's time), the note
        "unledgered_files_held": 1,  # the young copy
        "unattributed_files_held": 1,  # which no manifest ties to anyone
        "breach_lists_kept": 1,
    }
    plan = orjson.loads(retention_cmd("--dry-run", "--json"))
    assert {k: plan["summary"][k] for k in expected} == expected
    assert contents(lake) == before
    out = retention_cmd()
    assert "expired exports of requests never marked fulfilled: 1" in out
    assert "expired outbox files no request names: 3" in out
    assert "not yet expired: 1 (1 tied to no subject" in out
    assert held(lake) == young
    entry = [e for e in audit.read(lake) if e["job"] == "retention"][-1]
    assert {k: entry["counts"][k] for k in expected} == expected
    raw = orjson.dumps(entry)
    assert SUBJECT.encode() not in raw and b"r-lost" not in raw and b"notes" not in raw

    # The killed request is still open: the next requests pass writes its export again, fulfilled.
    pass_at(base, lake, AS_OF)
    assert ledger.requests(lake)["r-killed"].status == "fulfilled"
    assert held(lake) == sorted([*young, "access-r-killed.json", "access-r-killed.manifest.json"])
    later = retention.run(duckdb.connect(), lake, POLICY, AS_OF + timedelta(days=11))
    assert held(lake) == [base["breach"]]  # nothing but the breach list outlives the policy
    assert later.summary.unledgered_files_removed == 1 and later.summary.breach_lists_kept == 1
