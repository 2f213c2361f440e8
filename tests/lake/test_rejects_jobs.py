"""The dead letters kept in `<lake>/_rejects/` under the jobs that must cover them, through the
`callpipe` command line: `jobs retention` expires them (by the newest event they hold, else by the
file's mtime, at the shortest of the vault's, recordings' and transcripts' limits), in its plan,
dry run, counts and audit; `jobs erase` and `jobs export` find a subject's dead letters in the
forms `callpipe ingest` keeps them (a deflate container kept whole, escaped JSON, ids with quotes)
and report the ones that cannot be searched instead of calling the erasure verified."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from jobs import audit, ledger
from jobs.cli_erase import EXIT_NOT_VERIFIED
from pipeline import codec
from pipeline.carrier import generate
from pipeline.raw_records import parse_container, read
from schemas import clock
from sinks.rejects import REJECTS_DIR
from tests.support.ops_lake import callpipe_cmd, callpipe_env, callpipe_json, make_key

pytestmark = pytest.mark.e2e

AS_OF = datetime(2026, 12, 1, tzinfo=UTC)
POLICY = "[retention.vault]\ndays = 60\n[retention.transcript]\ndays = 20\n[retention.recording]\ndays = 40\n"
SUBJECT = "josé.müller"


def _calls(account: str, at: datetime, n: int = 4) -> list[dict[str, object]]:
    start = clock.to_ms(at)
    return [
        dict(c, account_id=account, started_at=start, answered_at=None, ended_at=None)
        for c in generate.generate_calls(3, n, start, 1)
    ]


def _write(lake: Path, source: str, raws: list[bytes], *, mtime: datetime | None = None) -> Path:
    folder = lake / REJECTS_DIR / source
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"000000000000-{len(raws) - 1:012d}.jsonl"
    lines = [
        {
            "reason": "malformed",
            "stage": "decode",
            "offset": i,
            "index": None,
            "raw_b64": base64.b64encode(r).decode(),
        }
        for i, r in enumerate(raws)
    ]
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    path.chmod(0o600)
    if mtime is not None:
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


def _tree(lake: Path) -> list[str]:
    return sorted(str(p.relative_to(lake)) for p in (lake / REJECTS_DIR).glob("*/*.jsonl"))


def test_retention_expires_dead_letters_by_event_time_else_mtime(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    key_file, _ = make_key(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    env = callpipe_env(lake, key_file, policy)
    now = datetime.now(UTC)
    day = timedelta(days=1)
    cut = AS_OF - timedelta(days=20)  # the transcripts' limit, the shortest
    # a backfill's dead letters: written now, events older than the cutoff -> expire
    old_events = _write(
        lake, "ingest-old", [codec.to_json(c, "CallEvent") for c in _calls("a1", cut - 2 * day)]
    )
    # a deflate container kept whole, its events older -> expire (read through the compression)
    old_container = _write(
        lake, "ingest-box", [codec.encode_container(_calls("a2", cut - 3 * day), "CallEvent")[:-9]]
    )
    # events newer than the transcripts' limit (though within the vault's) -> kept
    recent = _write(lake, "ingest-new", [codec.to_json(c, "CallEvent") for c in _calls("a3", cut + day)])
    # undecodable bytes: by the file's mtime
    _write(lake, "ingest-junk-old", [b"\x07garbage"], mtime=cut - 2 * day)
    junk_new = _write(lake, "ingest-junk-new", [b"\x07garbage"], mtime=cut + day)
    # an event time the file cannot hold (after it was written): the mtime decides
    future = _write(
        lake,
        "ingest-skew",
        [codec.to_json(c, "CallEvent") for c in _calls("a4", now + 30 * day)],
        mtime=cut - 2 * day,
    )
    assert old_events.stat().st_mtime > cut.timestamp()

    before = _tree(lake)
    plan = callpipe_json(env, "jobs", "retention", "--as-of", AS_OF.isoformat(), "--dry-run")
    assert _tree(lake) == before  # a dry run touches nothing
    assert plan["cutoffs"]["rejects"] == {"dead_letters": cut.isoformat()}
    summary = plan["summary"]
    assert (summary["dead_letter_files_removed"], summary["dead_letter_files_held"]) == (4, 2)
    assert summary["dead_letters_expired"] == 4 + 1 + 1 + 4

    done = subprocess.run(
        callpipe_cmd("jobs", "retention", "--as-of", AS_OF.isoformat()),
        env=env,
        capture_output=True,
        check=True,
    )
    assert b"expired dead-letter files removed from _rejects/: 4 (10 dead letters)" in done.stdout
    assert _tree(lake) == sorted(str(p.relative_to(lake)) for p in (recent, junk_new))
    assert not old_container.exists() and not future.exists()
    [entry] = [e for e in audit.read(lake) if e["job"] == "retention"]
    assert entry["counts"]["dead_letter_files_removed"] == 4
    assert sorted(f["path"] for f in entry["files"]) == sorted(set(before) - set(_tree(lake)))

    again = callpipe_json(env, "jobs", "retention", "--as-of", AS_OF.isoformat())
    assert again["summary"]["dead_letter_files_removed"] == 0  # a re-run changes nothing


def _damaged(raw: bytes) -> bytes:
    block = parse_container(raw).blocks[0]  # type: ignore[union-attr]
    at = len(raw) - len(block.data) - 16  # the first byte of the compressed data, framing intact
    return raw[:at] + b"\x07" + raw[at + 1 :]  # deflate block type 3: reserved, never decompresses


def _ingest(env: dict[str, str], tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    done = subprocess.run(
        callpipe_cmd("ingest", str(path)), env=env, capture_output=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr.decode()


def test_erase_and_export_find_dead_letters_in_every_form_and_count_what_cannot_be_searched(
    tmp_path: Path,
) -> None:
    lake = tmp_path / "lake"
    key_file, _ = make_key(tmp_path)
    env = callpipe_env(lake, key_file)
    at = datetime.now(UTC) - timedelta(days=1)
    quoted = 'acc-"quoted"'
    mine = _calls(SUBJECT, at, 5)
    # a deflate container cut short: kept whole (compressed) as one dead letter
    _ingest(env, tmp_path, "calls3.avro", codec.encode_container(mine, "CallEvent")[:-20])
    # JSON lines as Python writes them (\u escapes), one cut short; an id with quotes, bad duration
    line = json.dumps(
        {**codec.from_json(orjson.loads(codec.to_json(mine[0], "CallEvent")), "CallEvent")}
    ).encode()
    bad_quoted = codec.to_json(dict(_calls(quoted, at, 1)[0], duration_s=-5), "CallEvent")
    other = codec.to_json(dict(_calls("acc-other", at, 1)[0], duration_s=-5), "CallEvent")
    _ingest(env, tmp_path, "calls.jsonl", b"\n".join([line[:-40], bad_quoted, other]) + b"\n")
    assert b"\\u00e9" in line
    before = sorted(
        base64.b64decode(orjson.loads(x)["raw_b64"])
        for p in (lake / REJECTS_DIR).glob("*/*.jsonl")
        for x in p.read_bytes().splitlines()
    )
    assert len(before) == 4

    out = tmp_path / "export.json"
    exported = callpipe_json(env, "jobs", "export", "--account", SUBJECT, "--out", str(out))
    assert exported["dead_letters"] == 2 and exported["dead_letters_unattributed"] == 0

    result = callpipe_json(env, "jobs", "erase", "--no-topic", "--account", SUBJECT)
    assert (result["dead_letters_removed"], result["dead_letters_unattributed"]) == (2, 0)
    assert callpipe_json(env, "jobs", "erase", "--no-topic", "--account", quoted)["dead_letters_removed"] == 1
    left = [
        base64.b64decode(orjson.loads(x)["raw_b64"])
        for p in (lake / REJECTS_DIR).glob("*/*.jsonl")
        for x in p.read_bytes().splitlines()
    ]
    # seen to fail once in ~25 runs, unexplained: say what was left (the test's own fake data)
    assert left == [other], [x[:120] for x in left]

    # a container whose compressed block is damaged, kept before dead letters were cleared of
    # credentials (now such bytes are withheld): nobody's for sure; counted, never "verified"
    _write(
        lake,
        "ingest-calls4.avro-0123456789ab",
        [_damaged(codec.encode_container(_calls("acc-z", at), "CallEvent"))],
    )
    # The run erases and records what it found, but automation sees only the exit status: a
    # distinct one says "not verified", in text and in --json alike.
    done = subprocess.run(
        callpipe_cmd("jobs", "erase", "--no-topic", "--account", "acc-y"),
        env=env,
        capture_output=True,
        check=False,
    )
    assert done.returncode == EXIT_NOT_VERIFIED, done.stderr.decode()
    text = done.stdout.decode()
    assert "dead letters that could not be searched (damaged compressed bytes): 1" in text
    assert "verified: no rows of the subject remain in any bucket\n" not in text
    assert "erasure not verified: 1 dead letter(s) could not be searched" in done.stderr.decode()
    entries = [e for e in audit.read(lake) if e["job"] == "erase"]
    assert entries[-1]["counts"]["dead_letters_unattributed"] == 1
    recorded = ledger.requests(lake)[entries[-1]["params"]["request"]]
    assert (recorded.source, recorded.status) == ("operator", "fulfilled")

    mine_too = _calls("acc-w", at, 2)
    _ingest(env, tmp_path, "calls5.jsonl", b"".join(codec.to_json(c, "CallEvent") + b"\n" for c in mine_too))
    done = subprocess.run(
        callpipe_cmd("jobs", "erase", "--no-topic", "--account", "acc-w", "--json"),
        env=env,
        capture_output=True,
        check=False,
    )
    assert done.returncode == EXIT_NOT_VERIFIED, done.stderr.decode()
    result = orjson.loads(done.stdout)
    assert result["rows_removed"]["vault"] == 2 and result["dead_letters_unattributed"] == 1

    # the same erasure asked by a request: the cron pass exits 5 as well, and its ledger says why
    requested = tmp_path / "requests.jsonl"
    record = {"request_id": "r-unverified", "account_id": "acc-v", "kind": "erase", "at": clock.to_ms(at)}
    requested.write_bytes(codec.to_json(dict(record, corrections=None), "PrivacyRequest") + b"\n")
    done = subprocess.run(
        callpipe_cmd("jobs", "requests", "--no-topic", "--file", str(requested), "--json"),
        env=env,
        capture_output=True,
        check=False,
    )
    assert done.returncode == EXIT_NOT_VERIFIED, done.stderr.decode()
    assert orjson.loads(done.stdout)["erasures_not_verified"] == 1
    assert "1 erasure(s) or withdrawal(s) not verified" in done.stderr.decode()
    fulfilled = ledger.requests(lake)["r-unverified"]
    assert fulfilled.status == "fulfilled"
    assert [
        e["touched"]["dead_letters_unattributed"]
        for e in ledger.read(lake)
        if e.get("request") == "r-unverified" and e["event"] == "fulfilled"
    ] == [1]


def test_ingest_keeps_no_credential_of_an_avro_dead_letter(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    key_file, _ = make_key(tmp_path)
    env = callpipe_env(lake, key_file)
    at = datetime.now(UTC) - timedelta(days=1)
    calls = [
        dict(c, attributes={"password": "hunter2-SECRET", "pin": "4321", "plan": "gold"})
        for c in _calls("acc-p", at)
    ]
    _ingest(env, tmp_path, "calls4.avro", codec.encode_container(calls, "CallEvent", codec="null")[:-7])
    _ingest(env, tmp_path, "calls5.avro", codec.encode_container(calls, "CallEvent")[:-7])
    kept = [
        base64.b64decode(orjson.loads(x)["raw_b64"])
        for p in (lake / REJECTS_DIR).glob("*/*.jsonl")
        for x in p.read_bytes().splitlines()
    ]
    assert len(kept) == 2 and all(kept)
    for raw in kept:
        found = read(raw)
        seen = [raw, *found.plain, orjson.dumps(found.records, default=str)]
        assert not any(secret in part for secret in (b"hunter2-SECRET", b"4321") for part in seen)
        assert b"gold" in b"".join(seen)  # the rest is kept for repair
