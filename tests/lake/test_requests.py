"""Data-subject requests end to end over a synthetic lake (issue 11): `callpipe jobs requests`
with requests from a file, the ledger, deadlines, kill -9 at random points, breach scoping.
The real-broker path (privacy.requests read by the job, the worker landing calls) is in
tests/e2e/test_requests_stream.py."""

from __future__ import annotations

import random
import shutil
import stat
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from jobs import audit, breach, ledger
from jobs.synth import SynthSpec, build
from pipeline import codec
from pipeline.keys import Domain, PseudonymKey
from sinks import crypt
from tests.support.ops_lake import (
    callpipe_cmd,
    callpipe_env,
    digest,
    make_key,
    stray_files,
    zone_source,
)

pytestmark = pytest.mark.e2e

NOW = "2026-11-29T00:00:00Z"
AT = int(datetime(2026, 11, 28, 12, tzinfo=UTC).timestamp() * 1000)
ERASED, ACCESSED, RECTIFIED, RESTRICTED, OBJECTED = (f"acct-{i:07d}" for i in (7, 11, 12, 13, 14))
NEW_ORG, NEW_NUMBER = "org-rectified", "+442071838750"


def req(rid: str, kind: str, account: str, at: int = AT, corrections: Any = None) -> dict[str, Any]:
    return {"request_id": rid, "account_id": account, "kind": kind, "at": at, "corrections": corrections}


