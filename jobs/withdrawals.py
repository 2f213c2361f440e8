"""Which consent withdrawals call for a purge, and what of a call each one covers (pure: no lake,
no Kafka, no clock).

An account's consent history (`pipeline.consent`, read whole from consent.events) holds a
withdrawal of purpose P at time T. The stream already keeps nothing under P for the account's
calls at or after T (it judges each call at its own time); what it landed for calls before T was
held under P and, once P is withdrawn, has no ground left (GDPR Art. 17(1)(b)). A withdrawal
calls for a purge when P was in force just before T: granted by an earlier consent event, or on
by the policy's default (analytics, legitimate interest: switching it off is an objection, whose
rows go too). A withdrawal of what was not in force (a second withdrawal, a withdrawal of a
purpose off by default and never granted, a grant and a withdrawal at the same time, where the
withdrawal wins) covers nothing and is not one. An account without history has none.

A withdrawal at T covers the account's calls that started before T: those between an earlier
re-grant and T were held under the grant it ends, and those before an earlier withdrawal hold
nothing under P any more. Calls at or after T (the stream kept nothing under P for them) and
after a later re-grant are never touched. What a purpose holds, per zone, follows from the
CallEvent schema's annotations: each sensitive field's purpose (`pipeline.consent.CONSENT_FOR`)
and what the field becomes in analytics (`schemas.zones.ANALYTICS_COLUMNS`); the analytics
purpose is the account's analytics rows themselves.

A dead letter (the raw bytes of a rejected event, `sinks.rejects`) is covered when a record it
decodes to (`pipeline.raw_records`) is the account's, started before T and holds a non-empty
value in a field of P (the same fields the vault holds: `recording_uri`, `transcript`); the
analytics purpose covers none (dead letters are not analytics). It cannot be told (None, for the
caller to count, never to report as searched) when the bytes cannot be searched (damaged
compressed bytes) or are the account's without a record of it that decodes, or whose time reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import schemas
from pipeline import raw_records
from pipeline.consent import CONSENT_FOR, PURPOSES, WITHDRAW, AccountState, decide, entries
from pipeline.keys import Domain, PseudonymKey
from pipeline.policy import ConsentDefaults
from schemas.zones import ANALYTICS, ANALYTICS_COLUMNS, VAULT

KIND = WITHDRAW  # the ledger's kind of a withdrawal's purge
ROWS = "rows"  # in `purpose_columns`: the purpose is the zone's rows themselves
TIME_COLUMN = "started_at"  # the call's time, the one its consent was judged at


@dataclass(frozen=True)
class Withdrawal:
    """A withdrawal of `purpose` by `account_id` at `at_ms` that calls for a purge."""

    account_id: str
    purpose: str
    at_ms: int

    def covers(self, started_ms: int) -> bool:
        """Whether a call of the account that started at `started_ms` is covered."""
        return started_ms < self.at_ms


def withdrawals_of(account_id: str, state: AccountState, defaults: ConsentDefaults) -> list[Withdrawal]:
    """The account's withdrawals that call for a purge, oldest first."""
    out = []
    for at, what in entries(state):
        if at is None or not what.endswith(":withdrawn"):
            continue
        purpose = what.split(":", 1)[0]
        if getattr(decide(state, at - 1, defaults), purpose):
            out.append(Withdrawal(account_id, purpose, at))
    return out


def withdrawals(states: Mapping[str, AccountState], defaults: ConsentDefaults) -> list[Withdrawal]:
    """Every account's withdrawals that call for a purge, by time (then account, purpose)."""
    found = [w for account, state in states.items() for w in withdrawals_of(account, state, defaults)]
    return sorted(found, key=lambda w: (w.at_ms, w.account_id, PURPOSES.index(w.purpose)))


def request_id(key: PseudonymKey, withdrawal: Withdrawal) -> str:
    """The ledger id of a withdrawal: a digest of the account's token, the purpose and the time,
    so the same withdrawal is one request at every pass, and the id names no one."""
    token = key.token(Domain.ACCOUNT, withdrawal.account_id)
    text = f"{token}|{withdrawal.purpose}|{withdrawal.at_ms}"
    return f"{KIND}-{hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}"


def as_requests(key: PseudonymKey, found: Iterable[Withdrawal]) -> list[dict[str, Any]]:
    """The withdrawals as request records for the ledger's intake (`jobs.requests_intake`)."""
    return [
        {
            "request_id": request_id(key, w),
            "account_id": w.account_id,
            "kind": KIND,
            "purpose": w.purpose,
            "at": w.at_ms,
        }
        for w in found
    ]


@cache
def purpose_columns() -> dict[str, dict[str, tuple[str, ...]]]:
    """Per purpose, per zone, the columns a withdrawal nulls (`(ROWS,)`: the rows go), from the
    CallEvent schema's annotations."""
    out: dict[str, dict[str, tuple[str, ...]]] = {ANALYTICS: {ANALYTICS: (ROWS,)}}
    for ann in schemas.pii_fields("CallEvent"):
        rule = CONSENT_FOR.get((ann.klass, ann.category))
        if rule is None:
            continue
        purpose = rule[0]
        leaf = ann.path.rsplit(".", 1)[-1]
        analytics = tuple(t.format(name=leaf) for t, _ in ANALYTICS_COLUMNS[(ann.klass, ann.category)])
        held = out.setdefault(purpose, {VAULT: (), ANALYTICS: ()})
        held[VAULT] += (ann.path,)
        held[ANALYTICS] += analytics
    missing = set(PURPOSES) - set(out)
    if missing:
        raise ValueError(f"no field is held under purpose {sorted(missing)[0]}")
    return out


def dead_letter_fields(purpose: str) -> tuple[str, ...]:
    """The fields of a raw call a withdrawal of `purpose` covers in a dead letter: those the vault
    holds under it (none for analytics)."""
    return purpose_columns()[purpose].get(VAULT, ())


def covers_dead_letter(w: Withdrawal, raw: bytes) -> bool | None:
    """Whether the dead letter `raw` holds what `w` covers; None when it cannot be told (module
    doc)."""
    if not dead_letter_fields(w.purpose) or not raw_records.could_hold(raw, w.account_id):
        return False
    found = raw_records.read(raw)
    return covers_read(w, found, raw_records.subject_in(found, w.account_id))


def covers_read(w: Withdrawal, found: raw_records.Raw, whose: bool | None) -> bool | None:
    """`covers_dead_letter` over what `raw_records.read` gave and whose it is (`subject_in`), for a
    scan that reads each dead letter once for many withdrawals (`raw_records.Subjects`)."""
    fields = dead_letter_fields(w.purpose)
    if not fields:
        return False
    if not whose:
        return whose  # another account's (False), or nobody can tell (None)
    calls = {_covers_call(w, r, fields) for r in found.records if r.get("account_id") == w.account_id}
    if True in calls:
        return True
    return None if None in calls or found.opaque or not calls else False


def _covers_call(w: Withdrawal, record: Mapping[str, Any], fields: tuple[str, ...]) -> bool | None:
    if all(record.get(f) in (None, "") for f in fields):
        return False
    started = raw_records.event_ms(record.get(TIME_COLUMN))
    return None if started is None else w.covers(started)
