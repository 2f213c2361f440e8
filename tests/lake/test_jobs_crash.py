"""Crash safety (issue 4, item 9): retention and erase killed with SIGKILL at random moments.

Every trial copies a small synthetic lake, starts the job as a `callpipe` subprocess and kills it,
in turn: at a random time over the job's whole run; at a random time after its journal appeared
(inside the writing of new files); or just after the journal turned committed (inside the renames
and deletes), so the kills cover every phase, not only interpreter start-up.
Then, every time:
- with no journal left, the lake reads (DuckDB, all files) exactly as the old or the new state;
- with a pending journal, it reads as the old state (temps are invisible), and recovery keeps it;
- with a committed journal, recovery rolls it forward to the new state;
- a re-run of the job finishes the work: the new state, no temps or trash left, no journal, and
  the request ledger's record of an erasure as an uninterrupted run writes it.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import duckdb
import orjson
import pytest

from jobs import erase_direct, ledger, retention
from jobs.replace import COMMITTED, jobs_dir, pending, recover
from jobs.synth import SynthSpec, build
from pipeline.settings import Settings
from sinks.rejects import REJECTS_DIR, write_rejects
from tests.support.ops_lake import callpipe_cmd, callpipe_env, digest, make_key, stray_files

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TRIALS = 20
AS_OF = "2026-11-29T00:00:00+00:00"
ACCOUNT = "acct-0000007"
POLICY = """\
[retention.vault]
days = 8
[retention.analytics]
days = 12
[retention.transcript]
days = 5
[retention.recording]
days = 5
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("crash")
    key_file, key = make_key(root)
    lake = root / "base"
    build(lake, key, SynthSpec(rows=20_000, days=16, buckets=2, workers=1, seed=3))
    policy = root / "policy.toml"
    policy.write_text(POLICY)
    # dead letters retention expires (events older than the 5-day limit) and keeps (newer)
    as_of = datetime.fromisoformat(AS_OF)
    for name, age in (("ingest-old-0123456789ab", 30), ("ingest-new-0123456789ab", 1)):
        at = int((as_of - timedelta(days=age)).timestamp() * 1000)
        raw = orjson.dumps({"event_id": name, "account_id": "acct-x", "started_at": at, "duration_s": -1})
        entry = {"reason": "bad_duration", "stage": "validate", "offset": 0, "index": None}
        write_rejects(lake, name, 0, 0, [SimpleNamespace(**entry, raw=raw)])  # type: ignore[list-item]
    return {"root": root, "lake": lake, "key_file": key_file, "policy": policy}


def state(lake: Path) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """The lake as DuckDB reads it, and the dead-letter files it keeps."""
    return digest(lake), sorted(str(p.relative_to(lake)) for p in (lake / REJECTS_DIR).glob("*/*.jsonl"))


def _journal_has(lake: Path, marker: bytes) -> bool:
    for path in jobs_dir(lake).glob("*.json"):
        try:
            if marker in path.read_bytes():
                return True
        except FileNotFoundError:
            continue
    return False


def _job_args(job: str) -> list[str]:
    if job == "retention":
        return ["jobs", "retention", "--as-of", AS_OF]
    return ["jobs", "erase", "--no-topic", "--account", ACCOUNT]


def _rerun(job: str, env: dict[str, str]) -> None:
    """The job run again, in this process (as `callpipe` would run it, with the same settings)."""
    settings = Settings.from_env(env)
    con = duckdb.connect()
    if job == "retention":
        retention.run(con, settings.lake, settings.policy, datetime.fromisoformat(AS_OF))
    else:
        erase_direct.run(
            con,
            settings.lake,
            settings.key(),
            ACCOUNT,
            buckets=settings.buckets,
            deadlines=settings.policy.requests,
            now=datetime.fromisoformat(AS_OF),
            by="rerun",
        )


def _ledger(lake: Path) -> dict[str, tuple[object, ...]]:
    """The request ledger without its clock and who ran the job: a direct erasure's record."""
    return {rid: (r.kind, r.source, r.status, r.touched) for rid, r in ledger.requests(lake).items()}


def _expected(base: dict[str, Path], job: str) -> tuple[dict, dict, float]:
    """Old and new state of the job, and how long an uninterrupted run takes."""
    lake = base["root"] / f"expected-{job}"
    shutil.rmtree(lake, ignore_errors=True)
    shutil.copytree(base["lake"], lake)
    env = callpipe_env(lake, base["key_file"], base["policy"])
    old = state(lake)
    started = time.monotonic()
    subprocess.run(callpipe_cmd(*_job_args(job)), env=env, check=True, capture_output=True, timeout=300)
    return old, state(lake), time.monotonic() - started


@pytest.mark.parametrize("job", ["retention", "erase"])
def test_a_killed_job_leaves_old_or_new_state_and_a_rerun_finishes(base: dict[str, Path], job: str) -> None:
    old, new, full = _expected(base, job)
    assert old != new  # the job has work to do
    records = _ledger(base["root"] / f"expected-{job}")
    assert len(records) == (1 if job == "erase" else 0)  # an erasure is recorded in the ledger
    rng = random.Random(f"crash-{job}")
    seen: Counter[str] = Counter()
    for trial in range(TRIALS):
        lake = base["root"] / f"{job}-{trial}"
        shutil.copytree(base["lake"], lake)
        env = callpipe_env(lake, base["key_file"], base["policy"])
        proc = subprocess.Popen(
            callpipe_cmd(*_job_args(job)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        mode = trial % 3
        if mode == 0:
            time.sleep(rng.uniform(0, full))
        else:
            wanted = b"pending" if mode == 1 else b'"committed"'
            deadline = time.monotonic() + full * 2
            while time.monotonic() < deadline and proc.poll() is None and not _journal_has(lake, wanted):
                time.sleep(0.001)
            time.sleep(rng.uniform(0, full / 3) if mode == 1 else rng.uniform(0, 0.02))
        proc.kill()  # SIGKILL
        proc.wait()
        journals = pending(lake)
        if not journals:
            seen["no journal"] += 1
            assert state(lake) in (old, new), f"trial {trial}: lake between states"
        elif journals[0]["state"] == COMMITTED:
            seen["committed"] += 1
            recover(lake)
            assert state(lake) == new, f"trial {trial}: roll-forward did not reach the new state"
        else:
            seen["pending"] += 1
            assert state(lake) == old, f"trial {trial}: a pending change is visible"
            recover(lake)
            assert state(lake) == old, f"trial {trial}: roll-back did not restore the old state"
        _rerun(job, env)
        assert state(lake) == new, f"trial {trial}: the re-run did not finish the work"
        assert _ledger(lake) == records, f"trial {trial}: the ledger differs"
        assert stray_files(lake) == [] and pending(lake) == []
        shutil.rmtree(lake)
    print(f"{job}: {dict(seen)} over {TRIALS} SIGKILL trials (uninterrupted run {full:.2f}s)")
