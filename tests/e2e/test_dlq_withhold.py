"""Dead letters of an erased subject, on the real broker: calls.dlq cannot be rewritten, so after
`jobs erase --account A` the operator's tools withhold them. `dlq inspect` neither prints nor
exports A's dead letters (matched by the sealed message key, or by the id in the value: JSON,
truncated JSON) and counts them; `dlq replay` of a folder exported before the erasure produces
none of them again. Carrier bytes made of terminal escapes are shown escaped, an empty message
without Python's None, and without a lake both commands stop."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import orjson
import pytest

from pipeline import codec
from pipeline.carrier.generate import generate_traffic
from schemas import topics
from sinks.stats import read_stats
from tests.support.streamkit import (
    as_operator,
    consume_all,
    make_topics,
    publish,
    start_worker,
    stop,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
PARTITIONS = 2
HOUR = 3_600_000
HOSTILE = b"\x1b[2J\x1b]0;pwned\x07"


def test_an_erased_subjects_dead_letters_are_withheld_from_inspect_and_replay(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    prefix = topic_prefix
    make_topics(kafka_bootstrap, prefix, PARTITIONS)
    calls = generate_traffic(31, 40, int(time.time() * 1000) - 3 * HOUR, HOUR, accounts=8).calls
    gone = calls[0]
    kept = next(c for c in calls if c["account_id"] != gone["account_id"])
    a, b = gone["account_id"], kept["account_id"]

    def wrong_type(call: dict[str, object]) -> bytes:
        return codec.to_json({**call, "duration_s": str(call["duration_s"])}, "CallEvent")

    messages: list[tuple[bytes | None, bytes, int]] = [
        (a.encode(), wrong_type(gone), 0),  # A's, by its key (and value)
        (None, codec.to_json(gone, "CallEvent")[:-7], 1),  # A's, truncated JSON, no key
        (b"acc-nobody", b"[]", 0),  # an empty batch: nobody's
        (b.encode(), wrong_type(kept), 1),  # B's: shown
        (None, HOSTILE, 0),  # terminal escapes
        (None, b"", 1),  # an empty message
    ]
    env = worker_env(tmp_path, kafka_bootstrap)
    lake = tmp_path / "lake"
    proc = start_worker(prefix, lake, env, tmp_path / "worker.log")
    try:
        publish(kafka_bootstrap, prefix + topics.CALLS, messages)
        deadline = time.monotonic() + 180
        while read_stats(lake).messages < len(messages):
            assert time.monotonic() < deadline and proc.poll() is None, "the worker did not take them all"
            time.sleep(0.5)
    finally:
        stop(proc)
    dead = read_stats(lake).dead
    assert dead == len(messages)
    env = {**env, "CALLPIPE_HOME": str(tmp_path / "home"), "CALLPIPE_LAKE": str(lake)}

    before = as_operator(env, "dlq", "inspect", "--prefix", prefix)
    assert before.returncode == 0, before.stderr
    assert (
        gone["caller"] in before.stdout and "withheld: 0 dead letter(s) of erased subjects" in before.stdout
    )
    out = tmp_path / "repair"
    exported = as_operator(env, "dlq", "inspect", "--prefix", prefix, "--out", str(out))
    assert exported.returncode == 0 and f"exported {dead} dead letters" in exported.stdout, exported.stderr

    erased = as_operator(env, "jobs", "erase", "--account", a, "--no-topic")
    assert erased.returncode == 0, erased.stderr
    assert "calls.dlq: not counted" in erased.stdout and a not in erased.stdout

    shown = as_operator(env, "dlq", "inspect", "--prefix", prefix)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert a not in text and gone["caller"] not in text and gone["event_id"] not in text
    assert b in text and kept["caller"] in text
    assert "withheld: 2 dead letter(s) of erased subjects" in text and f"{dead - 2} dead letters" in text
    assert "\x1b" not in text and "\x07" not in text and "escaped:\\x1b[2J\\x1b]0;pwned\\x07" in text
    assert "None" not in text and "format=empty size=0" in text
    assert "field=duration_s" in text  # B's wrong type names its field

    again = tmp_path / "again"
    exported = as_operator(env, "dlq", "inspect", "--prefix", prefix, "--out", str(again))
    assert exported.returncode == 0 and f"exported {dead - 2} dead letters" in exported.stdout
    assert "withheld: 2" in exported.stdout
    assert not any(a.encode() in p.read_bytes() for p in again.iterdir())

    # the folder exported before the erasure: A's two are withheld, the others replayed once
    replayed = as_operator(env, "dlq", "replay", str(out), "--prefix", prefix)
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {dead - 2} dead letters" in replayed.stdout
    assert "withheld: 2 dead letter(s) of erased subjects" in replayed.stdout
    ledger = {r.key.decode() for r in consume_all(kafka_bootstrap, prefix + topics.REPLAYED)}
    assert len(ledger) == dead - 2
    theirs = set()
    for doc_path in out.glob("*.json"):
        doc = orjson.loads(doc_path.read_bytes())
        key = base64.b64decode(doc["key_b64"]) if doc["key_b64"] else b""
        if a.encode() in key + (out / doc["value_file"]).read_bytes():
            theirs.add(f"{prefix}{topics.DLQ}:{doc['dlq']['partition']}:{doc['dlq']['offset']}")
    assert len(theirs) == 2 and not theirs & ledger

    # without a lake: nothing opened, nothing replayed
    nowhere = {**env, "CALLPIPE_LAKE": str(tmp_path / "nowhere")}
    for args in (("inspect", "--prefix", prefix), ("replay", str(out), "--prefix", prefix)):
        refused = as_operator(nowhere, "dlq", *args)
        assert refused.returncode == 2 and "no lake at" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr and refused.stdout == ""
