"""Every file in tests/bad_inputs/<reason>/ gives exactly that reason code, and nothing escapes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline.codec import Limits, decode_value
from pipeline.reasons import Reason, Stage

FOLDER = Path(__file__).resolve().parent.parent / "bad_inputs"
CASES = sorted(p for p in FOLDER.rglob("*") if p.is_file() and p.suffix not in (".py", ".md"))
# Small limits, so that oversized cases stay small files: 4 KiB per event, 16 KiB per message.
LIMITS = Limits(max_message_bytes=16 * 1024, max_event_bytes=4 * 1024)


def test_every_decode_reason_has_a_case() -> None:
    decode_reasons = {"malformed", "unknown_schema_id", "wrong_type", "missing_field", "unknown_enum"}
    decode_reasons |= {"empty", "too_large", "bad_id"}
    assert {p.parent.name for p in CASES} == decode_reasons


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_bad_input_gives_its_reason(path: Path) -> None:
    expected = Reason(path.parent.name)
    value = path.read_bytes()
    out = decode_value(value, "CallEvent", partition=0, offset=7, limits=LIMITS)
    assert out.rejections, "a known-bad input was accepted"
    assert {r.reason for r in out.rejections} == {expected}
    assert all(r.stage is Stage.DECODE and r.offset == 7 for r in out.rejections)
    if path.suffix == ".jsonl":  # only the bad line goes; the good ones stay
        assert out.records and all(r.index is not None and r.raw in value for r in out.rejections)
    elif path.stem.endswith("_in_batch"):  # only the bad event of the batch goes, with its index,
        assert len(out.rejections) == 1 and out.records  # alone, as JSON, not the whole message
        assert all(r.index is not None and type(orjson.loads(r.raw)) is dict for r in out.rejections)
    elif value.startswith(b"[") and out.rejections[0].index is not None:
        # a JSON array of a few bad elements is rejected element by element, each alone
        items = orjson.loads(value)
        assert out.records == [] and len(out.rejections) == len(items)
        assert all(orjson.loads(r.raw) == items[r.index] for r in out.rejections)
    else:
        assert out.records == [] and all(r.raw == value for r in out.rejections)
        assert [r.index for r in out.rejections] == [None]
