"""`callpipe ingest` over hostile files: records whose identifiers no command could name (control
characters) become dead letters with reason bad_id, in calls, consent and request files alike, and
nothing of them lands in the lake or in the consent history."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from pipeline import codec
from pipeline.carrier import generate
from pipeline.cli import main
from pipeline.identifiers import identifier_paths
from pipeline.ingest import load_states
from tests.support.ops_lake import keep_all_policy, make_key, zone_source

START = 1_767_225_600_000
TRAFFIC = generate.generate_traffic(5, 40, START, accounts=10)
CONTROL = ["\x00", "\n", "\x1b", "\u200b"]


def _with(record: dict[str, Any], path: tuple[str, ...], value: str) -> dict[str, Any]:
    if len(path) == 1:
        return {**record, path[0]: value}
    return {**record, path[0]: _with(record[path[0]], path[1:], value)}


def _hostile(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """One copy of a record per identifier field and control character, that field spoiled."""
    out = []
    base = [r for r in records if all(r.get(p[0]) is not None for p, _ in identifier_paths(name))]
    for i, (path, _limit) in enumerate(identifier_paths(name)):
        for j, char in enumerate(CONTROL):
            rec = base[(i * len(CONTROL) + j) % len(base)]
            out.append(_with(rec, path, f"x{char}{i}-{j}"))
    return out


def _write(path: Path, records: list[dict[str, Any]], name: str) -> Path:
    path.write_bytes(b"\n".join(codec.to_json(r, name) for r in records) + b"\n")
    return path


def _dead_letters(lake: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(line)
        for f in sorted(lake.glob("_rejects/*/*.jsonl"))
        for line in f.read_bytes().splitlines()
    ]


def test_control_characters_in_identifiers_are_dead_letters_never_landed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    key_file, _key = make_key(tmp_path)
    monkeypatch.setenv("CALLPIPE_LAKE", str(lake))
    monkeypatch.setenv("CALLPIPE_KEY_FILE", str(key_file))
    monkeypatch.setenv("CALLPIPE_POLICY", str(keep_all_policy(tmp_path)))  # START is long past
    bad_calls = _hostile(TRAFFIC.calls, "CallEvent")
    bad_consents = _hostile(TRAFFIC.consents, "ConsentEvent")
    requests = TRAFFIC.requests or [{"request_id": "r1", "account_id": "a1", "kind": "object", "at": START}]
    bad_requests = _hostile(requests, "PrivacyRequest")
    calls = _write(tmp_path / "calls.jsonl", TRAFFIC.calls + bad_calls, "CallEvent")
    consent = _write(tmp_path / "consent.jsonl", TRAFFIC.consents + bad_consents, "ConsentEvent")
    reqs = _write(tmp_path / "requests.jsonl", requests + bad_requests, "PrivacyRequest")

    assert main(["ingest", str(calls), "--consent", str(consent), "--requests", str(reqs)]) == 0

    printed = capsys.readouterr().out
    assert f"dead_letter.bad_id: {len(bad_calls)}" in printed
    assert f"consent_rejected.bad_id: {len(bad_consents)}" in printed
    assert f"requests_rejected.bad_id: {len(bad_requests)}" in printed
    dead = _dead_letters(lake)
    assert {d["reason"] for d in dead} == {"bad_id"}
    kept = {base64.b64decode(d["raw_b64"]) for d in dead}
    spoiled = [*bad_calls, *bad_consents, *bad_requests]
    assert len(dead) == len(spoiled)
    assert all(any(orjson.dumps(r["account_id"])[1:-1] in raw for raw in kept) for r in spoiled)
    # Nothing spoiled landed: every identifier in the lake is printable, every good call is there.
    con = duckdb.connect()
    columns = [p[-1] for p, _ in identifier_paths("CallEvent") if len(p) == 1]
    rows = con.sql(f"SELECT {', '.join(columns)} FROM {zone_source(con, lake, 'vault')}").fetchall()
    assert rows and all(v is None or v.isprintable() for row in rows for v in row)
    landed = {r[0] for r in rows}
    assert landed <= {c["event_id"] for c in TRAFFIC.calls}


def test_load_states_never_holds_an_unnameable_account(tmp_path: Path) -> None:
    bad = _hostile(TRAFFIC.consents, "ConsentEvent")
    consent = _write(tmp_path / "consent.jsonl", TRAFFIC.consents + bad, "ConsentEvent")
    states, counts = load_states([consent], [], tmp_path / "lake")
    assert all(account.isprintable() for account in states)
    assert counts["consent_rejected.bad_id"] == len(bad)
    assert counts["consent_events"] == len(TRAFFIC.consents)


def test_a_rejected_control_line_is_kept_without_its_secret_named_fields(tmp_path: Path) -> None:
    good = dict(TRAFFIC.consents[0])
    bad = orjson.dumps({**good, "purpose": "fly", "password": "hunter2-SECRET"})  # unknown_enum
    consent = tmp_path / "consent.jsonl"
    consent.write_bytes(bad + b"\n")
    lake = tmp_path / "lake"
    _states, counts = load_states([consent], [], lake)
    assert counts["consent_rejected.unknown_enum"] == 1
    lines = [line for p in (lake / "_rejects").rglob("*.jsonl") for line in p.read_bytes().splitlines()]
    raws = [base64.b64decode(orjson.loads(line)["raw_b64"]) for line in lines]
    assert len(raws) == 1 and b"fly" in raws[0] and b"hunter2" not in raws[0]
