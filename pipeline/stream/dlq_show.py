"""How `callpipe dlq inspect` prints a dead letter on the operator's terminal, safely.

A dead letter's bytes are the carrier's: whatever it sent. Printed raw, a value made of terminal
escapes (`ESC [ 2 J` clears the screen, `ESC ] 0 ; ... BEL` sets the window title, OSC 52 writes
the clipboard, `U+202E` reverses the text after it) would act on the operator's terminal instead
of being shown. So nothing a carrier controls reaches the terminal as a control character:

    printable UTF-8      (ordinary JSON, one event per message) printed as it is
    anything else that   printed after `escaped:`, every character `str.isprintable` refuses
    decodes as UTF-8     (C0 and C1 controls, DEL, newlines and tabs, format characters such as
                         bidi overrides and zero-width spaces, line and paragraph separators,
                         private-use and unassigned code points, spaces other than ' ') as a
                         Python escape (`\\n`, `\\x1b`, `\\u202e`), and a backslash as `\\\\`, so
                         what is shown reads back to the exact bytes
    not UTF-8            (Avro bodies, mostly) printed as `base64:` of the bytes
    no bytes             `(no bytes)`: an empty message, or one kept whole in the lake

The triage line escapes its header texts the same way (headers come from the worker, but a
terminal should not have to trust them), and says `format=empty size=0` of a dead letter without
bytes rather than leaking Python's None.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

from pipeline.sealed import sniff_format

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """`text` with every character a terminal could act on (and every backslash) escaped."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(ch if ch.isprintable() and ch != "\\" else _escape(ch) for ch in text)


def shown(raw: bytes) -> str:
    """A dead letter's original bytes as one line a terminal only displays (see the module)."""
    if not raw:
        return "(no bytes)"
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode()
    if text.isprintable():
        return text
    return "escaped:" + printable(text)


def _text(value: Any) -> str:
    return printable(str(value))


def triage(d: Mapping[str, Any], raw: bytes) -> str:
    """The line above a dead letter's bytes: where it is, why, where it came from, what it was.
    `d` is `Letter.describe()`; `raw` the opened bytes (what a missing header is computed from)."""
    src = d["source"]
    parts = [
        f"dlq {d['dlq']['partition']}:{d['dlq']['offset']}",
        f"reason={_text(d['reason'] or 'unknown')}",
        f"stage={_text(d['stage'] or 'unknown')}",
    ]
    if d.get("field"):
        parts.append(f"field={_text(d['field'])}")
    where = f"source={_text(src['topic'] or 'unknown')} {src['partition']}:{src['offset']}"
    parts.append(where + ("" if src["index"] is None else f" index={src['index']}"))
    kept = d.get("kept")
    fmt = d["format"] or (sniff_format(raw) if raw else "kept" if kept else "empty")
    parts.append(f"format={_text(fmt)} size={d['size']}")
    digest = d["sha256"] or (hashlib.sha256(raw).hexdigest() if raw else None)
    if digest:
        parts.append(f"sha256={_text(digest)}")
    if kept:
        parts.append(f"kept={_text(kept)}")
    return " ".join(parts)
