"""Validation of the policy TOML, with errors that name the key and its line.

The file (every table and key optional; what is left out keeps its default):

    [retention.vault]        days = 90      # whole rows, per zone
    [retention.analytics]    days = 400
    [retention.aggregates]   days = 3650    # leave out: kept until removed by hand
    [retention.recording]    days = 30      # recording_uri, inside live rows
    [retention.transcript]   days = 30      # transcript, inside live rows
    [retention.outbox]       days = 30      # _outbox/ but breach lists; exports from their fulfilment
    [aggregates]             k = 5          # every published group covers at least k subjects
    [aggregates.noise]       enabled = true, epsilon = 1.0   # noise on the published values
    [consent.defaults]       recording = false, transcription = false, analytics = true
    [secrets]                attribute_names = ["password", "pin", ...]
    [pseudonymization]       key_file = "/etc/callpipe/key" | key_env = "CALLPIPE_KEY_HEX"
                             key_version = "v1"
    [requests]               days = 30, warn_days = 7   # deadline of a data-subject request
    [requests.erase]         days = 30      # per kind: erase, access, rectify, restrict, ..., withdraw

Unknown tables and keys are errors (a misspelt `dayz` must not silently keep the default), and
so are wrong types and values out of range. Every problem found is reported, one line each:
`policy.toml:7: retention.vault.days: must be an integer from 1 to 36500 (got string)`.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.consent import REQUEST_KINDS, WITHDRAW
from pipeline.policy import (
    DEFAULT_POLICY,
    DEFAULT_SECRET_NAMES,
    AggregateNoise,
    ConsentDefaults,
    KeySource,
    Policy,
    PolicyError,
    RequestDeadlines,
    Retention,
)

MAX_DAYS = 36_500  # a hundred years: anything longer is a typo
MAX_K = 10_000
MIN_EPSILON, MAX_EPSILON = 0.01, 10.0  # below: noise that drowns every group; above: no privacy to speak of
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KEY_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
ATTRIBUTE_NAME = re.compile(r"^[^\s]{1,64}$")
DEADLINE_KINDS = (*REQUEST_KINDS, WITHDRAW)  # the request ledger's kinds: each may have its own deadline

Check = Callable[[Any], str | None]  # returns what is wrong, or None


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _days(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer from 1 to {MAX_DAYS} (got {_type_name(value)})"
    if not 1 <= value <= MAX_DAYS:
        return f"must be an integer from 1 to {MAX_DAYS} (got {value})"
    return None


def _k(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer from 2 to {MAX_K} (got {_type_name(value)})"
    if not 2 <= value <= MAX_K:
        return f"must be an integer from 2 to {MAX_K} (got {value}; k = 1 publishes single subjects)"
    return None


def _epsilon(value: Any) -> str | None:
    wrong = f"must be a number from {MIN_EPSILON} to {MAX_EPSILON:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{wrong} (got {_type_name(value)})"
    if not MIN_EPSILON <= value <= MAX_EPSILON:
        return f"{wrong} (got {value}; to publish exact values, set enabled = false)"
    return None


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false (got {_type_name(value)})"


def _names(value: Any) -> str | None:
    if not isinstance(value, list):
        return f"must be an array of strings (got {_type_name(value)})"
    if not value:
        return "must name at least one attribute (an empty list would let credentials through)"
    for i, item in enumerate(value):
        if not isinstance(item, str):
            return f"item {i + 1} must be a string (got {_type_name(item)})"
        if not ATTRIBUTE_NAME.match(item):
            return f"item {i + 1} must be 1 to 64 characters without spaces"
    return None


def _path(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"must be a non-empty string, a file path (got {_type_name(value)})"
    return None


def _env(value: Any) -> str | None:
    if not isinstance(value, str) or not ENV_NAME.match(value):
        return "must be the name of an environment variable (letters, digits, _)"
    return None


def _version(value: Any) -> str | None:
    if not isinstance(value, str) or not KEY_VERSION.match(value):
        return 'must be a short version label such as "v1" (letters, digits, . _ -)'
    return None


# The shape of the file: a table maps names to sub-tables (dict) or to value checks.
SHAPE: dict[str, Any] = {
    "retention": {
        "vault": {"days": _days},
        "analytics": {"days": _days},
        "aggregates": {"days": _days},
        "recording": {"days": _days},
        "transcript": {"days": _days},
        "outbox": {"days": _days},
    },
    "aggregates": {"k": _k, "noise": {"enabled": _bool, "epsilon": _epsilon}},
    "consent": {"defaults": {"recording": _bool, "transcription": _bool, "analytics": _bool}},
    "secrets": {"attribute_names": _names},
    "pseudonymization": {"key_file": _path, "key_env": _env, "key_version": _version},
    "requests": {"days": _days, "warn_days": _days, **{kind: {"days": _days} for kind in DEADLINE_KINDS}},
}

_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]]+?)\s*\]\]?\s*(#.*)?$")
_ASSIGN = re.compile(
    r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*="
)
_INLINE_KEY = re.compile(r"([A-Za-z0-9_-]+)\s*=")


def _dotted(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in text.split("."))


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line where each table and key is written (tomllib does not say). Inline tables map
    their keys to the line of the table; the first occurrence wins."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            table = _dotted(header.group(1))
            for i in range(1, len(table) + 1):
                lines.setdefault(table[:i], number)
            continue
        assign = _ASSIGN.match(line)
        if not assign:
            continue
        path = table + _dotted(assign.group(1))
        for i in range(len(table) + 1, len(path) + 1):
            lines.setdefault(path[:i], number)
        rest = line[assign.end() :].lstrip()
        if rest.startswith("{"):
            for inner in _INLINE_KEY.findall(rest):
                lines.setdefault((*path, inner), number)
    return lines


def _walk(
    doc: dict[str, Any], shape: dict[str, Any], prefix: tuple[str, ...]
) -> list[tuple[tuple[str, ...], str]]:
    problems: list[tuple[tuple[str, ...], str]] = []
    for name, value in doc.items():
        path = (*prefix, name)
        rule = shape.get(name)
        if rule is None:
            close = difflib.get_close_matches(name, list(shape), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(sorted(shape))})"
            problems.append((path, f"unknown key{hint}"))
        elif isinstance(rule, dict):
            if isinstance(value, dict):
                problems += _walk(value, rule, path)
            else:
                problems.append((path, f"must be a table (got {_type_name(value)})"))
        else:
            wrong = rule(value)
            if wrong:
                problems.append((path, wrong))
    return problems


def _cross_checks(doc: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    key = doc.get("pseudonymization", {})
    if isinstance(key, dict) and "key_file" in key and "key_env" in key:
        return [(("pseudonymization", "key_env"), "give key_file or key_env, not both")]
    return []


def validate(doc: dict[str, Any], text: str, source: str) -> list[str]:
    """Every problem of a parsed policy, as `source:line: key: what is wrong`, in file order."""
    lines = key_lines(text)
    problems = _walk(doc, SHAPE, ()) + _cross_checks(doc)
    out = []
    for path, what in problems:
        line = lines.get(path)
        for i in range(len(path) - 1, 0, -1):
            if line is not None:
                break
            line = lines.get(path[:i])
        out.append((line or 0, f"{source}:{line or '?'}: {'.'.join(path)}: {what}"))
    return [message for _line, message in sorted(out)]


def build(doc: dict[str, Any], source: str) -> Policy:
    """The Policy of a validated document (defaults for what it leaves out)."""
    ret = doc.get("retention", {})
    default = Retention()

    def days(name: str, fallback: int) -> int:
        return int(ret.get(name, {}).get("days", fallback))

    aggregates_days = ret.get("aggregates", {}).get("days")
    consent = ConsentDefaults(**doc.get("consent", {}).get("defaults", {}))
    key = doc.get("pseudonymization", {})
    return Policy(
        retention=Retention(
            vault_days=days("vault", default.vault_days),
            analytics_days=days("analytics", default.analytics_days),
            aggregates_days=None if aggregates_days is None else int(aggregates_days),
            recording_days=days("recording", default.recording_days),
            transcript_days=days("transcript", default.transcript_days),
            outbox_days=days("outbox", default.outbox_days),
        ),
        k=int(doc.get("aggregates", {}).get("k", 5)),
        noise=_noise(doc.get("aggregates", {}).get("noise", {})),
        consent=consent,
        secret_names=tuple(
            n.lower() for n in doc.get("secrets", {}).get("attribute_names", DEFAULT_SECRET_NAMES)
        ),
        key=KeySource(file=key.get("key_file"), env=key.get("key_env"), version=key.get("key_version", "v1")),
        requests=_requests(doc.get("requests", {})),
        source=source,
    )


def _noise(doc: dict[str, Any]) -> AggregateNoise:
    default = AggregateNoise()
    return AggregateNoise(
        enabled=bool(doc.get("enabled", default.enabled)), epsilon=float(doc.get("epsilon", default.epsilon))
    )


def _requests(doc: dict[str, Any]) -> RequestDeadlines:
    default = RequestDeadlines()
    per_kind = tuple((kind, int(doc[kind]["days"])) for kind in DEADLINE_KINDS if "days" in doc.get(kind, {}))
    return RequestDeadlines(
        days=int(doc.get("days", default.days)),
        warn_days=int(doc.get("warn_days", default.warn_days)),
        per_kind=per_kind,
    )


def parse_text(text: str, source: str) -> Policy:
    """Validate policy TOML text; raises PolicyError listing every problem with its line."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    problems = validate(doc, text, source)
    if problems:
        raise PolicyError("\n".join(problems))
    return build(doc, source)


def parse_policy(path: Path) -> Policy:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PolicyError(f"{path}: cannot read policy file ({reason})") from None
    return parse_text(text, str(path))


def load_policy(path: Path | None) -> Policy:
    """Read and validate a policy file; None gives the defaults."""
    if path is None:
        return DEFAULT_POLICY
    return parse_policy(path)
