"""What `callpipe dlq inspect` prints of carrier bytes: nothing a terminal acts on (pure)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from pipeline.stream.dlq_show import printable, shown, triage

HOSTILE = [
    b"\x1b[2J\x1b]0;pwned\x07",  # clear screen, set title
    b"\x1b]52;c;cHduZWQ=\x07",  # OSC 52: write the clipboard
    '{"caller": "\u202e4321"}'.encode(),  # bidi override
    "a\u200bb\u2028c\u2029d\u2066e\ufeff".encode(),  # zero width, line/para separators, isolate, BOM
    "\u009b2J".encode(),  # C1 CSI
    b"x\x7fy",  # DEL
    b"\x00\x02acc-1\x00",  # an Avro body that happens to be UTF-8
    b'{"a": 1}\n{"a": 2}\r\n',  # JSON lines: a newline could forge a line of the listing
]


@pytest.mark.parametrize("raw", HOSTILE)
def test_no_control_character_reaches_the_terminal(raw: bytes) -> None:
    out = shown(raw)
    assert out.isprintable(), out
    assert out.startswith("escaped:")


@pytest.mark.parametrize("raw", [*HOSTILE, b"plain \\ back\\slash", "caf\u00e9 \u4e2d".encode()])
def test_escaped_text_reads_back_to_the_exact_bytes(raw: bytes) -> None:
    out = shown(raw)
    if out.startswith("escaped:"):
        text = out.removeprefix("escaped:")
        assert text.encode("latin-1", "backslashreplace").decode("unicode_escape").encode() == raw
    else:
        assert out.encode() == raw


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (b'{"account_id": "acc-1", "duration_s": "12"}', '{"account_id": "acc-1", "duration_s": "12"}'),
        (b'{"note": "a \\"quoted\\" word"}', '{"note": "a \\"quoted\\" word"}'),  # ordinary JSON as is
        ('{"name": "Jos\u00e9 \u4e2d"}'.encode(), '{"name": "Jos\u00e9 \u4e2d"}'),
        (b"\x1b[2J", "escaped:\\x1b[2J"),
        (b"a\\b\x00", "escaped:a\\\\b\\x00"),
        ("\u202e".encode(), "escaped:\\u202e"),
        (b"", "(no bytes)"),
        (b"\xff\xfe\x00", "base64:" + base64.b64encode(b"\xff\xfe\x00").decode()),
    ],
)
def test_shown(raw: bytes, want: str) -> None:
    assert shown(raw) == want


def test_printable_leaves_printable_text_alone() -> None:
    assert printable("wrong_type") == "wrong_type"
    assert printable("calls\x1b[0m") == "calls\\x1b[0m"


def _describe(**over: object) -> dict[str, object]:
    d: dict[str, object] = {
        "dlq": {"partition": 0, "offset": 7},
        "reason": "empty",
        "stage": "decode",
        "field": None,
        "source": {"topic": "calls.raw", "partition": 1, "offset": 42, "index": None},
        "format": None,
        "size": 0,
        "sha256": None,
        "kept": None,
    }
    d.update(over)
    return d


def test_an_empty_dead_letter_says_so_instead_of_none() -> None:
    line = triage(_describe(), b"")
    assert "None" not in line
    assert line == "dlq 0:7 reason=empty stage=decode source=calls.raw 1:42 format=empty size=0"


def test_a_kept_stub_and_a_field_and_hostile_headers() -> None:
    kept = triage(_describe(reason="too_large", size=99, sha256="ab" * 32, kept="_rejects"), b"")
    assert "format=kept size=99 sha256=" + "ab" * 32 + " kept=_rejects" in kept and "None" not in kept
    raw = b'{"duration_s": "1"}'
    line = triage(_describe(reason="wrong_type", field="duration_s", size=len(raw), stage="\x1b[2J"), raw)
    assert "field=duration_s" in line and "stage=\\x1b[2J" in line and line.isprintable()
    assert f"format=json size={len(raw)} sha256={hashlib.sha256(raw).hexdigest()}" in line
