"""Consent withdrawals purged by a `jobs requests` pass over a synthetic lake: what the account's
calls before a withdrawal held under its purpose is gone from every zone, calls at or after it
(a re-grant's included) and other accounts are untouched; the ledger records each withdrawal once;
late rows are purged by the next pass; a pass killed with SIGKILL and rerun ends as an
uninterrupted one. Dead letters in `_rejects/` (JSON lines and a deflate container, as `callpipe
ingest` keeps them) of the account's calls before a recording or transcription withdrawal that
hold the value go whole; the rest stay, one that cannot be searched is counted, and one kept after
the purge goes at the next pass. The consent history is given in-process (the real-broker path,
consent.events read by the job, is tests/e2e/test_withdraw_stream.py)."""

from __future__ import annotations

import base64
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pytest

from jobs import audit, ledger, requests
from jobs.synth import SynthSpec, build
from pipeline import codec
from pipeline.carrier import generate
from pipeline.consent import AccountState, record_consent
from pipeline.keys import Domain
from pipeline.policy import RequestDeadlines
from pipeline.raw_records import parse_container
from sinks import crypt
from sinks.files import write_table
from sinks.layout import bucket_of
from sinks.rejects import REJECTS_DIR, write_rejects
from tests.support.ops_lake import ROOT, callpipe_env, digest, make_key, stray_files, zone_source

pytestmark = pytest.mark.e2e

NOW = datetime(2026, 12, 1, tzinfo=UTC)
BUCKETS = 2


def rows(lake: Path, zone: str, where: str = "true") -> list[dict[str, Any]]:
    con = duckdb.connect()
    table = con.sql(f"SELECT * FROM {zone_source(con, lake, zone)} WHERE {where}").to_arrow_table()
    return sorted(table.to_pylist(), key=lambda r: r["event_id"])


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def states_of(events: list[dict[str, Any]]) -> dict[str, AccountState]:
    out: dict[str, AccountState] = {}
    for e in events:
        out[e["account_id"]] = record_consent(out.get(e["account_id"]), e)
    return out


def consent(account: str, purpose: str, granted: bool, at: int) -> dict[str, Any]:
    return {"account_id": account, "purpose": purpose, "granted": granted, "at": at, "source": "app"}


