"""The control snapshot file: a round trip keeps the state; a torn, old or foreign file is ignored."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson

from pipeline.consent import Stream, record_consent, record_request
from pipeline.stream.control import ControlSnapshot, fingerprint, load_snapshot, save_snapshot, snapshot_path
from schemas import topics

TOPICS = {Stream.CONSENT: topics.CONSENT, Stream.REQUESTS: topics.REQUESTS}


def sample() -> ControlSnapshot:
    state = record_consent(None, {"at": 5, "purpose": "analytics", "granted": False})
    state = record_request(state, {"at": 9, "kind": "erase", "request_id": "r-1"})
    return ControlSnapshot(
        topics={s.value: t for s, t in TOPICS.items()},
        positions={
            (topics.CONSENT, 0): (12, fingerprint(1, b"k", b"v")),
            (topics.REQUESTS, 1): (3, "ab"),
        },
        event_ms={("consent", 0): 5, ("requests", 1): 9},
        accounts={"acct-1": state},
    )


def test_round_trip_keeps_state_positions_and_watermarks(tmp_path: Path) -> None:
    path = snapshot_path(tmp_path, "t1.")
    save_snapshot(path, sample())
    assert load_snapshot(path, TOPICS) == sample()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not list(path.parent.glob("*.tmp"))


def test_torn_old_or_foreign_snapshots_are_not_used(tmp_path: Path) -> None:
    path = tmp_path / "control.snapshot"
    assert load_snapshot(path, TOPICS) is None  # none yet
    save_snapshot(path, sample())
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    assert load_snapshot(path, TOPICS) is None
    path.write_bytes(orjson.dumps({**orjson.loads(whole), "version": 0}))
    assert load_snapshot(path, TOPICS) is None
    path.write_bytes(whole)
    assert load_snapshot(path, {Stream.CONSENT: "other.consent", Stream.REQUESTS: topics.REQUESTS}) is None


def test_fingerprints_tell_records_apart_and_quote_nothing() -> None:
    print_ = fingerprint(1, None, b"+14155550100")
    assert print_ != fingerprint(1, b"", b"+14155550100")
    assert print_ != fingerprint(2, None, b"+14155550100")
    assert "4155550100" not in print_
    assert snapshot_path(Path("/h"), "") == Path("/h/state/control-default.snapshot")
    assert snapshot_path(Path("/h"), "a/b.") == Path("/h/state/control-a_b..snapshot")


def test_a_version_1_snapshot_still_loads_to_the_same_state(tmp_path: Path) -> None:
    """Version 1 kept the histories as lists; a worker restarting on one after an upgrade reads
    it into the packed form (the positions stand: the state is the one the records make)."""
    want = sample()
    doc = orjson.loads(want.to_bytes())
    doc["version"] = 1
    doc["accounts"] = {"acct-1": [[[5, "analytics", False]], [[9, "erase", "r-1"]]]}  # as version 1 wrote it
    path = tmp_path / "control.snapshot"
    path.write_bytes(orjson.dumps(doc))
    assert load_snapshot(path, TOPICS) == want


def test_a_state_that_is_not_whole_entries_is_refused(tmp_path: Path) -> None:
    doc = orjson.loads(sample().to_bytes())
    doc["accounts"]["acct-1"] = doc["accounts"]["acct-1"][:-4]  # base64 of 15 bytes, not 18
    path = tmp_path / "control.snapshot"
    path.write_bytes(orjson.dumps(doc))
    assert load_snapshot(path, TOPICS) is None