REQUESTS = [
    req("r-access", "access", ACCESSED),
    req("r-erase", "erase", ERASED, AT + 1),
    req("r-erase-again", "erase", ERASED, AT + 2),  # a subject erased twice
    req("r-unknown", "erase", "acct-9999999"),  # a subject the lake holds nothing on
    req("r-access-erased", "access", ERASED, AT + 3),
    req(
        "r-rectify",
        "rectify",
        RECTIFIED,
        corrections=[
            {"attribute": "org_id", "old": None, "new": NEW_ORG},
            {"attribute": "own_number", "old": None, "new": NEW_NUMBER},
        ],
    ),
    req("r-rectify-nobody", "rectify", "acct-9999998", corrections=[{"attribute": "org_id", "new": "x"}]),
    req(
        "r-rectify-bad",
        "rectify",
        RECTIFIED,
        corrections=[{"attribute": "own_number", "new": "not a number"}],
    ),
    req("r-restrict", "restrict", RESTRICTED),
    req("r-object", "object", OBJECTED),
]
EXPECTED_STATUS = {
    "r-access": "fulfilled",
    "r-erase": "fulfilled",
    "r-erase-again": "fulfilled",
    "r-unknown": "fulfilled",
    "r-access-erased": "refused",
    "r-rectify": "fulfilled",
    "r-rectify-nobody": "refused",
    "r-rectify-bad": "refused",
    "r-restrict": "fulfilled",
    "r-object": "fulfilled",
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("requests")
    key_file, key = make_key(root)
    lake = root / "base"
    build(lake, key, SynthSpec(rows=6_000, days=6, buckets=2, workers=1, seed=5, restricted_share=0.0))
    requests_file = root / "requests.jsonl"
    requests_file.write_bytes(b"\n".join(codec.to_json(r, "PrivacyRequest") for r in REQUESTS) + b"\n")
    return {"root": root, "lake": lake, "key_file": key_file, "key": key, "file": requests_file}


def env_of(base: dict[str, Any], lake: Path) -> dict[str, str]:
    env = callpipe_env(lake, base["key_file"])
    env["CALLPIPE_BUCKETS"] = "2"
    return env


def run_requests(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        callpipe_cmd("jobs", "requests", "--no-topic", "--as-of", NOW, *args),
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )


def rows(lake: Path, zone: str, where: str) -> list[dict[str, Any]]:
    con = duckdb.connect()
    table = con.sql(f"SELECT * FROM {zone_source(con, lake, zone)} WHERE {where}").to_arrow_table()
    return sorted(table.to_pylist(), key=lambda r: r["event_id"])


def ledger_view(lake: Path) -> dict[str, tuple[Any, ...]]:
    """The ledger without its clock: what a kill -9 and rerun must reproduce exactly."""
    return {
        rid: (r.kind, r.subject, r.status, r.reason, orjson.dumps(r.touched, option=orjson.OPT_SORT_KEYS))
        for rid, r in ledger.requests(lake).items()
    }


@pytest.fixture(scope="module")
def done(base: dict[str, Any]) -> dict[str, Any]:
    """One uninterrupted pass over a copy of the lake, with what the lake held before."""
    lake = base["root"] / "done"
    shutil.copytree(base["lake"], lake)
    key: PseudonymKey = base["key"]
    before = {
        "access_vault": rows(lake, "vault", f"account_id = '{ACCESSED}'"),
        "rectified_vault": rows(lake, "vault", f"account_id = '{RECTIFIED}'"),
        "rectified_analytics": rows(lake, "analytics", f"account_token = '{key.account_token(RECTIFIED)}'"),
    }
    env = env_of(base, lake)
    started = time.monotonic()
    out = run_requests(env, "--file", str(base["file"]), "--json")
    assert out.returncode == 0, out.stderr.decode()
    return {
        "lake": lake,
        "env": env,
        "result": orjson.loads(out.stdout),
        "before": before,
        "s": time.monotonic() - started,
    }


def test_every_request_gets_its_defined_answer(done: dict[str, Any]) -> None:
    folded = ledger.requests(done["lake"])
    assert {rid: r.status for rid, r in folded.items()} == EXPECTED_STATUS
    assert folded["r-access-erased"].reason == "subject_erased"
    assert folded["r-access-erased"].detail == {"erased_at": "2026-11-29T00:00:00.000Z", "erasure": "r-erase"}
    assert folded["r-rectify-nobody"].reason == "no_data"
    assert folded["r-rectify-bad"].reason == "invalid_correction"
    assert (
        folded["r-erase-again"].touched is not None
        and folded["r-erase-again"].touched["note"] == "already erased"
    )
    assert folded["r-unknown"].touched is not None and folded["r-unknown"].touched["note"] == "no data held"
    for r in folded.values():
        assert r.received_at == "2026-11-29T00:00:00.000Z"
        assert ledger.parse_time(r.deadline) - ledger.parse_time(r.requested_at) == timedelta(days=30)
        assert (r.fulfilled_at or r.refused_at) is not None


def test_the_result_counts_refusals_by_reason(done: dict[str, Any]) -> None:
    assert done["result"]["refused_reasons"] == {
        "access subject_erased": 1,
        "rectify invalid_correction": 1,
        "rectify no_data": 1,
    }


def test_a_file_with_bad_records_is_refused_whole_naming_them(base: dict[str, Any], tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(base["lake"], lake)
    bad = tmp_path / "bad.jsonl"
    good = codec.to_json(REQUESTS[0], "PrivacyRequest")
    bad.write_bytes(b"\n".join([good, b'{"request_id": "x", "kind": "fax"}', good]) + b"\n")
    out = run_requests(env_of(base, lake), "--file", str(bad))
    err = out.stderr.decode()
    assert out.returncode == 2
    assert "1 record(s) are not valid PrivacyRequests: line 2 (" in err and "nothing of the file" in err
    assert ACCESSED not in err
    assert ledger.requests(lake) == {}


def test_a_request_stamped_in_microseconds_is_refused_not_a_crash(
    base: dict[str, Any], tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(base["lake"], lake)
    odd = tmp_path / "micro.jsonl"
    lines = [codec.to_json(REQUESTS[0], "PrivacyRequest"), orjson.dumps({**REQUESTS[1], "at": AT * 1000})]
    odd.write_bytes(b"\n".join(lines) + b"\n")
    out = run_requests(env_of(base, lake), "--file", str(odd))
    err = out.stderr.decode()
    assert out.returncode == 2, err
    assert "1 record(s) are not valid PrivacyRequests: line 2 (bad_time)" in err
    assert "Traceback" not in err and ERASED not in err
    assert ledger.requests(lake) == {}
    assert not (lake / "vault" / "requests").exists()  # no intake file of a request never recorded


def test_a_request_stamped_ahead_of_its_receipt_is_due_from_its_receipt(
    base: dict[str, Any], tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(base["lake"], lake)
    ahead = tmp_path / "ahead.jsonl"
    now = datetime.fromisoformat(NOW)
    stamped = int((now + timedelta(days=20)).timestamp() * 1000)  # a carrier clock 20 days fast
    ahead.write_bytes(codec.to_json(req("r-ahead", "access", ACCESSED, stamped), "PrivacyRequest") + b"\n")
    run = run_requests(env_of(base, lake), "--file", str(ahead))
    assert run.returncode == 0, run.stderr.decode()
    got = ledger.requests(lake)["r-ahead"]
    assert got.deadline == ledger.iso(now + timedelta(days=30))  # not 30 days after its stamp


def test_a_request_under_an_id_another_holds_is_recorded_and_answered_not_skipped(
    base: dict[str, Any], tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(base["lake"], lake)
    env = env_of(base, lake)
    first, clash = tmp_path / "first.jsonl", tmp_path / "clash.jsonl"
    first.write_bytes(codec.to_json(req("r-1", "access", ACCESSED), "PrivacyRequest") + b"\n")
    # another carrier numbers its requests too: its r-1 is an erasure of someone else; sent twice
    clash_line = codec.to_json(req("r-1", "erase", ERASED), "PrivacyRequest")
    clash.write_bytes(clash_line + b"\n" + clash_line + b"\n")
    assert rows(lake, "vault", f"account_id = '{ERASED}'")
    assert run_requests(env, "--file", str(first)).returncode == 0
    out = run_requests(env, "--file", str(first), "--file", str(clash), "--json")
    assert out.returncode == 0, out.stderr.decode()
    result = orjson.loads(out.stdout)
    assert result["received"] == 1 and result["reused_ids"] == 1  # the resent r-1 access is the same one
    folded = ledger.requests(lake)
    assert (
        sorted(folded) == sorted(["r-1", *[r for r in folded if r.startswith("r-1.")]]) and len(folded) == 2
    )
    derived = next(r for r in folded.values() if r.request != "r-1")
    assert derived.kind == "erase" and derived.status == "fulfilled" and derived.reused_id == "r-1"
    assert rows(lake, "vault", f"account_id = '{ERASED}'") == []
    again = run_requests(env, "--file", str(clash), "--json")  # the producer sends it once more
    assert orjson.loads(again.stdout)["received"] == 0 and len(ledger.requests(lake)) == 2


def test_a_broker_out_of_reach_fails_the_pass_before_anything_is_recorded(
    base: dict[str, Any], tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(base["lake"], lake)
    env = {**env_of(base, lake), "CALLPIPE_BOOTSTRAP": "127.0.0.1:1"}
    out = subprocess.run(
        callpipe_cmd("jobs", "requests", "--as-of", NOW, "--file", str(base["file"])),
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 2
    assert "`--no-topic` answers the --file requests" in out.stderr.decode()
    assert ledger.requests(lake) == {}  # the file's requests wait for a pass that can finish


def test_an_export_of_an_erased_subject_says_it_holds_nothing(done: dict[str, Any], tmp_path: Path) -> None:
    out = subprocess.run(
        callpipe_cmd("jobs", "export", "--account", ERASED, "--out", str(tmp_path / "e.json")),
        env=done["env"],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    said = out.stdout.decode()
    assert "nothing held: the subject was erased at 2026-11-29T00:00:00.000Z (r-erase)" in said


def test_erased_subject_is_gone_from_every_zone(done: dict[str, Any], base: dict[str, Any]) -> None:
    lake, key = done["lake"], base["key"]
    assert rows(lake, "vault", f"account_id = '{ERASED}'") == []
    assert rows(lake, "analytics", f"account_token = '{key.account_token(ERASED)}'") == []
    assert ledger.requests(lake)["r-erase"].touched["rows_removed"]["vault"] > 0  # type: ignore[index]


def test_access_export_holds_every_vault_row_and_a_manifest(done: dict[str, Any]) -> None:
    outbox = done["lake"] / "_outbox"
    export = outbox / "access-r-access.json"
    manifest = orjson.loads((outbox / "access-r-access.manifest.json").read_bytes())
    assert stat.S_IMODE(export.stat().st_mode) == 0o600 and stat.S_IMODE(outbox.stat().st_mode) == 0o700
    doc = orjson.loads(export.read_bytes())
    before = done["before"]["access_vault"]
    assert before and sorted(r["event_id"] for r in doc["vault"]) == [r["event_id"] for r in before]
    assert manifest["counts"]["vault"] == len(before) and manifest["request"] == "r-access"
    import hashlib

    assert manifest["sha256"] == hashlib.sha256(export.read_bytes()).hexdigest()
    # the audit names what was handed over: the export and its manifest, by checksum
    entry = next(e for e in audit.read(done["lake"]) if e["params"].get("request") == "r-access")
    handed = {f["path"]: f["sha256"] for f in entry["files"]}
    assert handed == {
        "_outbox/access-r-access.json": manifest["sha256"],
        "_outbox/access-r-access.manifest.json": hashlib.sha256(
            (outbox / "access-r-access.manifest.json").read_bytes()
        ).hexdigest(),
    }


def test_rectified_values_replace_the_old_ones_in_vault_and_analytics(
    done: dict[str, Any], base: dict[str, Any]
) -> None:
    lake, key = done["lake"], base["key"]
    old_vault = done["before"]["rectified_vault"]
    new_vault = rows(lake, "vault", f"account_id = '{RECTIFIED}'")
    assert [r["event_id"] for r in new_vault] == [r["event_id"] for r in old_vault]
    for row in new_vault:
        assert row["org_id"] == NEW_ORG
        assert row["caller" if row["direction"] == "outbound" else "callee"] == NEW_NUMBER
    old_orgs = {r["org_id"] for r in old_vault}
    old_numbers = {r["caller" if r["direction"] == "outbound" else "callee"] for r in old_vault}
    token = key.token(Domain.ACCOUNT, RECTIFIED)
    new_analytics = rows(lake, "analytics", f"account_token = '{token}'")
    assert len(new_analytics) == len(done["before"]["rectified_analytics"]) > 0
    for row in new_analytics:
        side = "caller" if row["direction"] == "outbound" else "callee"
        assert row["org_token"] == key.token(Domain.ORG, NEW_ORG)
        assert row[f"{side}_token"] == key.token(Domain.PHONE, NEW_NUMBER) and row[f"{side}_country"] == 44
        assert row["org_token"] not in {key.token(Domain.ORG, o) for o in old_orgs}
        assert row[f"{side}_token"] not in {key.token(Domain.PHONE, n) for n in old_numbers}


def test_restrict_and_object_remove_analytics_rows_but_keep_the_vault(
    done: dict[str, Any], base: dict[str, Any]
) -> None:
    lake, key = done["lake"], base["key"]
    for account in (RESTRICTED, OBJECTED):
        assert rows(lake, "analytics", f"account_token = '{key.account_token(account)}'") == []
        assert rows(lake, "vault", f"account_id = '{account}'") != []
    # the audit names each removal by the request it served, not as an erasure
    jobs = {e["params"].get("request"): e["job"] for e in audit.read(lake) if e["params"].get("request")}
    assert jobs["r-restrict"] == "restrict" and jobs["r-object"] == "object" and jobs["r-erase"] == "erase"


def test_no_raw_id_outside_the_vault(done: dict[str, Any]) -> None:
    lake = done["lake"]
    for path in [*(lake / "_requests").iterdir(), *(lake / "_audit").iterdir()]:
        data = path.read_bytes()
        for account in (ERASED, ACCESSED, RECTIFIED, NEW_NUMBER, NEW_ORG):
            assert account.encode() not in data, path.name
    intake = sorted(p.name for p in (lake / "vault" / "requests").iterdir())
    assert intake == ["r-erase-again.json", "r-erase.json", "r-unknown.json"]  # the suppression list


def test_a_second_pass_changes_nothing(done: dict[str, Any], base: dict[str, Any], tmp_path: Path) -> None:
    lake = tmp_path / "again"
    shutil.copytree(done["lake"], lake)
    before, view = digest(lake), ledger_view(lake)
    out = run_requests(env_of(base, lake), "--file", str(base["file"]))
    assert out.returncode == 0, out.stderr.decode()
    assert digest(lake) == before and ledger_view(lake) == view


def test_late_rows_of_an_erased_subject_are_erased_by_the_next_pass(
    done: dict[str, Any], base: dict[str, Any], tmp_path: Path
) -> None:
    """The subject's events were still streaming in: rows land after its erasure."""
    lake = tmp_path / "late"
    shutil.copytree(done["lake"], lake)
    src = next(iter(sorted((base["lake"] / "vault" / "calls").glob("dt=*/bucket=*/*.parquet"))))
    late = [r for r in rows(base["lake"], "vault", f"account_id = '{ERASED}'")]
    assert late
    import pyarrow as pa

    schema = crypt.read_schema(src)
    from sinks.files import write_table
    from sinks.layout import bucket_of

    bucket = bucket_of(base["key"].token(Domain.ACCOUNT, ERASED), 2)
    dst = lake / "vault" / "calls" / "dt=2026-11-28" / f"bucket={bucket:02d}" / "late.parquet"
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_table(pa.Table.from_pylist(late[:2], schema=schema), dst, "vault")
    out = run_requests(env_of(base, lake), "--json")
    assert out.returncode == 0, out.stderr.decode()
    assert orjson.loads(out.stdout)["enforced"] == 1
    assert rows(lake, "vault", f"account_id = '{ERASED}'") == []
    assert ledger.requests(lake)["r-erase"].enforced


def test_status_lists_open_requests_and_exits_non_zero_when_one_is_overdue(
    base: dict[str, Any], tmp_path: Path
) -> None:
    lake = tmp_path / "status"
    shutil.copytree(base["lake"], lake)
    key: PseudonymKey = base["key"]
    ledger.append(
        lake,
        [
            {
                "event": "received",
                "request": "r-late",
                "kind": "access",
                "subject": key.token(Domain.ACCOUNT, ACCESSED),
                "requested_at": "2026-10-01T00:00:00.000Z",
                "received_at": "2026-10-01T00:00:00.000Z",
                "deadline": "2026-10-31T00:00:00.000Z",
                "source": "file",
            },
            {
                "event": "received",
                "request": "r-soon",
                "kind": "erase",
                "subject": key.token(Domain.ACCOUNT, ERASED),
                "requested_at": "2026-11-01T00:00:00.000Z",
                "received_at": "2026-11-01T00:00:00.000Z",
                "deadline": "2026-12-01T00:00:00.000Z",
                "source": "file",
            },
        ],
    )
    out = subprocess.run(
        callpipe_cmd("jobs", "requests", "--status", "--as-of", NOW, "--json"),
        env=env_of(base, lake),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 4, out.stderr.decode()
    status = orjson.loads(out.stdout)
    assert [(r["request"], r["due"]) for r in status["open"]] == [
        ("r-late", "overdue"),
        ("r-soon", "due soon"),
    ]
    text = subprocess.run(
        callpipe_cmd("jobs", "requests", "--status", "--as-of", NOW),
        env=env_of(base, lake),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert b"OVERDUE" in text.stdout and text.returncode == 4
    report = subprocess.run(
        callpipe_cmd("jobs", "report", "--as-of", NOW),
        env=env_of(base, lake),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert report.returncode == 0, report.stderr.decode()
    assert b"r-late" in report.stdout and b"OVERDUE" in report.stdout


def test_breach_window_returns_exactly_the_subjects_of_its_rows(base: dict[str, Any], tmp_path: Path) -> None:
    lake = tmp_path / "breach"
    shutil.copytree(base["lake"], lake)
    since, until = datetime(2026, 11, 26, 6, tzinfo=UTC), datetime(2026, 11, 26, 18, tzinfo=UTC)
    window = (
        f"started_at >= TIMESTAMPTZ '{since.isoformat()}' AND started_at < TIMESTAMPTZ '{until.isoformat()}'"
    )
    expected = {r["account_id"] for r in rows(lake, "vault", window)}
    assert expected
    key: PseudonymKey = base["key"]
    recorded = len(rows(lake, "analytics", f"{window} AND has_recording"))
    for zone, buckets in (("vault", None), ("analytics", None), ("analytics", 2)):
        result = breach.scope(
            duckdb.connect(),
            lake,
            key,
            zone,
            since=since,
            until=until,
            now=datetime.now(UTC),
            buckets=buckets,
        )
        assert set(result["subject_tokens"]) == {key.token(Domain.ACCOUNT, a) for a in expected}
        assert "phone" in result["categories"] and "account_id" in result["categories"]
        for category, countries in result["categories"].items():  # a row counts once per category
            assert sum(c["rows"] for c in countries.values()) <= result["rows"], category
        notify = orjson.loads((lake / "_outbox" / result["outbox"]).read_bytes())
        assert len(notify["subjects"]) == len(expected)
        # whom to notify: account ids, for an analytics exposure too (the vault knows them all here)
        assert {s["account_id"] for s in notify["subjects"]} == expected
        assert result["subjects_without_account_id"] == 0
        if zone == "analytics":
            got = sum(c["rows"] for c in result["categories"].get("recording", {}).values())
            assert 0 < got == recorded < result["rows"]  # calls flagged as recorded, not every row
            assert result["held_as"]["phone"].startswith("keyed tokens")
            assert result["held_as"]["free_text"].startswith("text with detected personal data replaced")
    one = sorted((lake / "vault" / "calls").glob("dt=*/bucket=*/*.parquet"))[0]
    in_file = set(crypt.read_table(one, columns=["account_id"]).column(0).to_pylist())
    result = breach.scope(duckdb.connect(), lake, key, "vault", files=[one], now=datetime.now(UTC))
    assert set(result["subject_tokens"]) == {key.token(Domain.ACCOUNT, a) for a in in_file}


def test_an_access_killed_after_its_audit_entry_answers_the_same_on_the_rerun(
    base: dict[str, Any], done: dict[str, Any], tmp_path: Path
) -> None:
    """A pass killed between the access export's audit entry and the ledger's `fulfilled` leaves
    that entry behind; the rerun's answer does not count its own earlier attempt (a kill -9 trial
    hit this window about once in three runs on a busy machine)."""
    lake = tmp_path / "killed-after-audit"
    shutil.copytree(base["lake"], lake)
    key: PseudonymKey = base["key"]
    audit.record(
        lake,
        job="export",
        params={"subject": key.account_token(ACCESSED), "request": "r-access", "key_version": key.version},
        counts={},
        files=[],
        duration_s=0.0,
        outcome="ok",
    )
    out = run_requests(env_of(base, lake), "--file", str(base["file"]))
    assert out.returncode == 0, out.stderr.decode()
    assert ledger_view(lake)["r-access"] == ledger_view(done["lake"])["r-access"]
    doc = orjson.loads((lake / "_outbox" / "access-r-access.json").read_bytes())
    assert all(e["params"].get("request") != "r-access" for e in doc["audit"])


def _kill_trials(base: dict[str, Any], done: dict[str, Any], trials: int, seed: str) -> None:
    expected_lake, expected_ledger = digest(done["lake"]), ledger_view(done["lake"])
    rng = random.Random(seed)
    for trial in range(trials):
        lake = base["root"] / f"kill-{seed}-{trial}"
        shutil.copytree(base["lake"], lake)
        env = env_of(base, lake)
        proc = subprocess.Popen(
            callpipe_cmd("jobs", "requests", "--no-topic", "--as-of", NOW, "--file", str(base["file"])),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3, done["s"]))
        proc.kill()
        proc.wait()
        out = run_requests(env, "--file", str(base["file"]))
        assert out.returncode == 0, f"trial {trial}: {out.stderr.decode()}"
        assert digest(lake) == expected_lake, f"trial {trial}: the lake differs"
        assert ledger_view(lake) == expected_ledger, f"trial {trial}: the ledger differs"
        assert stray_files(lake) == []
        shutil.rmtree(lake)


def test_a_pass_killed_and_rerun_equals_an_uninterrupted_one(
    base: dict[str, Any], done: dict[str, Any]
) -> None:
    _kill_trials(base, done, 3, "fast")


@pytest.mark.soak
def test_a_pass_killed_at_random_points_twelve_times(base: dict[str, Any], done: dict[str, Any]) -> None:
    _kill_trials(base, done, 12, "soak")
