"""Whose a dead letter is (`pipeline.raw_records.holds_subject`), in every form a dead letter's
bytes take: JSON and Avro string forms without partial ids, escaped JSON, ids with quotes and
backslashes, Avro container files compressed whole or with a damaged tail; and what cannot be
told is said so (None), never passed as "not the subject's"."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import orjson
import pytest

from pipeline import codec
from pipeline.carrier import generate
from pipeline.raw_records import Subjects, holds_subject, newest_event_ms, parse_container
from sinks import rejects

START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CALLS = generate.generate_calls(5, 6, START, 86_400_000)


def _calls(account: str) -> list[dict[str, object]]:
    return [dict(c, account_id=account) for c in CALLS]


CASES = [
    (b'{"account_id": "A1", "x": 1}', "A1", True),
    (b'{"account_id": "A10"}', "A1", False),
    (b'{"note": "call A1 later"}', "A1", False),
    (b"\x04A1\x02", "A1", True),  # Avro: zigzag length 2 -> 0x04, then the bytes
    (b"\x06A10", "A1", False),
    (b"\x80\x01" + b"x" * 64, "x" * 64, True),  # a length needing two varint bytes
    (b"not a record at all", "A1", False),
    # a cut JSON line, the id written by Python's json.dumps (non-ASCII as \u escapes)
    (b'{"event_id": "e-101", "account_id": "jos\\u00e9.m\\u00fcller", "caller": "+1', "josé.müller", True),
    (b'{"event_id": "e-101", "account_id": "jos\\u00C9", "cal', "josÉ", True),  # uppercase hex
    (b'{"event_id": "e-101", "account_id": "jos\\u00e9.m\\u00fcller", "caller": "+1', "josé", False),
    # ids holding a quote or a backslash, as orjson escapes them
    (orjson.dumps({"account_id": 'acc-"quoted"', "duration_s": -1})[:-4], 'acc-"quoted"', True),
    (orjson.dumps({"account_id": "acc\\back", "duration_s": -1})[:-4], "acc\\back", True),
    (orjson.dumps({"account_id": "acc\\back", "duration_s": -1})[:-4], "acc", False),
    (b'{"account_id": "a\\/b", "x":', "a/b", True),  # the escaped slash some writers emit
]


@pytest.mark.parametrize(("raw", "account", "expected"), CASES)
def test_holds_subject(raw: bytes, account: str, expected: bool) -> None:
    assert holds_subject(raw, account) is expected


def test_a_deflate_container_kept_whole_is_attributed_by_its_records() -> None:
    raw = codec.encode_container(_calls("acc-avro"), "CallEvent")  # deflate: the id is compressed
    assert b"acc-avro" not in raw
    assert holds_subject(raw, "acc-avro") is True
    assert holds_subject(raw, "acc-other") is False


def test_a_deflate_container_with_a_cut_tail_is_attributed() -> None:
    raw = codec.encode_container(_calls("acc-avro"), "CallEvent")[:-30]
    assert codec.decode_value(raw, "CallEvent").rejections  # a dead letter indeed
    assert holds_subject(raw, "acc-avro") is True
    assert holds_subject(raw, "acc-other") is False
    assert newest_event_ms(raw) is not None


def _damaged_block(raw: bytes) -> bytes:
    block = parse_container(raw).blocks[0]  # type: ignore[union-attr]
    at = len(raw) - len(block.data) - 16  # the first byte of the compressed data, framing intact
    return raw[:at] + b"\x07" + raw[at + 1 :]  # deflate block type 3: reserved, never decompresses


def test_a_damaged_compressed_block_is_unattributed_not_passed() -> None:
    raw = _damaged_block(codec.encode_container(_calls("acc-avro"), "CallEvent"))
    assert holds_subject(raw, "acc-avro") is None
    assert holds_subject(raw, "acc-other") is None


def test_find_counts_what_cannot_be_told(tmp_path: Path) -> None:
    mine = codec.encode_container(_calls("acc-avro"), "CallEvent")
    damaged = _damaged_block(mine)
    lines = [
        {
            "reason": "malformed",
            "stage": "decode",
            "offset": i,
            "index": None,
            "raw_b64": base64.b64encode(r).decode(),
        }
        for i, r in enumerate([mine, damaged, json.dumps({"account_id": "other"}).encode()])
    ]
    folder = tmp_path / rejects.REJECTS_DIR / "ingest-x"
    folder.mkdir(parents=True)
    (folder / "000000000000-000000000002.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    found = rejects.find(tmp_path, lambda raw: holds_subject(raw, "acc-avro"))
    assert found.count == 1 and found.hits[0].matching == [0]
    assert found.unattributed == 1


def _many_forms() -> list[bytes]:
    """Every raw of CASES, and containers whole, cut, damaged and uncompressed, batches of two."""
    whole = codec.encode_container(_calls("acc-avro"), "CallEvent")
    two = [dict(c, account_id=a) for c, a in zip(CALLS, ["A1", "acc-avro"] * 3, strict=True)]
    return [
        *(raw for raw, _account, _expected in CASES),
        whole,
        whole[:-30],
        _damaged_block(whole),
        codec.encode_container(_calls("a/b"), "CallEvent", codec="null"),
        codec.encode_container(two, "CallEvent"),
        b"\n".join(codec.to_json(c, "CallEvent") for c in two),
        *codec.encode(two, "CallEvent", "avro", batch_size=3),
        b"",
    ]


def test_many_subjects_at_once_judge_each_dead_letter_as_each_alone() -> None:
    """`Subjects` (one read of a dead letter for every erased subject of a pass) says what
    `holds_subject` says for each id, in every form: True, None (cannot tell), or nothing (False)."""
    others = {"acc-avro", "acc-other", "josé", "A", "A10", "acc", "", str(CALLS[0]["event_id"])}
    others |= {str(CALLS[1]["caller"]), str(CALLS[2]["callee"]), *(f"acc-{i:04d}" for i in range(300))}
    ids = sorted({account for _raw, account, _expected in CASES} | others)
    subjects = Subjects(ids)
    for raw in _many_forms():
        alone = {a: v for a in ids if (v := holds_subject(raw, a)) is not False}
        assert subjects.verdicts(raw)[1] == alone, raw[:40]


def test_find_each_is_find_for_each_subject_reading_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raws = _many_forms()
    for n, chunk in enumerate((raws[:7], raws[7:14], raws[14:])):
        folder = tmp_path / rejects.REJECTS_DIR / f"stream-{n}"
        folder.mkdir(parents=True)
        lines = [
            orjson.dumps({"offset": i, "raw_b64": base64.b64encode(r).decode()}) for i, r in enumerate(chunk)
        ]
        (folder / "000000000000-000000000009.jsonl").write_bytes(b"\n".join([*lines, b"{not json"]) + b"\n")
    ids = ["A1", "acc-avro", "a/b", "josé.müller", "acc-other", "nobody"]
    alone = {a: rejects.find(tmp_path, lambda raw, a=a: holds_subject(raw, a)) for a in ids}
    read_bytes, reads = Path.read_bytes, []
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or read_bytes(self))
    subjects = Subjects(ids)
    each = rejects.find_each(tmp_path, lambda raw: subjects.verdicts(raw)[1], ids)
    assert sorted(reads) == rejects.files_in(tmp_path)  # each file once, for all of them
    assert each == alone
    assert each["acc-avro"].count and each["acc-avro"].unattributed == 3 + 1  # 3 unreadable, 1 damaged
