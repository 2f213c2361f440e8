"""Whose dead letters `dlq inspect` and `dlq replay` withhold: the lake's suppression list (pure,
files only)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline import codec, raw_records
from pipeline.carrier.generate import generate_traffic
from pipeline.errors import CliError
from pipeline.stream import withhold
from pipeline.stream.withhold import Suppression
from sinks.layout import VAULT, VAULT_REQUESTS

ERASED = Suppression(frozenset({"acc-1", "acc-" + "x" * 80}))
CALL = {"event_id": "e-1", "account_id": "acc-1", "duration_s": "12", "caller": "+491701234567"}


def _avro(account: str) -> bytes:
    body = account.encode()
    return b"\x00\x00\x00\x00\x01" + raw_records.write_long(len(body)) + body + b"\x02\x04rest"


@pytest.mark.parametrize(
    ("raw", "key", "held"),
    [
        (b"", b"acc-1", True),  # by the message key (carriers key by account)
        (b"{broken", b"acc-1\n", True),
        (orjson.dumps(CALL), None, True),  # one JSON event
        (orjson.dumps([{**CALL, "account_id": "acc-2"}, CALL]), None, True),  # a batch holding it
        (orjson.dumps({**CALL, "account_id": "acc-2"}) + b"\n" + orjson.dumps(CALL), None, True),  # lines
        (orjson.dumps({"device": {"owner": "acc-1"}}), None, True),  # anywhere in the JSON
        (orjson.dumps(CALL)[:-9], None, True),  # truncated JSON: the quoted id in the bytes
        (_avro("acc-1"), None, True),  # an Avro string
        (_avro("acc-" + "x" * 80), None, True),  # a two-byte Avro length
        (orjson.dumps({**CALL, "account_id": "acc-12"}), b"acc-12", False),  # another subject
        (orjson.dumps({**CALL, "account_id": "acc-12"})[:-5], None, False),
        (_avro("acc-12"), None, False),
        (b"acc-1", None, False),  # a bare mention: neither a JSON nor an Avro string
        (b"", None, False),
    ],
)
def test_holds(raw: bytes, key: bytes | None, held: bool) -> None:
    assert ERASED.holds(raw, key) is held


@pytest.mark.parametrize("batch", [1, 3])
def test_confluent_avro_of_the_subject_is_held_and_of_others_not(batch: int) -> None:
    calls = generate_traffic(3, 3, 1_767_225_600_000, 3_600_000, accounts=3).calls
    raw = codec.encode(calls, "CallEvent", "avro", batch)[0]
    assert Suppression(frozenset({calls[0]["account_id"]})).holds(raw, None)
    others = {c["account_id"] for c in calls}
    assert not Suppression(frozenset({a + "0" for a in others})).holds(raw, None)


def test_a_deflate_container_an_escaped_id_and_a_damaged_block_are_held_as_erasure_finds_them() -> None:
    calls = generate_traffic(4, 3, 1_767_225_600_000, 3_600_000, accounts=3).calls
    erased = Suppression(frozenset({calls[0]["account_id"]}))
    container = codec.encode_container(calls, "CallEvent")  # deflate: the id is not in the bytes
    assert calls[0]["account_id"].encode() not in container
    assert erased.holds(container, None)
    assert not Suppression(frozenset({"acc-nobody"})).holds(container, None)
    escaped = b'{"event_id": "e-9", "account_id": "jos\\u00e9.m\\u00fcller", "dur'  # truncated
    assert Suppression(frozenset({"jos\u00e9.m\u00fcller"})).holds(escaped, None)
    block = raw_records.parse_container(container).blocks[0]  # type: ignore[union-attr]
    at = len(container) - len(block.data) - 16
    damaged = container[:at] + b"\x07" + container[at + 1 :]  # deflate block type 3: reserved
    assert Suppression(frozenset({"acc-nobody"})).holds(damaged, None)  # cannot be told: withheld


def _lake(tmp_path: Path, docs: list[dict[str, object]]) -> Path:
    lake = tmp_path / "lake"
    folder = lake.joinpath(*VAULT_REQUESTS)
    folder.mkdir(parents=True)
    for i, doc in enumerate(docs):
        (folder / f"r-{i}.json").write_bytes(orjson.dumps(doc))
    return lake


def test_load_takes_every_erase_request_and_nothing_else(tmp_path: Path) -> None:
    lake = _lake(
        tmp_path,
        [
            {"request_id": "r-0", "account_id": "acc-1", "kind": "erase", "at": 1},
            {"request_id": "r-1", "account_id": "acc-2", "kind": "rectify", "at": 1},
            {"request_id": "op-erase-x", "account_id": "acc-3", "kind": "erase", "at": 1},
        ],
    )
    got = withhold.load(lake)
    assert got.accounts == {"acc-1", "acc-3"}
    assert "acc-" not in repr(got)  # a count, never an id


def test_a_lake_without_requests_withholds_nothing(tmp_path: Path) -> None:
    (tmp_path / "lake" / VAULT).mkdir(parents=True)
    assert withhold.load(tmp_path / "lake").accounts == frozenset()


@pytest.mark.parametrize("made", [False, True])
def test_no_lake_stops_the_command(tmp_path: Path, made: bool) -> None:
    if made:
        (tmp_path / "lake").mkdir()  # a folder, but no lake in it
    with pytest.raises(CliError, match=r"no lake at .*CALLPIPE_LAKE or --lake"):
        withhold.load(tmp_path / "lake")


def test_an_unreadable_intake_file_stops_the_command(tmp_path: Path) -> None:
    lake = _lake(tmp_path, [])
    (lake.joinpath(*VAULT_REQUESTS) / "bad.json").write_bytes(b"{torn")
    with pytest.raises(CliError, match="cannot tell whose"):
        withhold.load(lake)


def test_withheld_line() -> None:
    assert withhold.withheld_line(2) == "withheld: 2 dead letter(s) of erased subjects"
