"""The processing chain over one batch: validate -> consent and subject state -> route ->
pseudonymize. Pure: no Kafka, files or clock; `now_ms` and the account states come in.

Every input record is accounted for exactly once:
    len(records) == len(vault_rows) + len(rejections) + len(erased)

Routing (docs/ARCHITECTURE.md "Privacy semantics"):
  erased before the event's time  -> nothing stored, counted Drop.ERASED
  restricted                      -> vault only, counted Drop.RESTRICTED
  objected to analytics           -> vault only, counted Drop.ANALYTICS_OBJECTED
  otherwise                       -> vault and analytics
and in both zones recording_uri / transcript are nulled without consent for them at the event's
time (counted Drop.RECORDING_NO_CONSENT / TRANSCRIPTION_NO_CONSENT).

Rows hold exactly their zone's columns (schemas.zones). What the sink needs beside a row to place
it, the account token, its hash bucket and the day partition, is in the parallel `*_routes` list.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pipeline.codec import Lineage
from pipeline.consent import AccountState, Decisions, apply_consent, decide
from pipeline.keys import Domain, PseudonymKey
from pipeline.memo import Memo
from pipeline.policy import ConsentDefaults, Policy
from pipeline.pseudonymize import pseudonymizer, token_of
from pipeline.reasons import Drop, Rejection
from pipeline.validate import validate_batch
from schemas import clock
from schemas.clock import DAY_MS
from sinks.layout import bucket_of

DEFAULT_BUCKETS = 8


class Route(NamedTuple):
    """Where the sink puts a row: day partition (from started_at, UTC), bucket, account token."""

    dt: str
    bucket: int
    account_token: str


class _Seen(NamedTuple):
    """An account judged once under this state and these defaults (no table built yet)."""

    state: AccountState
    defaults: ConsentDefaults


@dataclass(frozen=True)
class ChainResult:
    vault_rows: list[dict[str, Any]] = field(default_factory=list)
    vault_routes: list[Route] = field(default_factory=list)
    analytics_rows: list[dict[str, Any]] = field(default_factory=list)
    analytics_routes: list[Route] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    erased: list[int] = field(default_factory=list)  # batch positions of dropped (erased) events
    drops: Counter[Drop] = field(default_factory=Counter)


def process_batch(
    records: Sequence[Any],
    states: Mapping[str, AccountState],
    policy: Policy,
    key: PseudonymKey,
    now_ms: int,
    *,
    sources: Sequence[Lineage] | None = None,
    buckets: int = DEFAULT_BUCKETS,
    memo: Memo | None = None,
) -> ChainResult:
    """Run the chain over a batch of decoded CallEvent dicts. `states` maps account_id to its
    state (absent: no history); `sources` gives each record's lineage (default: partition -1,
    offset = position in the batch); `buckets` is Settings.buckets; `memo` remembers what
    identifiers became across batches (pipeline/memo.py; a fresh one per call when absent)."""
    if sources is not None and len(sources) != len(records):
        raise ValueError("sources must give one lineage per record")
    memo = memo if memo is not None else Memo()
    validated = validate_batch(records, policy.secret_names, now_ms, memo, sources)
    result = ChainResult(rejections=validated.rejections, drops=validated.drops)
    drops = result.drops
    tokens: dict[str, tuple[str, int]] = {}
    days: dict[int, str] = {}
    defaults = policy.consent
    analytics_row = pseudonymizer()  # `pseudonymize` without its per-call look-up
    no_history = decide(None, 0, defaults)  # the same at every time
    for record, index, regions in zip(validated.records, validated.indices, validated.regions, strict=True):
        account = record["account_id"]
        state = states.get(account)
        if state is None:
            decision = no_history
        else:
            # an account's decisions by time, remembered while its state object stays the same:
            # its first event is judged alone, a table by time (a `decide` per entry of the
            # history) is built at its second, when the account is seen to call again
            table = memo.peek(("decisions", account))
            if table is None or table.state is not state or table.defaults is not defaults:
                memo.put(("decisions", account), _Seen(state, defaults))
                decision = decide(state, record["started_at"], defaults)
            else:
                if type(table) is _Seen:
                    table = memo.put(("decisions", account), Decisions(state, defaults))
                decision = table.at(record["started_at"])
        if decision.erased:
            drops[Drop.ERASED] += 1
            result.erased.append(index)
            continue
        apply_consent(record, decision, drops)
        # the record is validate's own copy: it becomes the vault row, lineage added in place
        if sources is not None:
            source = sources[index]
            record["source_partition"] = source.partition
            record["source_offset"] = source.offset
            record["source_index"] = source.index
        else:
            record["source_partition"], record["source_offset"], record["source_index"] = -1, index, 0
        if account not in tokens:
            token = token_of(key, Domain.ACCOUNT, account, memo)
            tokens[account] = (token, bucket_of(token, buckets))
        token, bucket = tokens[account]
        day = record["started_at"] // DAY_MS
        if day not in days:
            days[day] = clock.day_of_ms(record["started_at"])
        route = Route(days[day], bucket, token)
        result.vault_rows.append(record)
        result.vault_routes.append(route)
        if decision.restricted:
            drops[Drop.RESTRICTED] += 1
        elif not decision.analytics:
            drops[Drop.ANALYTICS_OBJECTED] += 1
        else:
            result.analytics_rows.append(analytics_row(record, key, regions, record, memo))
            result.analytics_routes.append(route)
    return result
