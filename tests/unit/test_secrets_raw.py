"""Credentials leave a dead letter's raw bytes before anything keeps them, in every format
(`pipeline.secrets_raw`): Avro that decodes is written again without them, Avro that does not is
masked in place, and what can be neither is withheld (size and digest only), never kept as is."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from pipeline import codec
from pipeline.carrier import generate
from pipeline.policy import DEFAULT_SECRET_NAMES
from pipeline.raw_records import parse_container, read
from pipeline.reasons import Reason, Rejection, Stage, Withheld
from pipeline.secrets_raw import strip_secrets_raw, without_secrets
from pipeline.stream.dlq import Letter, export
from sinks.rejects import write_rejects

START = 1_767_225_600_000
SECRETS = {"password": "hunter2-SECRET", "userPin": "4321"}
CALLS = [
    dict(c, attributes={**SECRETS, "plan": "gold"}) for c in generate.generate_calls(7, 4, START, 86_400_000)
]
BIG = codec.Limits(max_message_bytes=1 << 30)


def _leaks(raw: bytes) -> bool:
    """A secret in the bytes, decompressed as far as they go, or in what they decode to."""
    found = read(raw)
    seen = [raw, *found.plain, orjson.dumps(found.records, default=str)]
    return any(v.encode() in part for v in SECRETS.values() for part in seen)


def _records(raw: bytes) -> list[dict[str, object]]:
    return codec.decode_value(raw, "CallEvent", limits=BIG).records


@pytest.mark.parametrize(
    "raw",
    [
        codec.encode_container(CALLS, "CallEvent"),
        codec.encode_container(CALLS, "CallEvent", codec="null"),
        codec.encode(CALLS[:1], "CallEvent", "avro")[0],
        codec.encode(CALLS, "CallEvent", "avro", batch_size=4)[0],
        codec.encode(CALLS[:1], "CallEvent", "avro")[0][5:],  # a bare body
    ],
    ids=["container-deflate", "container-null", "confluent", "confluent-batch", "bare"],
)
def test_avro_that_decodes_is_written_again_without_secrets(raw: bytes) -> None:
    out = strip_secrets_raw(raw, DEFAULT_SECRET_NAMES)
    assert out is not None and not _leaks(out)
    assert [r["attributes"] for r in _records(out)] == [{"plan": "gold"}] * len(_records(raw))


def test_avro_without_secrets_is_kept_byte_for_byte() -> None:
    plain = [dict(c, attributes={"plan": "gold"}) for c in CALLS]
    for raw in (codec.encode_container(plain, "CallEvent"), codec.encode(plain[:1], "CallEvent", "avro")[0]):
        assert strip_secrets_raw(raw, DEFAULT_SECRET_NAMES) == raw


@pytest.mark.parametrize(
    "raw",
    [
        codec.encode_container(CALLS, "CallEvent")[:-7],  # the review's truncated container
        codec.encode_container(CALLS, "CallEvent", codec="null")[:-7],
        codec.encode(CALLS[:1], "CallEvent", "avro")[0][:-3],  # a cut Confluent message
        codec.encode(CALLS[:1], "CallEvent", "avro")[0][5:-3],  # a cut bare body
    ],
    ids=["container-deflate-cut", "container-null-cut", "confluent-cut", "bare-cut"],
)
def test_avro_that_does_not_decode_is_masked_in_place(raw: bytes) -> None:
    assert _leaks(raw)
    out = strip_secrets_raw(raw, DEFAULT_SECRET_NAMES)
    assert out is not None and not _leaks(out)
    before = codec.decode_value(raw, "CallEvent", limits=BIG).rejections
    after = codec.decode_value(out, "CallEvent", limits=BIG).rejections
    assert [r.reason for r in after] == [r.reason for r in before]  # still the same dead letter
    if not raw.startswith(b"Obj\x01"):
        assert len(out) == len(raw)  # the framing of the rest untouched


def test_a_compressed_block_that_does_not_decompress_is_withheld() -> None:
    raw = codec.encode_container(CALLS, "CallEvent")
    block = parse_container(raw).blocks[0]  # type: ignore[union-attr]
    at = len(raw) - len(block.data) - 16
    damaged = raw[:at] + b"\x07" + raw[at + 1 :]  # deflate block type 3: reserved
    dead = Rejection(Reason.MALFORMED, Stage.DECODE, 2, 41, None, damaged, "attributes")
    kept = without_secrets(dead, DEFAULT_SECRET_NAMES)
    assert isinstance(kept, Withheld) and kept.raw == b""
    assert (kept.size, kept.sha256) == (len(damaged), hashlib.sha256(damaged).hexdigest())
    headers = dict(kept.headers("calls.raw"))
    assert headers["callpipe.withheld"] == b"secrets" and headers["callpipe.reason"] == b"malformed"
    assert (
        headers["callpipe.field"] == b"attributes" and headers["callpipe.size"] == str(len(damaged)).encode()
    )


def test_a_withheld_dead_letter_is_kept_as_a_stub_and_not_replayed(tmp_path: Path) -> None:
    stub = Withheld(Reason.MALFORMED, Stage.DECODE, -1, 0, None, b"", size=3586, sha256="ab" * 32)
    path = write_rejects(tmp_path, "ingest-x", 0, 0, [stub])
    entry = orjson.loads(path.read_bytes())
    assert entry["raw_b64"] == "" and entry["withheld"] is True and entry["size"] == 3586
    letter = Letter(0, 9, {k: v.decode() for k, v in stub.headers("calls.raw")}, b"", None)
    export([letter], tmp_path / "out")
    assert orjson.loads((tmp_path / "out" / "0-9.json").read_bytes())["withheld"] == "secrets"
    assert not (tmp_path / "out" / "0-9.value").exists()  # replay lists it as missing, sends nothing


def test_json_is_still_stripped_and_plain_text_kept() -> None:
    raw = orjson.dumps({"attributes": {"password": "hunter2-SECRET", "plan": "gold"}})
    assert orjson.loads(strip_secrets_raw(raw, DEFAULT_SECRET_NAMES) or b"") == {
        "attributes": {"plan": "gold"}
    }
    assert strip_secrets_raw(b"no secret here", DEFAULT_SECRET_NAMES) == b"no secret here"
