"""Validate and normalize a batch of decoded CallEvent records.

Secret-named attributes go first (`pipeline.secret_names`; here and on the dead-letter path), so
a credential that a carrier put in `attributes` reaches neither the lake nor calls.dlq.
`validate_batch` then checks each record against the CallEvent schema (required fields, types,
enum symbols: `pipeline.field_rules`), sane identifiers (non-blank, bounded, printable:
`pipeline.identifiers`), times and durations, and duplicate event ids within the batch, and
normalizes the phone numbers to E.164 where they parse (`pipeline.phones`). Each rejection
carries one `Reason`, never a value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.codec import Lineage, event_json
from pipeline.field_rules import Record, admitted_copier, fast_checker
from pipeline.memo import Memo
from pipeline.phones import normalize_numbers
from pipeline.reasons import Drop, Reason, Rejection, Stage
from pipeline.rejected_field import field_of
from pipeline.secret_names import _harmless, _lowered, _map_fields, _strip, strip_secrets_json
from schemas.clock import DAY_MS, EPOCH_OF_SERVICE_MS

MAX_FUTURE_MS = DAY_MS  # clock skew tolerated ahead of `now_ms`
MAX_DURATION_S = 48 * 3600


@dataclass(frozen=True)
class Validated:
    """The accepted records (normalized copies) with their batch positions and the regions of
    their numbers (for free-text detection), the rejections, and counted secret strips."""

    records: list[Record] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    regions: list[tuple[str, ...]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    drops: Counter[Drop] = field(default_factory=Counter)


def _check_times(record: Mapping[str, Any], now_ms: int) -> Reason | None:
    started = record["started_at"]
    answered = record.get("answered_at")
    ended = record.get("ended_at")
    latest = now_ms + MAX_FUTURE_MS
    for t in (started, answered, ended):
        if t is not None and not EPOCH_OF_SERVICE_MS <= t <= latest:
            return Reason.BAD_TIME
    if answered is not None and answered < started:
        return Reason.BAD_TIME
    if ended is not None and (ended < started or (answered is not None and ended < answered)):
        return Reason.BAD_TIME
    if not 0 <= record["duration_s"] <= MAX_DURATION_S:
        return Reason.BAD_DURATION
    return None


# ---------------------------------------------------------------- the batch


def validate_batch(
    records: Sequence[Any],
    secret_names: Iterable[str],
    now_ms: int,
    memo: Memo | None = None,
    sources: Sequence[Lineage] | None = None,
) -> Validated:
    """Strip secrets, check and normalize every record of a batch. A duplicate event_id within
    the batch is rejected (the first occurrence is kept). A rejection names the record's source
    (`sources[i]`; default partition -1, offset = position in the batch, index 0) and holds the
    record as JSON with secret-named attributes masked."""
    rejections: list[Rejection] = []
    drops: Counter[Drop] = Counter()
    memo = memo if memo is not None else Memo()
    out = Validated(rejections=rejections, drops=drops)
    for clean, index, regions in validated(records, secret_names, now_ms, memo, sources, rejections, drops):
        out.records.append(clean)
        out.indices.append(index)
        out.regions.append(regions)
    return out


def validated(
    records: Sequence[Any],
    secret_names: Iterable[str],
    now_ms: int,
    memo: Memo,
    sources: Sequence[Lineage] | None,
    rejections: list[Rejection],
    drops: Counter[Drop],
    *,
    admitted: bool = False,
) -> Iterator[tuple[Record, int, tuple[str, ...]]]:
    """`validate_batch` as it goes: each accepted record (a normalized copy) with its batch
    position and regions, as soon as it is checked; rejections go to the caller's list and
    secret strips are counted in its counter. The chain takes each record on while it is still
    in the CPU's caches, and builds no lists and no `Validated` to unpack (a batch of one event
    paid ~4 us for that). `admitted`: the records are as a decoder admitted them (`admitted_copier`)."""
    names = _lowered(secret_names)
    check = admitted_copier() if admitted else fast_checker()
    maps = _map_fields()
    harmless = _harmless(names)
    seen: set[str] = set()
    latest = now_ms + MAX_FUTURE_MS
    for index, raw in enumerate(records):
        if type(raw) is not dict and not isinstance(raw, Mapping):  # decoders give dicts: no abc check
            rejections.append(_rejection(Reason.MALFORMED, raw, index, sources, names))
            continue
        # _strip gives the record itself when its maps hold only keys known harmless: asked
        # only when one holds another (a secret, a new name, or it is no plain dict)
        record: Mapping[str, Any] = raw
        for name in maps:
            value = raw.get(name)
            if value is not None and not (type(value) is dict and value.keys() <= harmless):
                record, stripped = _strip(raw, names)
                if stripped:
                    drops[Drop.SECRET_ATTRIBUTE] += stripped
                break
        reason, clean = check(record)
        if reason is None and clean is not None:
            # _check_times, inlined on the checked copy (the same values): its common case is
            # three comparisons with the times present
            started, answered, ended = clean["started_at"], clean["answered_at"], clean["ended_at"]
            if not (
                EPOCH_OF_SERVICE_MS <= started <= latest
                and (answered is None or started <= answered <= latest)
                and (
                    ended is None or (started <= ended <= latest and (answered is None or answered <= ended))
                )
            ):
                reason = _check_times(record, now_ms)
            elif not 0 <= clean["duration_s"] <= MAX_DURATION_S:
                reason = Reason.BAD_DURATION
            if reason is None and clean["event_id"] in seen:
                reason = Reason.DUPLICATE
        if reason is not None or clean is None:
            blamed = field_of(raw, reason, EPOCH_OF_SERVICE_MS, latest) if reason is not None else None
            rejections.append(_rejection(reason or Reason.INTERNAL, raw, index, sources, names, blamed))
            continue
        seen.add(clean["event_id"])
        yield clean, index, normalize_numbers(clean, memo)


def _rejection(
    reason: Reason,
    record: Any,
    index: int,
    sources: Sequence[Lineage] | None,
    names: frozenset[str],
    field: str | None = None,
) -> Rejection:
    partition, offset, place = sources[index] if sources is not None else (-1, index, 0)
    return Rejection(reason, Stage.VALIDATE, partition, offset, place, rejected_bytes(record, names), field)


def rejected_bytes(record: Any, secret_names: Iterable[str]) -> bytes:
    """A decoded event rejected after decoding, as JSON with secret-named attributes masked
    (b"" when it does not serialize)."""
    return strip_secrets_json(event_json(record), secret_names)
