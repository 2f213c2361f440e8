"""The policy's retention limits at landing: what `jobs retention` would remove from a row at
`now_ms` never lands (docs/ARCHITECTURE.md "The chain"). Pure: the time comes in.

The limits are retention's own (jobs/retention_plan.py), measured back from `now_ms` exactly, to
the millisecond, by `started_at`: a row started before `now_ms - days` is past its zone's limit
(vault 90 days, analytics 400 by default), and a category column is nulled in rows started before
its category's limit (recording_uri and transcript, 30). `CATEGORY_COLUMNS` says which columns
each zone nulls, for both: the vault's recording_uri and transcript, analytics' transcript (the
redacted one, made of the vault's); analytics' has_recording is left as it landed.

So landing a batch at T leaves the lake that landing it with no limits and running
`jobs retention --as-of T` would leave. The chain compares each event's `started_at` with
`Cutoffs.fresh` once; only an event past some limit is looked at further.
"""

from __future__ import annotations

from typing import NamedTuple

from pipeline.policy import Retention
from schemas.clock import DAY_MS
from sinks.layout import ANALYTICS, VAULT

# Category columns with a limit of their own, per zone (Retention's `<category>_days` -> column).
CATEGORY_COLUMNS = {
    VAULT: {"recording": "recording_uri", "transcript": "transcript"},
    ANALYTICS: {"transcript": "transcript"},
}
RECORDING = CATEGORY_COLUMNS[VAULT]["recording"]
TRANSCRIPT = CATEGORY_COLUMNS[VAULT]["transcript"]


class Cutoffs(NamedTuple):
    """The earliest `started_at` (epoch ms) each limit keeps at a time: a row or value started
    before its cutoff is past its limit. `fresh` is the latest of them: nothing started at or
    after it is past any limit."""

    fresh: int
    vault: int
    analytics: int
    recording: int
    transcript: int


class _Spans(NamedTuple):
    shortest: int
    vault: int
    analytics: int
    recording: int
    transcript: int


_spans_of: tuple[Retention, _Spans] | None = None


def _spans(retention: Retention) -> _Spans:
    """The limits in milliseconds, remembered for the last retention seen (one policy per
    process). One tuple, read and replaced whole, so a thread never pairs two policies' spans."""
    global _spans_of
    found = _spans_of
    if found is not None and found[0] is retention:
        return found[1]
    days = (
        retention.vault_days,
        retention.analytics_days,
        retention.recording_days,
        retention.transcript_days,
    )
    spans = _Spans(min(days) * DAY_MS, *(d * DAY_MS for d in days))
    _spans_of = (retention, spans)
    return spans


def fresh_after(retention: Retention, now_ms: int) -> int:
    """`cutoffs(retention, now_ms).fresh`, for the chain's once-a-batch use."""
    return now_ms - _spans(retention).shortest


def cutoffs(retention: Retention, now_ms: int) -> Cutoffs:
    spans = _spans(retention)
    return Cutoffs(
        now_ms - spans.shortest,
        now_ms - spans.vault,
        now_ms - spans.analytics,
        now_ms - spans.recording,
        now_ms - spans.transcript,
    )
