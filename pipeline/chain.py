"""The processing chain over one batch: validate -> consent and subject state -> route ->
pseudonymize. Pure: no Kafka, files or clock; `now_ms` and the account states come in.

Every input record is accounted for exactly once:
    len(records) == len(vault_rows) + len(rejections) + len(erased) + len(expired)
                    + drops[Drop.VAULT_EXPIRED]

Routing (docs/ARCHITECTURE.md "Privacy semantics"):
  erased before the event's time  -> nothing stored, counted Drop.ERASED
  restricted                      -> vault only, counted Drop.RESTRICTED
  objected to analytics           -> vault only, counted Drop.ANALYTICS_OBJECTED
  otherwise                       -> vault and analytics
and in both zones recording_uri / transcript are nulled without consent for them at the event's
time (counted Drop.RECORDING_NO_CONSENT / TRANSCRIPTION_NO_CONSENT).

Then the policy's retention limits at `now_ms` (pipeline/expiry.py), as `jobs retention --as-of
now_ms` would apply them to the landed rows:
  past the limit of every zone it would go to  -> nothing stored, counted Drop.EXPIRED
  past the vault's limit, not analytics'       -> analytics only, counted Drop.VAULT_EXPIRED
  past analytics' limit, not the vault's       -> vault only, counted Drop.ANALYTICS_EXPIRED
and a transcript past its limit is nulled in both zones (Drop.TRANSCRIPT_EXPIRED), a
recording_uri past its limit in the vault (Drop.RECORDING_EXPIRED), once the analytics row
(has_recording, which retention leaves) is made. Counted once per event, for values consent kept.

Rows hold exactly their zone's columns (schemas.zones). What the sink needs beside a row to place
it, the account token, its hash bucket and the day partition, is in the parallel `*_routes` list.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pipeline.codec import Lineage
from pipeline.consent import AccountState, Decision, Decisions, consent_fields, decide
from pipeline.expiry import RECORDING, TRANSCRIPT, Cutoffs, cutoffs, fresh_after
from pipeline.keys import Domain, PseudonymKey
from pipeline.memo import Memo
from pipeline.policy import ConsentDefaults, Policy
from pipeline.pseudonymize import row_pseudonymizer, token_of
from pipeline.reasons import Drop, Rejection
from pipeline.validate import validated
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
    expired: list[int] = field(default_factory=list)  # batch positions of events past every limit


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
    memo = memo if memo is not None else Memo()
    routed = route_batch(records, states, policy, key, now_ms, sources=sources, buckets=buckets, memo=memo)
    analytics_row = row_pseudonymizer()  # the vault row's values, unpacked in its column order
    vault_rows, vault_routes = routed.vault_rows, routed.vault_routes
    analytics_rows = [
        analytics_row(vault_rows[i], key, hints, memo)
        for i, hints in zip(routed.analytics, routed.regions, strict=True)
    ]
    analytics_routes = [vault_routes[i] for i in routed.analytics]
    if routed.vault_expired or routed.recording_expired:  # past retention: after the analytics rows
        for i in routed.recording_expired:
            vault_rows[i][RECORDING] = None
        gone = set(routed.vault_expired)
        vault_rows = [row for i, row in enumerate(vault_rows) if i not in gone]
        vault_routes = [route for i, route in enumerate(vault_routes) if i not in gone]
    return ChainResult(
        vault_rows,
        vault_routes,
        analytics_rows,
        analytics_routes,
        routed.rejections,
        routed.erased,
        routed.drops,
        routed.expired,
    )


@dataclass(frozen=True)
class Routed:
    """A batch judged and routed, before its analytics rows are made: the vault rows with their
    routes, which of them go to the analytics zone (`analytics`, positions in `vault_rows`) with
    the regions of each one's call (`regions`, for free-text detection), and what was rejected,
    erased, expired and counted. `process_batch` makes analytics rows of it; the runner makes
    tables (pipeline/chain_tables.py).

    Both make the analytics rows of `vault_rows` as they are, then apply what is past retention
    to the vault: the rows at `vault_expired` (positions in `vault_rows`) do not land there, and
    the rows at `recording_expired` land with recording_uri nulled. Empty unless the batch has
    an event past a limit."""

    vault_rows: list[dict[str, Any]] = field(default_factory=list)
    vault_routes: list[Route] = field(default_factory=list)
    analytics: list[int] = field(default_factory=list)
    regions: list[tuple[str, ...]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    erased: list[int] = field(default_factory=list)
    drops: Counter[Drop] = field(default_factory=Counter)
    expired: list[int] = field(default_factory=list)  # batch positions, as `erased`
    vault_expired: list[int] = field(default_factory=list)
    recording_expired: list[int] = field(default_factory=list)


def route_batch(
    records: Sequence[Any],
    states: Mapping[str, AccountState],
    policy: Policy,
    key: PseudonymKey,
    now_ms: int,
    *,
    sources: Sequence[Lineage] | None = None,
    buckets: int = DEFAULT_BUCKETS,
    memo: Memo | None = None,
    admitted: bool = False,
) -> Routed:
    """The chain up to the analytics rows: validate, judge consent and subject state at each
    event's time, null what lacks consent, add lineage, route, apply retention's limits at
    `now_ms` (`process_batch`'s arguments;
    `admitted`: the records are as `pipeline.codec`'s decoders admitted them, whose types and
    identifiers validation need not check again: `pipeline.field_rules.admitted_copier`)."""
    if sources is not None and len(sources) != len(records):
        raise ValueError("sources must give one lineage per record")
    memo = memo if memo is not None else Memo()
    rejections: list[Rejection] = []
    drops: Counter[Drop] = Counter()  # validation's counts (secret strips) come first
    # then the chain's, as when validation ran whole first (a plain dict: a Counter's set-up,
    # its misses and its update are Python code, ~2 us per batch of one event)
    routed: dict[Drop, int] = {}
    vault_rows: list[dict[str, Any]] = []
    vault_routes: list[Route] = []
    analytics: list[int] = []
    regions: list[tuple[str, ...]] = []
    erased: list[int] = []
    expired: list[int] = []
    # rows past some retention limit: (position in vault_rows, lands in the vault, its analytics
    # row is past analytics' limit), for `_expire` after the loop
    late: list[tuple[int, bool, bool]] = []
    fresh = fresh_after(policy.retention, now_ms)  # nothing started at or after it has expired
    cuts: Cutoffs | None = None
    defaults = policy.consent
    no_history = no_history_decision(defaults)
    needs = consent_fields()
    peek, put = memo.peek, memo.put
    secret = key.secret
    for record, index, hints in validated(
        records, policy.secret_names, now_ms, memo, sources, rejections, drops, admitted=admitted
    ):
        account = record["account_id"]
        started = record["started_at"]
        state = states.get(account)
        decision = no_history if state is None else decision_of(account, started, state, defaults, memo)
        if decision.erased:
            routed[Drop.ERASED] = routed.get(Drop.ERASED, 0) + 1
            erased.append(index)
            continue
        if started < fresh:  # past a retention limit: rare, but for backfills
            if cuts is None:
                cuts = cutoffs(policy.retention, now_ms)
            to_analytics = decision.analytics and not decision.restricted
            in_vault = started >= cuts.vault
            in_analytics = to_analytics and started >= cuts.analytics
            if not (in_vault or in_analytics):
                routed[Drop.EXPIRED] = routed.get(Drop.EXPIRED, 0) + 1
                expired.append(index)
                continue
            late.append((len(vault_rows), in_vault, to_analytics and not in_analytics))
        for name, purpose, drop in needs:  # apply_consent, inlined
            if record[name] is not None and not getattr(decision, purpose):
                record[name] = None
                routed[drop] = routed.get(drop, 0) + 1
        # the record is validate's own copy: it becomes the vault row, lineage added in place
        if sources is not None:
            source = sources[index]
            record["source_partition"] = source.partition
            record["source_offset"] = source.offset
            record["source_index"] = source.index
        else:
            record["source_partition"], record["source_offset"], record["source_index"] = -1, index, 0
        # an account's route on a day, remembered across batches (a batch of one event made
        # its token, bucket, day name and Route anew each time)
        day = started // DAY_MS
        route = peek(("route", secret, buckets, account, day))
        if route is None:
            token = token_of(key, Domain.ACCOUNT, account, memo)
            route = Route(clock.day_of_epoch_day(day), bucket_of(token, buckets), token)
            put(("route", secret, buckets, account, day), route)
        if decision.restricted:
            routed[Drop.RESTRICTED] = routed.get(Drop.RESTRICTED, 0) + 1
        elif not decision.analytics:
            routed[Drop.ANALYTICS_OBJECTED] = routed.get(Drop.ANALYTICS_OBJECTED, 0) + 1
        else:
            analytics.append(len(vault_rows))
            regions.append(hints)
        vault_rows.append(record)
        vault_routes.append(route)
    vault_expired: list[int] = []
    recording_expired: list[int] = []
    if late:
        assert cuts is not None  # set with the first of them
        analytics, regions, vault_expired, recording_expired = _expire(
            late, cuts, vault_rows, analytics, regions, routed
        )
    for drop, n in routed.items():  # keys first counted here follow validation's, in their order
        drops[drop] += n
    return Routed(
        vault_rows,
        vault_routes,
        analytics,
        regions,
        rejections,
        erased,
        drops,
        expired,
        vault_expired,
        recording_expired,
    )


def decision_of(
    account: str, started: int, state: AccountState, defaults: ConsentDefaults, memo: Memo
) -> Decision:
    """`decide(state, started, defaults)` for an account with a history, its decisions by time
    remembered while its state object stays the same: its first event is judged alone, a table
    by time (a `decide` per entry of the history) is built at its second, when the account is
    seen to call again."""
    table = memo.peek(("decisions", account))
    if table is None or table.state is not state or table.defaults is not defaults:
        memo.put(("decisions", account), _Seen(state, defaults))
        return decide(state, started, defaults)
    if type(table) is _Seen:
        table = memo.put(("decisions", account), Decisions(state, defaults))
    return table.decisions[bisect_right(table.times, started)]  # table.at, inlined


def _expire(
    late: list[tuple[int, bool, bool]],
    cuts: Cutoffs,
    vault_rows: list[dict[str, Any]],
    analytics: list[int],
    regions: list[tuple[str, ...]],
    routed: dict[Drop, int],
) -> tuple[list[int], list[tuple[str, ...]], list[int], list[int]]:
    """Retention's limits on the batch's rows past one (`late`), after consent: the analytics
    positions and regions without the rows past analytics' limit, the rows past the vault's
    (`Routed.vault_expired`) and those whose recording_uri is past its own
    (`Routed.recording_expired`, nulled by the caller once the analytics row is made: retention
    leaves has_recording as it landed). A transcript past its limit is nulled here, in the row,
    so in both zones. Counts go to `routed`."""
    vault_expired: list[int] = []
    recording_expired: list[int] = []
    no_analytics: set[int] = set()
    for position, in_vault, analytics_expired in late:
        record = vault_rows[position]
        started = record["started_at"]
        if analytics_expired:
            no_analytics.add(position)
            routed[Drop.ANALYTICS_EXPIRED] = routed.get(Drop.ANALYTICS_EXPIRED, 0) + 1
        if not in_vault:
            vault_expired.append(position)
            routed[Drop.VAULT_EXPIRED] = routed.get(Drop.VAULT_EXPIRED, 0) + 1
        if record[TRANSCRIPT] is not None and started < cuts.transcript:
            record[TRANSCRIPT] = None
            routed[Drop.TRANSCRIPT_EXPIRED] = routed.get(Drop.TRANSCRIPT_EXPIRED, 0) + 1
        if in_vault and record[RECORDING] is not None and started < cuts.recording:
            recording_expired.append(position)
            routed[Drop.RECORDING_EXPIRED] = routed.get(Drop.RECORDING_EXPIRED, 0) + 1
    if no_analytics:
        kept = [(i, hints) for i, hints in zip(analytics, regions, strict=True) if i not in no_analytics]
        analytics, regions = [i for i, _hints in kept], [hints for _i, hints in kept]
    return analytics, regions, vault_expired, recording_expired


_no_history_of: tuple[ConsentDefaults, Decision] | None = None


def no_history_decision(defaults: ConsentDefaults) -> Decision:
    """`decide` for an account without history (the same at every time), remembered for the
    last defaults seen (one policy per process): ~2 us per batch of one event. One tuple,
    read and replaced whole, so a thread never pairs one policy's defaults with another's."""
    global _no_history_of
    found = _no_history_of
    if found is not None and found[0] is defaults:
        return found[1]
    decision = decide(None, 0, defaults)
    _no_history_of = (defaults, decision)
    return decision
