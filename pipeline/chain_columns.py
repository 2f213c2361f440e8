"""The chain over columns: a batch of admitted calls as an Arrow table (decoded straight from Avro
into columns, `pipeline.native_rows`), judged and routed without a Python object per event.

It gives what `pipeline.chain.route_batch` then `pipeline.chain_tables.tables_of` give for the
same calls, for the rows it takes on (the common case: times in range, no duplicate event id in
the batch, nothing past a retention limit). The others it hands back by position
(`ColumnsRouted.rows`): the caller runs them through the row chain, which names their
rejections and applies retention, so one definition of those rules holds. Secret-named
attribute keys it removes itself, with the row chain's verdict per key
(`pipeline.secret_names.secret_key`). The column form is held to the row form by tests
(tests/unit/test_chain_columns.py: equal tables, counts and rejections on the bench's traffic
and on batches made to hit each way out).

Per column, each step runs once per distinct value of the batch (a number's E.164 form, an
account's route on a day) and is spread back to the rows; only consent reads each event of an
account with a history (a bisect in its decisions by time, as the row chain). The memo entries
are the row chain's own, so what one form remembered the other finds and `Memo.forget()` on
erasure drops both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.chain import DEFAULT_BUCKETS, decision_of, no_history_decision
from pipeline.chain_tables import Tables
from pipeline.consent import AccountState, consent_fields
from pipeline.expiry import fresh_after
from pipeline.keys import Domain, PseudonymKey
from pipeline.memo import Memo
from pipeline.phones import (
    NumberInfo,
    _phone_and_carrier_fields,
    _regions,
    carrier_region,
    international_infos,
    national_infos,
)
from pipeline.policy import Policy
from pipeline.pseudonymize_columns import (
    PhoneFacts,
    RegionCodes,
    analytics_columns,
    facts_codes,
    kind_code,
    tokens,
)
from pipeline.reasons import Drop
from pipeline.secret_names import _harmless, _lowered, _map_fields, secret_key
from pipeline.validate import MAX_DURATION_S, MAX_FUTURE_MS
from schemas.clock import EPOCH_OF_SERVICE_MS
from schemas.zones import analytics_schema, vault_schema
from sinks.arrow import buckets_of


@dataclass(frozen=True)
class ColumnsRouted:
    """What the column chain made of a batch: both zones' tables of the rows it took on, its
    counts, and the positions of the rows left to the row chain (ascending)."""

    tables: Tables
    drops: Counter[Drop]
    rows: np.ndarray


def route_columns(
    calls: pa.Table,
    partition: int,
    offsets: np.ndarray,
    indices: np.ndarray,
    states: Mapping[str, AccountState],
    policy: Policy,
    key: PseudonymKey,
    now_ms: int,
    *,
    buckets: int = DEFAULT_BUCKETS,
    memo: Memo,
    seen: Sequence[object] = (),
) -> ColumnsRouted:
    """The chain over `calls` (the vault schema's CallEvent columns, no lineage, as a decoder
    admitted them), each row's lineage given by `partition` and the parallel `offsets` and
    `indices`; `states` holds every account of the batch that has a history. `seen`: the event
    ids of the batch's other events (the row chain's): a row holding one of them goes to the row
    chain too, which keeps the first of an id in lineage order."""
    started = _ints(calls, "started_at")
    left = _row_path(calls, started, policy, now_ms, seen)
    if left.any():
        rows = np.flatnonzero(left)
        kept = np.flatnonzero(~left)
        calls = calls.take(pa.array(kept))
        started, offsets, indices = started[kept], offsets[kept], indices[kept]
    else:
        rows = np.empty(0, np.int64)
    drops: Counter[Drop] = Counter()
    if calls.num_rows == 0:
        return ColumnsRouted(_no_tables(), drops, rows)
    calls, stripped = _without_secrets(calls, policy)
    if stripped:
        drops[Drop.SECRET_ATTRIBUTE] = stripped

    accounts = calls.column("account_id").combine_chunks().dictionary_encode()
    account_of = accounts.indices.to_numpy()
    names = accounts.dictionary.to_pylist()
    erased, restricted, objected, allowed = _consent(names, account_of, started, states, policy, memo)

    if erased.any():
        drops[Drop.ERASED] = int(erased.sum())
        kept = np.flatnonzero(~erased)
        calls = calls.take(pa.array(kept))
        started, offsets, indices, account_of = started[kept], offsets[kept], indices[kept], account_of[kept]
        restricted, objected = restricted[kept], objected[kept]
        allowed = {name: mask[kept] for name, mask in allowed.items()}
        if calls.num_rows == 0:
            return ColumnsRouted(_no_tables(), drops, rows)

    columns = {name: calls.column(name) for name in calls.column_names}
    for name, purpose, drop in consent_fields():
        values = columns[name].combine_chunks()
        removed = ~allowed[purpose] & ~np.asarray(values.is_null())
        if removed.any():
            drops[drop] = int(removed.sum())
            columns[name] = pc.if_else(pa.array(removed), pa.nulls(len(values), values.type), values)
    regions = _numbers(columns, memo)
    if restricted.any():
        drops[Drop.RESTRICTED] = int(restricted.sum())
    objected &= ~restricted
    if objected.any():
        drops[Drop.ANALYTICS_OBJECTED] = int(objected.sum())

    rows_n = calls.num_rows
    columns["source_partition"] = pa.repeat(pa.scalar(partition, pa.int32()), rows_n)
    columns["source_offset"] = pa.array(offsets, pa.int64())
    columns["source_index"] = pa.array(indices, pa.int32())
    schema = vault_schema()
    vault = pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)
    bucket = _buckets(accounts.dictionary, account_of, key, buckets)
    to_analytics = np.flatnonzero(~(restricted | objected))
    analytics = analytics_columns(
        vault.take(pa.array(to_analytics)),
        regions.take(to_analytics),
        key,
        memo,
    )
    return ColumnsRouted(Tables(vault, bucket, analytics), drops, rows)


def _ints(table: pa.Table, name: str) -> np.ndarray:
    """A non-null time or number column as int64 values."""
    column = table.column(name).combine_chunks()
    return np.asarray(column.view(pa.int64()) if pa.types.is_timestamp(column.type) else column, np.int64)


def _row_path(
    calls: pa.Table, started: np.ndarray, policy: Policy, now_ms: int, seen: Sequence[object]
) -> np.ndarray:
    """The rows the row chain must take (True): a time or duration out of range (to be named),
    an event id twice in the batch (the first is kept, in batch order) or among `seen`, a call
    past a retention limit."""
    latest = now_ms + MAX_FUTURE_MS
    ok = (
        (started >= EPOCH_OF_SERVICE_MS)
        & (started <= latest)
        & (started >= fresh_after(policy.retention, now_ms))
    )
    answered_col = calls.column("answered_at").combine_chunks()
    ended_col = calls.column("ended_at").combine_chunks()
    answered = np.asarray(answered_col.view(pa.int64()).fill_null(0), np.int64)
    ended = np.asarray(ended_col.view(pa.int64()).fill_null(0), np.int64)
    has_answer = ~np.asarray(answered_col.is_null())
    has_end = ~np.asarray(ended_col.is_null())
    ok &= ~has_answer | ((answered >= started) & (answered <= latest))
    ok &= ~has_end | ((ended >= started) & (ended <= latest) & (~has_answer | (answered <= ended)))
    duration = _ints(calls, "duration_s")
    ok &= (duration >= 0) & (duration <= MAX_DURATION_S)
    event_ids = calls.column("event_id").combine_chunks()
    ids = event_ids.dictionary_encode().indices.to_numpy()
    ok &= np.bincount(ids, minlength=len(ids))[ids] == 1
    others = [i for i in seen if type(i) is str]
    if others:
        ok &= ~np.asarray(pc.is_in(event_ids, value_set=pa.array(others, pa.string())))
    return ~ok


def _without_secrets(calls: pa.Table, policy: Policy) -> tuple[pa.Table, int]:
    """The calls without the secret-named keys of their maps (attributes), and how many went:
    `pipeline.secret_names`' verdict per distinct key the batch holds that is not yet known
    harmless (the row chain's `_strip`, per column)."""
    names = _lowered(policy.secret_names)
    harmless = _harmless(names)
    stripped = 0
    for name in _map_fields():
        at = calls.schema.get_field_index(name)
        maps = calls.column(at).combine_chunks()
        offsets = np.asarray(maps.offsets)
        first, last = int(offsets[0]), int(offsets[-1])
        if last == first:
            continue  # no entries in the batch
        keys = maps.keys.slice(first, last - first)  # a sliced map's children are not sliced
        unknown = keys.filter(pc.invert(pc.is_in(keys, value_set=pa.array(list(harmless), pa.string()))))
        secret = [k for k in set(unknown.to_pylist()) if secret_key(k, names)]
        if not secret:
            continue
        gone = np.asarray(pc.is_in(keys, value_set=pa.array(secret, pa.string())))
        stripped += int(gone.sum())
        kept = pa.array(~gone)
        before = np.concatenate([[0], np.cumsum(~gone)])  # entries kept before each entry
        rebased = pa.array(before[offsets - first], pa.int32())
        items = maps.items.slice(first, last - first)
        without = pa.MapArray.from_arrays(
            rebased,
            keys.filter(kept),
            items.filter(kept),
            type=maps.type,
            mask=maps.is_null() if maps.null_count else None,
        )
        calls = calls.set_column(at, calls.schema.field(at), without)
    return calls, stripped


def _consent(
    names: list[str],
    account_of: np.ndarray,
    started: np.ndarray,
    states: Mapping[str, AccountState],
    policy: Policy,
    memo: Memo,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Each row's decision at its time: (erased, restricted, objected to analytics, and per
    consent purpose whether it is given). Rows of accounts without a history share one decision;
    the others are judged per event as the row chain judges them (`decision_of`)."""
    defaults = policy.consent
    decisions = [no_history_decision(defaults)]
    code = np.zeros(len(account_of), np.int64)
    with_state = [states.get(name) for name in names]
    if any(state is not None for state in with_state):
        seen: dict[int, int] = {id(decisions[0]): 0}
        has = np.array([state is not None for state in with_state])
        rows = np.flatnonzero(has[account_of])
        codes = []
        for account_at, at_ms in zip(account_of[rows].tolist(), started[rows].tolist(), strict=True):
            state = with_state[account_at]
            assert state is not None
            decision = decision_of(names[account_at], at_ms, state, defaults, memo)
            at = seen.get(id(decision))
            if at is None:
                at = seen[id(decision)] = len(decisions)
                decisions.append(decision)
            codes.append(at)
        code[rows] = codes

    def spread(attribute: str) -> np.ndarray:
        return np.array([getattr(d, attribute) for d in decisions], bool)[code]

    allowed = {purpose: spread(purpose) for _name, purpose, _drop in consent_fields()}
    return spread("erased"), spread("restricted"), ~spread("analytics"), allowed


def _numbers(columns: dict[str, pa.Array | pa.ChunkedArray], memo: Memo) -> RegionCodes:
    """Each call's numbers rewritten to E.164 where they parse (in `columns`), as
    `normalize_numbers` rewrites a row's, and each row's regions returned. A number written
    internationally is read once per distinct spelling; one written nationally once per
    distinct (spelling, the other number's region, the carrier's region), the regions it is
    read in; the regions once per distinct triple of regions. What a spelling was read as is
    remembered in the memo's tables (`Memo.table`), looked up a batch at a time. The regions
    carry each row's number facts (country code, type) for the analytics zone's phone columns."""
    (a, b), carrier = _phone_and_carrier_fields()
    first = columns[a].combine_chunks().dictionary_encode()
    second = columns[b].combine_chunks().dictionary_encode()
    carriers = columns[carrier].combine_chunks().dictionary_encode()
    fallback = np.array([_code(carrier_region(c)) for c in carriers.dictionary.to_pylist()], np.int64)
    fallback_row = fallback[carriers.indices.to_numpy()]
    read_a = _read_international(first, memo)
    read_b = _read_international(second, memo)
    # a nationally written number is read in the other's region as written internationally
    columns[a], final_a, facts_a = _read_national(first, read_a, read_b.regions, fallback_row, memo)
    columns[b], final_b, facts_b = _read_national(second, read_b, read_a.regions, fallback_row, memo)
    size = len(_REGION_NAMES)
    triples = (final_a * size + final_b) * size + fallback_row
    distinct, inverse = np.unique(triples, return_inverse=True)
    regions_of = []
    for triple in distinct.tolist():
        rest, c = divmod(triple, size)
        x, y = divmod(rest, size)
        regions_of.append(_regions(_REGION_NAMES[x], _REGION_NAMES[y], _REGION_NAMES[c]))
    return RegionCodes(inverse, regions_of, {a: facts_a, b: facts_b})


# Regions as small codes (0: none), the same in every batch: the national tables' keys and the
# regions' triples read them. ISO region codes, public: nothing personal is held here.
_REGION_NAMES: list[str | None] = [None]
_REGION_CODES: dict[str | None, int] = {None: 0}


def _code(region: str | None) -> int:
    found = _REGION_CODES.get(region)
    if found is None:
        found = _REGION_CODES[region] = len(_REGION_NAMES)
        _REGION_NAMES.append(region)
    return found


# The memo's tables (`Memo.table`): a spelling's international reading, (written, region code,
# written nationally, country code, type code); per (other region, carrier region), a national
# spelling's reading (written, region code, country code, type code). The facts are
# `phone_facts` of what is written (pseudonymize_columns.PhoneFacts), for the analytics zone.
INTERNATIONAL, NATIONAL = "columns:intl", "columns:num"
Read = tuple[str, int, bool, int, int]
NationalRead = tuple[str, int, int, int]


@dataclass(frozen=True)
class _Spellings:
    """A number column's distinct spellings as read internationally, and each row's region."""

    spellings: list[str]
    written: Sequence[str]  # per spelling: its E.164 form, or itself
    national: np.ndarray  # per spelling: written nationally (no "+", no "00")
    regions: np.ndarray  # per row: its region's code (0: none, or written nationally)
    facts: PhoneFacts  # per row (written nationally: to be read)


def _read_international(numbers: pa.DictionaryArray, memo: Memo) -> _Spellings:
    """Per distinct spelling: what it is as written internationally (`_international`), looked
    up in C (`map` over the memo's table); only the spellings not yet known call Python."""
    spellings = numbers.dictionary.to_pylist()
    table = memo.table(INTERNATIONAL)
    found: list[Read | None] = list(map(table.get, spellings))
    if None in found:
        new = [at for at, read in enumerate(found) if read is None]
        infos = international_infos([spellings[at] for at in new])
        for at, info in zip(new, infos, strict=True):
            found[at] = table[spellings[at]] = _international_read(spellings[at], info)
        memo.settle()
    written, codes, national, countries, kinds = zip(*found, strict=True) if found else ((),) * 5
    spelling_of = numbers.indices.to_numpy()
    regions, countries_of, kinds_of = (
        np.asarray(v, np.int64)[spelling_of] for v in (codes, countries, kinds)
    )
    return _Spellings(
        spellings, written, np.asarray(national, bool), regions, PhoneFacts(countries_of, kinds_of)
    )


def _international_read(spelling: str, info: NumberInfo | Literal[False] | None) -> Read:
    """`international_info` as the columns keep it, with the facts of what is written."""
    if info is False:
        return spelling, 0, True, -1, kind_code("unknown")
    if info is None:
        return spelling, 0, False, *facts_codes(spelling)
    return info.e164, _code(info.region), False, info.country_code, kind_code(info.kind)


def _read_national(
    numbers: pa.DictionaryArray, read: _Spellings, other: np.ndarray, fallback: np.ndarray, memo: Memo
) -> tuple[pa.Array, np.ndarray, PhoneFacts]:
    """The number column written as E.164 where it parses, each row's region code and facts:
    the international reading, else the national one (`_national`) in `other` then `fallback`,
    looked up per distinct (other, fallback) pair in that pair's table."""
    written = pa.array(read.written, pa.string()).take(numbers.indices)
    spelling_of = numbers.indices.to_numpy()
    national = read.national[spelling_of]
    if not national.any():
        return written, read.regions, read.facts
    rows = np.flatnonzero(national)
    size, count = len(_REGION_NAMES), len(read.spellings)
    # distinct (region pair, spelling), pair first: each pair's spellings are one run
    keys = (other[rows] * size + fallback[rows]) * count + spelling_of[rows]
    distinct, inverse = np.unique(keys, return_inverse=True)
    pair_of, spelling_at = np.divmod(distinct, count)
    spelled = list(map(read.spellings.__getitem__, spelling_at.tolist()))
    bounds = [0, *(np.flatnonzero(np.diff(pair_of)) + 1).tolist(), len(distinct)]
    found: list[NationalRead | None] = []
    missed = False
    for low, high in pairwise(bounds):
        pair = int(pair_of[low])
        regions = _REGION_NAMES[pair // size], _REGION_NAMES[pair % size]
        table = memo.table((NATIONAL, *regions))
        part = spelled[low:high]
        answers = list(map(table.get, part))
        if None in answers:
            missed = True
            new = [at for at, answer in enumerate(answers) if answer is None]
            infos = national_infos([part[at] for at in new], *regions)
            for at, info in zip(new, infos, strict=True):
                answers[at] = table[part[at]] = _national_read(part[at], info)
        found.extend(answers)
    if missed:
        memo.settle()
    e164s, codes, countries, kinds = zip(*found, strict=True)
    final, countries_of, kinds_of = (
        whole.copy() for whole in (read.regions, read.facts.country_codes, read.facts.kinds)
    )
    for whole, read_of in ((final, codes), (countries_of, countries), (kinds_of, kinds)):
        whole[rows] = np.asarray(read_of, np.int64)[inverse]
    replaced = pa.array(e164s, pa.string()).take(pa.array(inverse))
    column = pc.replace_with_mask(written, pa.array(national), replaced)
    return column, final, PhoneFacts(countries_of, kinds_of)


def _national_read(spelling: str, info: NumberInfo | None) -> NationalRead:
    """`national_info` as the columns keep it, with the facts of what is written."""
    if info is None:
        return spelling, 0, *facts_codes(spelling)
    return info.e164, _code(info.region), info.country_code, kind_code(info.kind)


def _buckets(accounts: pa.Array, account_of: np.ndarray, key: PseudonymKey, buckets: int) -> pa.Array:
    """Each row's bucket: its account's (the row chain's `Route.bucket`, which the day does not
    change), from the tokens of the batch's distinct accounts made natively (`tokens`)."""
    per_account = buckets_of(tokens(key, Domain.ACCOUNT, accounts), buckets).to_numpy()
    return pa.array(per_account[account_of], pa.int32())


def _no_tables() -> Tables:
    return Tables(vault_schema().empty_table(), pa.array([], pa.int32()), analytics_schema().empty_table())
