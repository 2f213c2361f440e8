"""An operator's direct erasure (`callpipe jobs erase --account ID`, jobs/erase_direct.py) is an
erase request in the request ledger: who ran it, when, what it removed (counts), keyed by the
subject's token. An access request of the subject, open when it ran or arriving later, is answered
with the erasure (refused `subject_erased`, its date) instead of an export of rows that landed
since, and the requests pass erases those rows. A re-run records only what it removes; a run
killed midway is finished by a re-run or by the next requests pass with the same record. In this
process over a synthetic lake, as tests/lake/test_erase_outbox.py."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pytest

from jobs import audit, erase_direct, intake, ledger, outbox, requests
from jobs.synth import SynthSpec, build
from pipeline.keys import PseudonymKey
from pipeline.policy import RequestDeadlines
from sinks import crypt
from sinks.files import write_table
from sinks.layout import bucket_of
from tests.lake.test_requests import AT, env_of, req, rows
from tests.support.ops_lake import callpipe_cmd, callpipe_json, digest, make_key

pytestmark = pytest.mark.e2e

SUBJECT, OTHER = "acct-0000007", "acct-0000011"
ERASED_AT = datetime(2026, 11, 29, 9, tzinfo=UTC)
LATER = datetime(2026, 11, 30, tzinfo=UTC)
BY = "dpo-test"


class Crash(RuntimeError):
    """A kill between the lake's erasure and the outbox's."""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("erase-ledger")
    key_file, key = make_key(root)
    lake = root / "base"
    build(lake, key, SynthSpec(rows=6_000, days=6, buckets=2, workers=1, seed=5, restricted_share=0.0))
    return {"root": root, "lake": lake, "key_file": key_file, "key": key}


def copy(base: dict[str, Any], tmp_path: Path) -> Path:
    lake = tmp_path / "lake"
    shutil.copytree(base["lake"], lake)
    return lake


def erase_now(base: dict[str, Any], lake: Path, now: datetime = ERASED_AT) -> erase_direct.DirectErasure:
    key: PseudonymKey = base["key"]
    return erase_direct.run(
        duckdb.connect(), lake, key, SUBJECT, buckets=2, deadlines=RequestDeadlines(), now=now, by=BY
    )


def pass_at(base: dict[str, Any], lake: Path, now: datetime, *records: dict[str, Any]) -> dict[str, Any]:
    """One `jobs requests` pass in this process at `now` with `records` as its request file."""
    return requests.run(
        duckdb.connect(),
        lake,
        base["key"],
        buckets=2,
        deadlines=RequestDeadlines(),
        now=now,
        files=[requests.Batch(records=list(records), source="file")],
    )


def land_late_rows(base: dict[str, Any], lake: Path, n: int = 2) -> int:
    """Rows of the subject land after its erasure (its events were still streaming in)."""
    late = rows(base["lake"], "vault", f"account_id = '{SUBJECT}'")[:n]
    src = next(iter(sorted((base["lake"] / "vault" / "calls").glob("dt=*/bucket=*/*.parquet"))))
    bucket = bucket_of(base["key"].account_token(SUBJECT), 2)
    dst = lake / "vault" / "calls" / "dt=2026-11-28" / f"bucket={bucket:02d}" / "late.parquet"
    write_table(pa.Table.from_pylist(late, schema=crypt.read_schema(src)), dst, "vault")
    return len(late)


def held(lake: Path) -> list[str]:
    folder = lake / "_outbox"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def view(lake: Path) -> dict[str, tuple[Any, ...]]:
    """The ledger as a re-run must leave it (without who ran which step)."""
    return {
        rid: (r.kind, r.source, r.status, r.reason, r.fulfilled_at, orjson.dumps(r.touched), len(r.enforced))
        for rid, r in ledger.requests(lake).items()
    }


def test_a_direct_erasure_is_an_erase_request_in_the_ledger(base: dict[str, Any], tmp_path: Path) -> None:
    lake = copy(base, tmp_path)
    held_rows = len(rows(lake, "vault", f"account_id = '{SUBJECT}'"))
    assert held_rows > 0
    done = erase_now(base, lake)
    token = base["key"].account_token(SUBJECT)
    assert (done.recorded, done.erased_at, done.open_requests) == ("fulfilled", "2026-11-29T09:00:00.000Z", 0)
    [record] = ledger.requests(lake).values()
    assert record.request == done.request == erase_direct.request_id(token)
    assert (record.kind, record.subject, record.source, record.by) == ("erase", token, "operator", BY)
    assert record.status == "fulfilled" and record.requested_at == record.fulfilled_at == done.erased_at
    assert record.touched == {
        "rows_removed": {"vault": held_rows, "analytics": held_rows, "dead_letters": 0},
        "access_exports_removed": 0,
    }
    assert done.erasure.rows_removed == {"vault": held_rows, "analytics": held_rows}
    [entry] = [e for e in audit.read(lake) if e["job"] == "erase"]
    assert entry["params"]["request"] == record.request and entry["params"]["by"] == BY
    assert intake.read(lake, record.request) is not None  # the suppression list the requests pass enforces
    assert ledger.status(lake, LATER, 7)["totals"] == {"fulfilled": 1}
    for path in [*(lake / "_requests").iterdir(), *(lake / "_audit").iterdir()]:
        assert SUBJECT.encode() not in path.read_bytes(), path.name  # the token, never the id


def test_an_open_and_a_later_access_get_the_erasure_not_an_export_of_late_rows(
    base: dict[str, Any], tmp_path: Path
) -> None:
    lake = copy(base, tmp_path)
    pending = requests.Batch(records=[req("r-open", "access", SUBJECT)], source="file")
    requests.receive(lake, base["key"], pending, ERASED_AT, RequestDeadlines(), {})  # a pass killed
    done = erase_now(base, lake)
    assert done.open_requests == 1
    assert [r["request"] for r in ledger.status(lake, ERASED_AT, 7)["open"]] == ["r-open"]
    late = land_late_rows(base, lake)
    assert len(rows(lake, "vault", f"account_id = '{SUBJECT}'")) == late > 0

    result = pass_at(
        base, lake, LATER, req("r-later", "access", SUBJECT, AT + 10), req("r-other", "access", OTHER)
    )
    folded = ledger.requests(lake)
    for rid in ("r-open", "r-later"):
        answer = folded[rid]
        assert (answer.status, answer.reason) == ("refused", "subject_erased"), rid
        assert answer.detail == {"erased_at": done.erased_at, "erasure": done.request}, rid
    assert held(lake) == ["access-r-other.json", "access-r-other.manifest.json"]  # no export of S
    assert result["enforced"] == 1  # the late rows are erased in the same pass
    assert rows(lake, "vault", f"account_id = '{SUBJECT}'") == []
    [again] = folded[done.request].enforced
    assert again["touched"]["rows_removed"]["vault"] == late

    pass_at(base, lake, LATER, req("r-erase", "erase", SUBJECT, AT + 20))  # an erase request after it
    erased_again = ledger.requests(lake)["r-erase"]
    assert erased_again.touched is not None and erased_again.touched["note"] == "already erased"


def test_a_rerun_records_only_what_it_removes(base: dict[str, Any], tmp_path: Path) -> None:
    lake = copy(base, tmp_path)
    first = erase_now(base, lake)
    lake_after, ledger_after = digest(lake), ledger.read(lake)
    again = erase_now(base, lake, LATER)
    assert again.recorded == "none" and again.request == first.request
    assert again.erased_at == first.erased_at  # the first erasure's date stays the answer
    assert digest(lake) == lake_after and ledger.read(lake) == ledger_after

    late = land_late_rows(base, lake)
    third = erase_now(base, lake, LATER)
    assert third.recorded == "enforced" and third.erased_at == first.erased_at
    [record] = ledger.requests(lake).values()
    assert record.status == "fulfilled" and record.fulfilled_at == first.erased_at
    [enforced] = record.enforced
    assert enforced == {
        "at": "2026-11-30T00:00:00.000Z",
        "touched": {
            "rows_removed": {"vault": late, "analytics": 0, "dead_letters": 0},
            "access_exports_removed": 0,
        },
        "by": BY,
    }
    assert rows(lake, "vault", f"account_id = '{SUBJECT}'") == []


@pytest.mark.parametrize("finish", ["rerun", "requests pass"])
def test_a_run_killed_midway_is_finished_with_the_same_record(
    base: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finish: str
) -> None:
    lake = copy(base, tmp_path)
    pass_at(base, lake, ERASED_AT, req("r-access", "access", SUBJECT))  # an export to remove too
    held_rows = len(rows(lake, "vault", f"account_id = '{SUBJECT}'"))

    def crash(*_args: Any, **_kwargs: Any) -> int:
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(outbox, "remove_access_exports", crash)
        with pytest.raises(Crash):
            erase_now(base, lake)
    rid = erase_direct.request_id(base["key"].account_token(SUBJECT))
    assert rows(lake, "vault", f"account_id = '{SUBJECT}'") == []  # the lake part was done
    assert "access-r-access.json" in held(lake)
    assert ledger.requests(lake)[rid].status == "in_progress"  # open: --status shows it
    assert [r["request"] for r in ledger.status(lake, LATER, 7)["open"]] == [rid]

    if finish == "rerun":
        assert erase_now(base, lake, LATER).recorded == "fulfilled"
    else:
        assert pass_at(base, lake, LATER)["handled"] == {"erase fulfilled": 1}
    record = ledger.requests(lake)[rid]
    assert record.touched == {
        "rows_removed": {"vault": held_rows, "analytics": held_rows, "dead_letters": 0},
        "access_exports_removed": 1,
    }
    assert held(lake) == []
    assert ledger.status(lake, LATER, 7)["open"] == []


def test_the_command_prints_the_ledger_record_and_status_and_report_show_it(
    base: dict[str, Any], tmp_path: Path
) -> None:
    lake = copy(base, tmp_path)
    env = env_of(base, lake)
    result = callpipe_json(env, "jobs", "erase", "--no-topic", "--account", SUBJECT)
    rid = erase_direct.request_id(base["key"].account_token(SUBJECT))
    assert (result["request"], result["recorded"], result["rows_remaining"]) == (rid, "fulfilled", 0)
    assert ledger.requests(lake)[rid].by  # who ran it: the login of the process
    human = subprocess.run(
        callpipe_cmd("jobs", "erase", "--no-topic", "--account", SUBJECT),
        env=env,
        capture_output=True,
        timeout=300,
        check=True,
    )
    assert f"request ledger: {rid} (source operator): already recorded".encode() in human.stdout
    assert b"privacy.requests: not told (--no-topic)" in human.stdout
    assert result["published"] is False
    assert SUBJECT.encode() not in human.stdout + human.stderr
    status = callpipe_json(env, "jobs", "requests", "--status")
    assert status["totals"] == {"fulfilled": 1} and status["open"] == []
    report = subprocess.run(
        callpipe_cmd("jobs", "report"), env=env, capture_output=True, timeout=300, check=True
    )
    [line] = [x for x in report.stdout.decode().splitlines() if rid in x]
    assert "erase" in line and "fulfilled" in line and "(operator " in line


def test_a_broker_out_of_reach_stops_the_erasure_before_it_touches_anything(
    base: dict[str, Any], tmp_path: Path
) -> None:
    """Without --no-topic the erasure is published first: a broker that cannot be reached (here a
    closed local port) fails the run, naming --no-topic, with the lake and the ledger unchanged."""
    lake = copy(base, tmp_path)
    before = sorted((p.relative_to(lake), p.read_bytes()) for p in lake.rglob("*") if p.is_file())
    env = env_of(base, lake) | {"CALLPIPE_BOOTSTRAP": "127.0.0.1:9", "CALLPIPE_KAFKA_SECURITY": "plaintext"}
    done = subprocess.run(
        callpipe_cmd("jobs", "erase", "--account", SUBJECT), env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 2, done.stderr.decode()
    assert b"--no-topic" in done.stderr and b"nothing was erased" in done.stderr
    assert SUBJECT.encode() not in done.stdout + done.stderr
    after = sorted((p.relative_to(lake), p.read_bytes()) for p in lake.rglob("*") if p.is_file())
    assert [p for p, _ in after if not str(p).startswith("_jobs")] == [
        p for p, _ in before if not str(p).startswith("_jobs")
    ]
    assert ledger.requests(lake) == {}