def middle(times: list[int]) -> int:
    """A time with calls on both sides of it."""
    ordered = sorted(times)
    return ordered[len(ordered) // 2]


HOUR = 3_600_000
TALK = {"transcript": "please call me back"}
REC = {"recording_uri": "s3://rec/withdrawn.opus"}


def dead_call(account: str, started: int, **held: Any) -> dict[str, Any]:
    """A call as a carrier sends it, rejected (a negative duration), holding `held`."""
    call = generate.generate_calls(11, 1, started, 1)[0]
    cleared = {"recording_uri": None, "transcript": None, "duration_s": -5, "answered_at": None}
    return {**call, **cleared, "account_id": account, "started_at": started, "ended_at": None, **held}


def json_line(call: dict[str, Any]) -> bytes:
    return codec.to_json(call, "CallEvent")


def container(*calls: dict[str, Any]) -> bytes:
    """A deflate container cut short: `callpipe ingest` keeps it whole, as one dead letter."""
    return codec.encode_container(list(calls), "CallEvent")[:-9]


def damaged(raw: bytes) -> bytes:
    """A container whose compressed block does not decompress: it cannot be searched."""
    block = parse_container(raw).blocks[0]  # type: ignore[union-attr]
    at = len(raw) - len(block.data) - 16
    return raw[:at] + b"\x07" + raw[at + 1 :]  # deflate block type 3: reserved


def keep_dead_letters(lake: Path, source: str, raws: list[bytes]) -> None:
    entry = {"reason": "bad_duration", "stage": "validate", "index": None}
    dead = [SimpleNamespace(**entry, offset=i, raw=raw) for i, raw in enumerate(raws)]
    write_rejects(lake, source, 0, len(raws) - 1, dead)  # type: ignore[arg-type]


def dead_letters(lake: Path) -> dict[str, list[bytes]]:
    """The raw dead letters of `_rejects/`, by file."""
    return {
        str(p.relative_to(lake)): [
            base64.b64decode(orjson.loads(x)["raw_b64"]) for x in p.read_bytes().splitlines()
        ]
        for p in sorted((lake / REJECTS_DIR).glob("*/*.jsonl"))
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("withdraw")
    key_file, key = make_key(root)
    lake = root / "base"
    spec = SynthSpec(rows=6_000, days=6, buckets=BUCKETS, workers=1, seed=9, restricted_share=0.0)
    spec = SynthSpec(**{**spec.__dict__, "recording_share": 0.5, "transcript_share": 0.5})
    build(lake, key, spec)
    vault = rows(lake, "vault")
    by_account: dict[str, list[dict[str, Any]]] = {}
    for r in vault:
        by_account.setdefault(r["account_id"], []).append(r)

    def busiest(column: str, skip: set[str]) -> str:
        counts = {
            a: sum(1 for r in rs if r[column] is not None) for a, rs in by_account.items() if a not in skip
        }
        return max(sorted(counts), key=lambda a: counts[a])

    recorder = busiest("recording_uri", set())
    regranted = busiest("recording_uri", {recorder})
    never = busiest("recording_uri", {recorder, regranted})
    talker = busiest("transcript", {recorder, regranted, never})
    objector = max(
        sorted(set(by_account) - {recorder, regranted, never, talker}), key=lambda a: len(by_account[a])
    )
    cut = {a: middle([ms(r["started_at"]) for r in by_account[a]]) for a in by_account}
    first = ms(min(r["started_at"] for r in vault)) - 1_000
    events = [
        consent(recorder, "recording", True, first),
        consent(recorder, "recording", False, cut[recorder]),
        # withdrawn at its middle call, granted again an hour later: calls from then on keep theirs
        consent(regranted, "recording", True, first),
        consent(regranted, "recording", False, cut[regranted]),
        consent(regranted, "recording", True, cut[regranted] + 3_600_000),
        consent(never, "recording", False, cut[never]),  # never granted (off by default): no purge
        consent(talker, "transcription", True, first),
        consent(talker, "transcription", False, cut[talker]),
        consent(objector, "analytics", False, cut[objector]),  # on by default: switched off
    ]
    t, r = cut[talker], cut[recorder]
    lines = {
        "talker_before": json_line(dead_call(talker, t - HOUR, **TALK)),  # covered
        "talker_after": json_line(dead_call(talker, t + HOUR, **TALK)),
        "talker_silent": json_line(dead_call(talker, t - HOUR, **REC)),  # no transcript
        "other": json_line(dead_call(never, t - HOUR, **TALK, **REC)),
        "objector": json_line(dead_call(objector, cut[objector] - HOUR, **TALK, **REC)),  # analytics
    }
    box_before = container(dead_call(recorder, r - 2 * HOUR), dead_call(recorder, r - HOUR, **REC))
    box_after = container(dead_call(recorder, r + HOUR, **REC))
    junk = damaged(codec.encode_container([dead_call("acct-junk", r - HOUR, **REC)], "CallEvent"))
    keep_dead_letters(lake, "ingest-calls.jsonl-0123456789ab", list(lines.values()))
    keep_dead_letters(lake, "ingest-calls.avro-0123456789ab", [box_before])
    keep_dead_letters(lake, "ingest-later.avro-0123456789ab", [box_after])
    keep_dead_letters(lake, "ingest-junk.avro-0123456789ab", [junk])
    kept = {
        f"{REJECTS_DIR}/ingest-calls.jsonl-0123456789ab/000000000000-000000000004.jsonl": [
            v for k, v in lines.items() if k != "talker_before"
        ],
        f"{REJECTS_DIR}/ingest-junk.avro-0123456789ab/000000000000-000000000000.jsonl": [junk],
        f"{REJECTS_DIR}/ingest-later.avro-0123456789ab/000000000000-000000000000.jsonl": [box_after],
    }
    return {
        "root": root,
        "lake": lake,
        "key_file": key_file,
        "key": key,
        "events": events,
        "cut": cut,
        "accounts": {"recorder": recorder, "regranted": regranted, "never": never, "talker": talker,
                     "objector": objector},
        "dead_letters_kept": kept,
    }  # fmt: skip


def run_pass(lake: Path, base: dict[str, Any], states: Mapping[str, AccountState]) -> dict[str, Any]:
    return requests.run(
        duckdb.connect(),
        lake,
        base["key"],
        buckets=BUCKETS,
        deadlines=RequestDeadlines(),
        now=NOW,
        consent=lambda: states,
    )


@pytest.fixture(scope="module")
def done(base: dict[str, Any]) -> dict[str, Any]:
    lake = base["root"] / "done"
    shutil.copytree(base["lake"], lake)
    result = run_pass(lake, base, states_of(base["events"]))
    return {"lake": lake, "result": result}


def ledger_view(lake: Path) -> dict[str, tuple[Any, ...]]:
    """The ledger without its clock."""
    return {
        rid: (
            r.kind,
            r.purpose,
            r.status,
            r.subject,
            r.requested_at,
            orjson.dumps(r.touched),
            len(r.enforced),
        )
        for rid, r in ledger.requests(lake).items()
    }


def test_the_pass_records_each_withdrawal_that_calls_for_a_purge(done: dict[str, Any]) -> None:
    result = done["result"]
    assert result["withdrawals_received"] == 4  # the withdrawal of what was never granted is none
    assert result["handled"] == {"withdraw fulfilled": 4}
    folded = ledger.requests(done["lake"])
    assert sorted(r.purpose or "" for r in folded.values()) == [
        "analytics",
        "recording",
        "recording",
        "transcription",
    ]
    for r in folded.values():
        assert r.kind == "withdraw" and r.source == "consent" and r.status == "fulfilled"
        assert r.request.startswith("withdraw-") and r.fulfilled_at


def _before(base: dict[str, Any], account: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    cut = base["cut"][account]
    mine = rows(base["lake"], "vault", f"account_id = '{account}'")
    return [r for r in mine if ms(r["started_at"]) < cut], [r for r in mine if ms(r["started_at"]) >= cut]


def test_recordings_of_the_calls_before_a_withdrawal_are_gone_from_every_zone(
    base: dict[str, Any], done: dict[str, Any]
) -> None:
    key = base["key"]
    flags_held = 0
    for who in ("recorder", "regranted"):
        account = base["accounts"][who]
        before, after = _before(base, account)
        assert any(r["recording_uri"] for r in before) and any(r["recording_uri"] for r in after)
        now = {r["event_id"]: r for r in rows(done["lake"], "vault", f"account_id = '{account}'")}
        assert all(now[r["event_id"]]["recording_uri"] is None for r in before)
        # calls at or after the withdrawal (the re-grant's among them) keep theirs
        assert all(now[r["event_id"]]["recording_uri"] == r["recording_uri"] for r in after)
        # the rest of each row is as it was
        assert all(
            {**now[r["event_id"]], "recording_uri": None} == {**r, "recording_uri": None} for r in before
        )
        token = key.token(Domain.ACCOUNT, account)
        analytics = {r["event_id"]: r for r in rows(done["lake"], "analytics", f"account_token = '{token}'")}
        # false, as for a call landed without the consent; only a true flag counts as held
        assert all(analytics[r["event_id"]]["has_recording"] is False for r in before)
        was = {r["event_id"]: r for r in rows(base["lake"], "analytics", f"account_token = '{token}'")}
        flags_held += sum(1 for r in before if was[r["event_id"]]["has_recording"])
        assert all(
            analytics[r["event_id"]]["has_recording"] == was[r["event_id"]]["has_recording"] for r in after
        )
    removed = [
        r.touched["removed"]["analytics.has_recording"]
        for r in ledger.requests(done["lake"]).values()
        if r.kind == "withdraw" and r.purpose == "recording"
    ]
    assert len(removed) == 2 and sum(removed) == flags_held


def test_transcripts_of_the_calls_before_a_withdrawal_are_gone_from_every_zone(
    base: dict[str, Any], done: dict[str, Any]
) -> None:
    account = base["accounts"]["talker"]
    before, after = _before(base, account)
    assert any(r["transcript"] for r in before) and any(r["transcript"] for r in after)
    now = {r["event_id"]: r for r in rows(done["lake"], "vault", f"account_id = '{account}'")}
    assert all(now[r["event_id"]]["transcript"] is None for r in before)
    assert all(now[r["event_id"]]["transcript"] == r["transcript"] for r in after)
    token = base["key"].token(Domain.ACCOUNT, account)
    analytics = {r["event_id"]: r for r in rows(done["lake"], "analytics", f"account_token = '{token}'")}
    assert all(analytics[r["event_id"]]["transcript"] is None for r in before)
    assert any(analytics[r["event_id"]]["transcript"] for r in after)


def test_analytics_rows_of_the_calls_before_a_withdrawal_are_removed_the_vault_keeps_them(
    base: dict[str, Any], done: dict[str, Any]
) -> None:
    account = base["accounts"]["objector"]
    before, after = _before(base, account)
    token = base["key"].token(Domain.ACCOUNT, account)
    left = {r["event_id"] for r in rows(done["lake"], "analytics", f"account_token = '{token}'")}
    assert before and after
    assert left == {r["event_id"] for r in after}
    assert len(rows(done["lake"], "vault", f"account_id = '{account}'")) == len(before) + len(after)


def test_other_accounts_and_a_withdrawal_of_what_was_never_granted_are_untouched(
    base: dict[str, Any], done: dict[str, Any]
) -> None:
    touched = {base["accounts"][w] for w in ("recorder", "regranted", "talker", "objector")}
    quoted = ", ".join(f"'{a}'" for a in sorted(touched))
    assert rows(done["lake"], "vault", f"account_id NOT IN ({quoted})") == rows(
        base["lake"], "vault", f"account_id NOT IN ({quoted})"
    )
    tokens = ", ".join(f"'{base['key'].token(Domain.ACCOUNT, a)}'" for a in sorted(touched))
    assert rows(done["lake"], "analytics", f"account_token NOT IN ({tokens})") == rows(
        base["lake"], "analytics", f"account_token NOT IN ({tokens})"
    )


def test_each_purge_is_audited_by_token_and_no_account_id_leaves_the_vault(
    base: dict[str, Any], done: dict[str, Any]
) -> None:
    entries = [e for e in audit.read(done["lake"]) if e.get("job") == "withdraw"]
    assert len(entries) == 4
    text = b"".join(p.read_bytes() for p in (done["lake"] / "_audit").rglob("*") if p.is_file())
    text += (done["lake"] / "_requests" / "ledger.jsonl").read_bytes()
    for account in base["accounts"].values():
        assert account.encode() not in text
    assert list((done["lake"] / "vault" / "requests").glob("withdraw-*")) == []  # forgotten once done


def _withdrawal_records(base: dict[str, Any], lake: Path) -> dict[str, ledger.Request]:
    """The ledger's withdrawal records, by the name of their account in `base`."""
    names = {base["key"].token(Domain.ACCOUNT, a): who for who, a in base["accounts"].items()}
    return {names[r.subject]: r for r in ledger.requests(lake).values() if r.kind == "withdraw"}


def test_dead_letters_of_the_calls_before_a_withdrawal_that_hold_its_value_are_removed_whole(
    base: dict[str, Any], done: dict[str, Any]
) -> None:
    # gone: the talker's JSON line (its file written again without it), the recorder's container
    # (its file removed); kept: calls after, another account's, one without a transcript, the
    # objector's (analytics leaves dead letters alone), and the container that cannot be searched
    assert dead_letters(done["lake"]) == base["dead_letters_kept"]
    records = _withdrawal_records(base, done["lake"])
    removed = {
        who: r.touched["removed"].get("_rejects.dead_letters") for who, r in records.items() if r.touched
    }
    assert removed == {"recorder": 1, "regranted": 0, "talker": 1, "objector": None}
    # the damaged container is nobody's for sure: counted for each purge it could concern, and the
    # pass does not call them verified
    unattributed = {
        who: r.touched.get("dead_letters_unattributed") for who, r in records.items() if r.touched
    }
    assert unattributed == {"recorder": 1, "regranted": 1, "talker": 1, "objector": None}
    assert done["result"]["erasures_not_verified"] == 3
    # audited as the purge's other files, in the same run
    entries = {e["params"]["request"]: e for e in audit.read(done["lake"]) if e["job"] == "withdraw"}
    talker, recorder = entries[records["talker"].request], entries[records["recorder"].request]
    [rewritten] = [f for f in talker["files"] if f["path"].startswith(REJECTS_DIR)]
    assert (
        rewritten["path"] == f"{REJECTS_DIR}/ingest-calls.jsonl-0123456789ab/000000000000-000000000004.jsonl"
    )
    assert (rewritten["action"], rewritten["rows"]) == ("replaced", 4)
    assert rewritten["previous_sha256"] != rewritten["sha256"]
    [gone] = [f for f in recorder["files"] if f["path"].startswith(REJECTS_DIR)]
    assert gone["path"] == f"{REJECTS_DIR}/ingest-calls.avro-0123456789ab/000000000000-000000000000.jsonl"
    assert (gone["action"], gone["sha256"]) == ("removed", None) and gone["previous_sha256"]
    assert (
        talker["counts"]["dead_letters_unattributed"] == recorder["counts"]["dead_letters_unattributed"] == 1
    )
    assert talker["counts"]["removed"]["_rejects.dead_letters"] == 1


def test_a_dead_letter_kept_after_a_withdrawal_was_fulfilled_is_removed_by_the_next_pass(
    base: dict[str, Any], done: dict[str, Any], tmp_path: Path
) -> None:
    lake = tmp_path / "late-dead"
    shutil.copytree(done["lake"], lake)
    talker = base["accounts"]["talker"]
    late = json_line(dead_call(talker, base["cut"][talker] - 2 * HOUR, **TALK))
    after = json_line(dead_call(talker, base["cut"][talker] + 2 * HOUR, **TALK))
    keep_dead_letters(lake, "ingest-late.jsonl-0123456789ab", [late, after])
    result = run_pass(lake, base, states_of(base["events"]))
    assert result["withdrawals_enforced"] == 1
    path = f"{REJECTS_DIR}/ingest-late.jsonl-0123456789ab/000000000000-000000000001.jsonl"
    assert dead_letters(lake) == {**base["dead_letters_kept"], path: [after]}
    [event] = _withdrawal_records(base, lake)["talker"].enforced
    assert event["touched"] == {
        "removed": {"vault.transcript": 0, "analytics.transcript": 0, "_rejects.dead_letters": 1}
    }
    assert stray_files(lake) == []


def test_a_second_pass_changes_nothing(base: dict[str, Any], done: dict[str, Any], tmp_path: Path) -> None:
    lake = tmp_path / "again"
    shutil.copytree(done["lake"], lake)
    before, view, letters = digest(lake), ledger_view(lake), dead_letters(lake)
    result = run_pass(lake, base, states_of(base["events"]))
    assert result["withdrawals_received"] == 0 and result["withdrawals_enforced"] == 0
    assert digest(lake) == before and ledger_view(lake) == view
    assert dead_letters(lake) == letters == base["dead_letters_kept"]


def test_a_call_from_before_a_withdrawal_that_lands_after_its_purge_is_purged_by_the_next_pass(
    base: dict[str, Any], done: dict[str, Any], tmp_path: Path
) -> None:
    lake = tmp_path / "late"
    shutil.copytree(done["lake"], lake)
    account = base["accounts"]["recorder"]
    before, _after = _before(base, account)
    late = [dict(r, event_id=f"late-{i}") for i, r in enumerate(r for r in before if r["recording_uri"])][:2]
    src = next(iter(sorted((base["lake"] / "vault" / "calls").glob("dt=*/bucket=*/*.parquet"))))
    bucket = bucket_of(base["key"].token(Domain.ACCOUNT, account), BUCKETS)
    day = late[0]["started_at"].strftime("%Y-%m-%d")
    dst = lake / "vault" / "calls" / f"dt={day}" / f"bucket={bucket:02d}" / "late.parquet"
    write_table(pa.Table.from_pylist(late, schema=crypt.read_schema(src)), dst, "vault")
    result = run_pass(lake, base, states_of(base["events"]))
    assert result["withdrawals_enforced"] == 1
    assert [r["recording_uri"] for r in rows(lake, "vault", "event_id LIKE 'late-%'")] == [None, None]
    [recorder] = [
        r
        for r in ledger.requests(lake).values()
        if r.purpose == "recording" and r.enforced and r.source == "consent"
    ]
    assert recorder.enforced[0]["touched"] == {
        "removed": {"vault.recording_uri": 2, "analytics.has_recording": 0, "_rejects.dead_letters": 0}
    }


KILLED_PASS = """
import sys, orjson, duckdb
from datetime import datetime
from pathlib import Path
from jobs import requests
from pipeline.consent import record_consent
from pipeline.keys import load_key
from pipeline.policy import RequestDeadlines
from sinks import crypt

lake, key_file, vault_keys, events, now = sys.argv[1:]
states = {}
for e in orjson.loads(Path(events).read_bytes()):
    states[e["account_id"]] = record_consent(states.get(e["account_id"]), e)
with crypt.configured(crypt.from_key_file(Path(vault_keys))):
    requests.run(duckdb.connect(), Path(lake), load_key(Path(key_file), "v1"), buckets=2,
                 deadlines=RequestDeadlines(), now=datetime.fromisoformat(now), consent=lambda: states)
"""


def test_a_pass_killed_mid_purge_and_rerun_equals_an_uninterrupted_one(
    base: dict[str, Any], done: dict[str, Any], tmp_path: Path
) -> None:
    events = tmp_path / "consent.json"
    events.write_bytes(orjson.dumps(base["events"]))
    env = callpipe_env(tmp_path, base["key_file"])
    vault_keys = env["CALLPIPE_VAULT_KEY_FILE"]
    expected_lake, expected_ledger = digest(done["lake"]), ledger_view(done["lake"])
    rng = random.Random("withdraw")
    took = 0.0
    for trial in range(5):
        lake = tmp_path / f"kill-{trial}"
        shutil.copytree(base["lake"], lake)
        args = [sys.executable, "-c", KILLED_PASS, str(lake), str(base["key_file"]), vault_keys, str(events)]
        started = time.monotonic()
        proc = subprocess.Popen([*args, NOW.isoformat()], env=env, cwd=ROOT, stderr=subprocess.PIPE)
        if trial == 0:  # a whole pass first: the kills below fall inside one
            proc.wait()
            took = time.monotonic() - started
        else:
            time.sleep(rng.uniform(0.2, took))
        proc.kill()
        proc.wait()
        finish = subprocess.run([*args, NOW.isoformat()], env=env, cwd=ROOT, capture_output=True, check=False)
        assert finish.returncode == 0, finish.stderr.decode()
        assert digest(lake) == expected_lake, f"trial {trial}: the lake differs"
        assert dead_letters(lake) == base["dead_letters_kept"], f"trial {trial}: the dead letters differ"
        assert ledger_view(lake) == expected_ledger, f"trial {trial}: the ledger differs"
        assert stray_files(lake) == []
