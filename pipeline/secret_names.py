"""Secret-named attributes: which keys of a call's maps (attributes) name a credential, and taking
them out with their values, from a record (`strip_secrets`, before anything else, so a password
a carrier put in `attributes` reaches neither the lake nor calls.dlq) or from raw JSON text
(`strip_secrets_json`, for what is kept of rejected input). A key is secret when one of its
words (split at case changes, digits and separators) is a policy secret name.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import orjson

import schemas

RECORD = "CallEvent"


_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


@lru_cache(maxsize=8192)
def _is_secret(key: str, names: frozenset[str]) -> bool:
    parts = [p.lower() for p in _PART.findall(key)]
    if not parts:
        return False
    candidates = set(parts)
    candidates.update(a + b for a, b in itertools.pairwise(parts))
    candidates.update(a + "_" + b for a, b in itertools.pairwise(parts))
    for part in candidates:
        if part in names or part.rstrip("s") in names:
            return True
    # A long name hidden inside a glued part: "userpassword", "clientsecret".
    return any(len(name) >= 6 and name in part for part in parts for name in names)


_LOWERED: dict[Any, frozenset[str]] = {}


def _lowered(names: Iterable[str]) -> frozenset[str]:
    """The secret names lowered, remembered by the policy's own tuple: a batch of one event
    paid ~1.5 us lowering the same thirteen names. Names, never values: safe to keep."""
    try:
        found = _LOWERED.get(names)
    except TypeError:  # an unhashable iterable (a list)
        return frozenset(n.lower() for n in names)
    if found is None:
        found = frozenset(n.lower() for n in names)
        if len(_LOWERED) >= 64:
            _LOWERED.clear()
        _LOWERED[names] = found
    return found


def is_secret_name(key: str, names: Iterable[str]) -> bool:
    """True if the attribute key names a secret: a name part ("user_password", "PIN",
    "authToken", "x-api-key"), compared case-insensitively."""
    return _is_secret(key, frozenset(n.lower() for n in names))


@lru_cache(maxsize=1)
def _map_fields() -> tuple[str, ...]:
    out = []
    for f in schemas.raw(RECORD)["fields"]:
        branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
        if any(isinstance(b, dict) and b.get("type") == "map" for b in branches):
            out.append(f["name"])
    return tuple(out)


def strip_secrets(record: Any, names: Iterable[str]) -> Any:
    """A copy of `record` without secret-named keys in its map fields (attributes). Anything that
    is not a record is returned as it is, so the dead-letter path can call this on any input."""
    if not isinstance(record, Mapping):
        return record
    return dict(_strip(record, frozenset(n.lower() for n in names))[0])


def _strip(record: Mapping[str, Any], names: frozenset[str]) -> tuple[Mapping[str, Any], int]:
    """`record` itself when no map field holds a secret-named key (nothing here changes it),
    else a copy with those keys removed; and how many were."""
    out: dict[str, Any] | None = None
    stripped = 0
    for name in _map_fields():
        value = record.get(name)
        if value is None:  # most calls carry no map, and None is none: no abc isinstance
            continue
        if (type(value) is dict or isinstance(value, Mapping)) and _holds_secret(value, names):
            kept = {k: v for k, v in value.items() if not (isinstance(k, str) and _is_secret(k, names))}
            if len(kept) != len(value):
                if out is None:
                    out = dict(record)
                out[name] = kept
                stripped += len(value) - len(kept)
    return (record if out is None else out), stripped


_VERDICTS: dict[frozenset[str], dict[Any, bool]] = {}
# per set of names, the keys judged no secret: a map whose keys are all in it holds none, which
# `dict.keys() <= set` tells in C (no Python step per key); cleared with the verdicts
_HARMLESS: dict[frozenset[str], set[Any]] = {}
_MAX_VERDICTS = 8192


def _holds_secret(value: Mapping[Any, Any], names: frozenset[str]) -> bool:
    """Whether any key of the map names a secret (what `_strip` removes), from a verdict per
    key remembered by the key (attribute names repeat: a dict look-up per key, no copy of a
    map that holds none, which is nearly every map)."""
    return any(secret_key(k, names) for k in value)


def secret_key(key: Any, names: frozenset[str]) -> bool:
    """Whether a map key names a secret (what `_strip` removes), remembered per key; a key
    judged harmless joins `_harmless(names)`, the set a map's keys are checked against at once."""
    verdicts = _VERDICTS.get(names)
    if verdicts is None:
        verdicts = _VERDICTS.setdefault(names, {})
    verdict = verdicts.get(key)
    if verdict is None:
        harmless = _harmless(names)
        verdict = isinstance(key, str) and _is_secret(key, names)
        if len(verdicts) >= _MAX_VERDICTS:
            verdicts.clear()
            harmless.clear()
        verdicts[key] = verdict
        if not verdict:
            harmless.add(key)
    return verdict


def _harmless(names: frozenset[str]) -> set[Any]:
    found = _HARMLESS.get(names)
    return found if found is not None else _HARMLESS.setdefault(names, set())


@lru_cache(maxsize=1)
def _field_names() -> frozenset[str]:
    return frozenset(p.path.rsplit(".", 1)[-1] for p in schemas.pii_fields(RECORD))


def _deep_strip(node: Any, names: frozenset[str]) -> Any:
    """Drop secret-named keys at any depth (a raw message may nest attributes, e.g. Avro JSON's
    {"map": {...}}, or carry unknown fields); the schema's own field names are kept."""
    if isinstance(node, dict):
        return {
            k: _deep_strip(v, names)
            for k, v in node.items()
            if k in _field_names() or not _is_secret(k, names)
        }
    if isinstance(node, list):
        return [_deep_strip(v, names) for v in node]
    return node


_JSON_PAIR = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:\s*("(?:[^"\\]|\\.)*"?|[^,{}\[\]\s"]+)')


def strip_secrets_json(raw: bytes, names: Iterable[str]) -> bytes:
    """Raw JSON bytes (one event, a list of them, anything) without secret-named keys at any
    depth. Bytes that do not decode as JSON get every `"secret-name": value` pair's value masked
    as "***" instead; bytes that are not text (Avro) are returned unchanged for the codec."""
    frozen = frozenset(n.lower() for n in names)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _mask_pairs(raw, frozen)
    if not isinstance(doc, dict | list):
        return raw
    return orjson.dumps(_deep_strip(doc, frozen))


def _mask_pairs(raw: bytes, names: frozenset[str]) -> bytes:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw

    def mask(m: re.Match[bytes]) -> bytes:
        key = m.group(1).decode("utf-8", "replace")
        if _is_secret(key, names):
            return m.group(0)[: m.start(2) - m.start(0)] + b'"***"'
        return m.group(0)

    return _JSON_PAIR.sub(mask, raw)
