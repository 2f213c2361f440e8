"""Seeded synthetic carrier traffic that looks real: the same seed gives the same events.

Pure functions (no clock, no I/O); time windows are arguments in epoch milliseconds UTC.
Other stages use them as their test and demo data:

    accounts = generate_accounts(seed, count=500)               # orgs, home countries, numbers
    calls = generate_calls(seed, 10_000, start_ms, span_ms, accounts=accounts)   # CallEvent dicts
    consents = generate_consents(seed, accounts, start_ms, span_ms)              # ConsentEvent dicts
    requests = generate_requests(seed, accounts, start_ms, span_ms)              # PrivacyRequest dicts
    traffic = generate_traffic(seed, 10_000, start_ms, span_ms)  # all of the above in one bundle
    bad = generate_bad_messages(seed, 20)                        # BadMessage(value, reason) for DLQ tests
    t = generate_transcript(random.Random(1), "GB")             # Transcript(text, pii, keep): ground truth

Records are plain dicts keyed by the schema's field names, timestamps int epoch ms, sorted by
event time. What they contain:
- 15 carriers in 12 countries; phone numbers made from the phonenumbers library's example
  numbers with varied digits, each checked with is_valid_number; caller/callee written in E.164,
  international, national, or national with dashes, as carriers really send them.
- accounts belong to orgs with a home country; activity is long-tailed across accounts.
- started_at follows a daily rhythm in the account's local time (busy 9-18, quiet at night,
  weekends lighter); durations are log-normal (long tail, capped at 4 h); statuses answered
  ~72%, no_answer, busy, cancelled, failed; SMS have duration 0.
- app calls carry device {device_id, device_type, os, app_version} and caller_ip (IPv4 or
  IPv6); mobile calls carry cell_id (MCC-MNC-LAC-CI).
- ~30% of answered voice calls have a recording_uri, ~40% of those a transcript. Transcripts
  mention phone numbers (international and national), emails, IPv4/IPv6, card numbers (Luhn
  valid), IBANs (valid checksum) and ordinary numbers (amounts, times, dates, order/ticket
  numbers, versions) that redaction must keep; `generate_transcript` returns which is which.
  The values themselves (numbers, IPs, cards, IBANs, transcripts) come from generate_pii.
- ~half the calls have attributes; a few carry secret-named keys (password, pin, token, ...).
- consents: per account and purpose (recording, transcription, analytics), grants stamped
  before the window and grants/withdrawals in the middle of it; unknown stays unknown.
- privacy requests: erase, restrict (and a later unrestrict), object, access for a few accounts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cache
from typing import Any

from pipeline.carrier.generate_pii import (
    Number,
    Transcript,
    generate_transcript,
    make_ip,
    make_number,
    number_pool,
)
from pipeline.reasons import Reason
from schemas.clock import DAY_MS, HOUR_MS

__all__ = [
    "CARRIERS",
    "COUNTRIES",
    "DAY_MS",
    "DEFAULT_ACCOUNTS",
    "HOUR_MS",
    "REGIONS",
    "SECRET_KEYS",
    "Account",
    "BadMessage",
    "Number",
    "Traffic",
    "Transcript",
    "generate_accounts",
    "generate_bad_messages",
    "generate_calls",
    "generate_consents",
    "generate_requests",
    "generate_traffic",
    "generate_transcript",
    "number_pool",
]

DEFAULT_ACCOUNTS = 500


@dataclass(frozen=True)
class Country:
    region: str
    utc_offset_h: float
    mcc: str
    weight: float


COUNTRIES: dict[str, Country] = {
    c.region: c
    for c in (
        Country("GB", 0, "234", 14),
        Country("DE", 1, "262", 14),
        Country("FR", 1, "208", 10),
        Country("NL", 1, "204", 6),
        Country("ES", 1, "214", 6),
        Country("IT", 1, "222", 6),
        Country("SE", 1, "240", 3),
        Country("US", -5, "310", 20),
        Country("IN", 5.5, "404", 8),
        Country("BR", -3, "724", 6),
        Country("JP", 9, "440", 4),
        Country("AU", 10, "505", 3),
    )
}

REGIONS = tuple(COUNTRIES)

# carrier_id -> (home region, MNC)
CARRIERS: dict[str, tuple[str, str]] = {
    "northtel-gb": ("GB", "15"),
    "albion-mobile-gb": ("GB", "20"),
    "rheinfunk-de": ("DE", "01"),
    "spreetel-de": ("DE", "07"),
    "hexagone-fr": ("FR", "10"),
    "polder-nl": ("NL", "08"),
    "meseta-es": ("ES", "07"),
    "tirreno-it": ("IT", "10"),
    "baltic-se": ("SE", "01"),
    "liberty-us": ("US", "260"),
    "prairie-us": ("US", "410"),
    "ganga-in": ("IN", "45"),
    "sertao-br": ("BR", "05"),
    "sakura-jp": ("JP", "10"),
    "outback-au": ("AU", "01"),
}

# Relative call volume per local hour 0..23.
HOURLY = (1, 0.6, 0.4, 0.3, 0.3, 0.5, 1.5, 4, 8, 10, 10, 9.5, 8, 9, 10, 10, 9, 8, 6, 4.5, 3.5, 3, 2, 1.4)
STATUSES = (("answered", 72), ("no_answer", 12), ("busy", 6), ("cancelled", 6), ("failed", 4))
DEVICES = (
    ("phone", ("iOS 17.6", "iOS 18.1", "Android 14", "Android 15", "Android 13")),
    ("tablet", ("iPadOS 18.1", "Android 14")),
    ("desktop", ("Windows 11", "macOS 15.1", "Ubuntu 24.04")),
    ("desk_phone", ("Yealink 86.85", "Poly UC 8.1")),
)
APP_VERSIONS = ("4.12.3", "4.12.4", "4.13.0", "4.13.1", "5.0.0-beta.2")
SECRET_KEYS = ("password", "pin", "auth_token", "api_secret", "passwd", "sip_password", "access_token")
SOURCES = ("app", "web", "ivr", "support")


@dataclass(frozen=True)
class Account:
    account_id: str
    org_id: str
    region: str  # home country of the org (and mostly of the account)
    carrier_id: str
    numbers: tuple[Number, ...]
    devices: tuple[dict[str, str], ...]  # empty: not an app user
    ips: tuple[str, ...]
    activity: float  # relative call volume (long-tailed)


@dataclass(frozen=True)
class BadMessage:
    """A deliberately broken calls.raw message value and the reason code decoding must give."""

    value: bytes
    reason: Reason
    account_id: str | None


@dataclass(frozen=True)
class Traffic:
    accounts: tuple[Account, ...]
    calls: list[dict[str, Any]]
    consents: list[dict[str, Any]]
    requests: list[dict[str, Any]]


def _uuid(rng: random.Random) -> str:
    """A version-4 UUID string drawn from rng (deterministic, unlike uuid.uuid4)."""
    h = f"{rng.getrandbits(128) & _UUID_MASK | _UUID_V4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID_MASK = ~(0xF000 << 64 | 0xC000 << 48) & (1 << 128) - 1
_UUID_V4 = 0x4000 << 64 | 0x8000 << 48


def _weighted(rng: random.Random, pairs: tuple[tuple[str, float], ...]) -> str:
    total = sum(p[1] for p in pairs)
    r = rng.random() * total
    for name, weight in pairs:
        r -= weight
        if r < 0:
            return name
    return pairs[-1][0]


@cache
def generate_accounts(seed: int, count: int = DEFAULT_ACCOUNTS) -> tuple[Account, ...]:
    """Accounts grouped into orgs (long-tailed org sizes), each org with a home country."""
    rng = random.Random(f"{seed}:accounts")
    regions = list(COUNTRIES)
    weights = [COUNTRIES[r].weight for r in regions]
    by_region: dict[str, list[str]] = {}
    for cid, (region, _mnc) in CARRIERS.items():
        by_region.setdefault(region, []).append(cid)
    accounts: list[Account] = []
    while len(accounts) < count:
        org_id = f"org-{rng.getrandbits(32):08x}"
        home = rng.choices(regions, weights)[0]
        size = min(count - len(accounts), max(1, int(rng.paretovariate(1.2))))
        for _ in range(size):
            region = home if rng.random() < 0.9 else rng.choices(regions, weights)[0]
            numbers = tuple(
                make_number(rng, region, rng.random() < 0.7) for _ in range(rng.choice((1, 1, 2, 3)))
            )
            devices: tuple[dict[str, str], ...] = ()
            if rng.random() < 0.35:
                devices = tuple(_device(rng) for _ in range(rng.choice((1, 1, 2))))
            accounts.append(
                Account(
                    account_id=f"acc-{rng.getrandbits(48):012x}",
                    org_id=org_id,
                    region=region,
                    carrier_id=rng.choice(by_region[region]),
                    numbers=numbers,
                    devices=devices,
                    ips=tuple(make_ip(rng) for _ in range(rng.choice((1, 2, 3)))),
                    activity=rng.paretovariate(1.5),
                )
            )
    return tuple(accounts)


def _device(rng: random.Random) -> dict[str, str]:
    device_type, oses = DEVICES[rng.choices(range(len(DEVICES)), (60, 10, 25, 5))[0]]
    return {
        "device_id": _uuid(rng),
        "device_type": device_type,
        "os": rng.choice(oses),
        "app_version": rng.choice(APP_VERSIONS),
    }


def _started_at(rng: random.Random, start_ms: int, span_ms: int, offset_h: float) -> int:
    """Rejection sampling of the daily rhythm in local time; weekends at 40%."""
    peak = max(HOURLY)
    while True:
        t = start_ms + int(rng.random() * span_ms)
        local_h = t / HOUR_MS + offset_h
        weight = HOURLY[int(local_h) % 24]
        if int(local_h // 24 + 3) % 7 >= 5:  # epoch day 0 was a Thursday
            weight *= 0.4
        if rng.random() * peak < weight:
            return t


def generate_calls(
    seed: int,
    count: int,
    start_ms: int,
    span_ms: int = DAY_MS,
    *,
    accounts: tuple[Account, ...] | None = None,
) -> list[dict[str, Any]]:
    """`count` CallEvent records with started_at in [start_ms, start_ms + span_ms), time-sorted."""
    if count < 0 or span_ms <= 0:
        raise ValueError("count must be >= 0 and span_ms > 0")
    accounts = accounts or generate_accounts(seed)
    rng = random.Random(f"{seed}:calls:{count}:{start_ms}:{span_ms}")
    picks = rng.choices(accounts, weights=[a.activity for a in accounts], k=count)
    calls = [_call(rng, seed, acc, start_ms, span_ms) for acc in picks]
    calls.sort(key=lambda c: c["started_at"])
    return calls


def _call(rng: random.Random, seed: int, acc: Account, start_ms: int, span_ms: int) -> dict[str, Any]:
    rand = rng.random
    country = COUNTRIES[acc.region]
    started = _started_at(rng, start_ms, span_ms, country.utc_offset_h)
    own = rng.choice(acc.numbers)
    other_region = acc.region if rand() < 0.85 else rng.choice(REGIONS)
    other = rng.choice(number_pool(seed, other_region))
    outbound = rand() < 0.55
    sms = rand() < 0.12
    app = bool(acc.devices) and not sms and rand() < 0.6
    own_s, other_s = own.as_written(rng, acc.region), other.as_written(rng, acc.region)
    rec: dict[str, Any] = {
        "event_id": _uuid(rng),
        "account_id": acc.account_id,
        "org_id": acc.org_id,
        "carrier_id": acc.carrier_id,
        "kind": "sms" if sms else "voice",
        "direction": "outbound" if outbound else "inbound",
        "caller": own_s if outbound else other_s,
        "callee": other_s if outbound else own_s,
        "started_at": started,
        "answered_at": None,
        "ended_at": None,
        "duration_s": 0,
        "status": "answered",
        "cell_id": None,
        "caller_ip": None,
        "device": None,
        "recording_uri": None,
        "transcript": None,
        "attributes": None,
    }
    if sms:
        rec["status"] = "answered" if rand() < 0.97 else "failed"
        rec["ended_at"] = started
    else:
        status = _weighted(rng, STATUSES)
        rec["status"] = status
        ring = 1500 + int(rand() * 23500)
        if status == "answered":
            duration = min(4 * 3600, max(1, int(rng.lognormvariate(math.log(75), 1.1))))
            answered = started + ring
            rec.update(answered_at=answered, ended_at=answered + duration * 1000 + int(rand() * 1000))
            rec["duration_s"] = duration
            if rand() < 0.3:
                day = started // DAY_MS
                rec["recording_uri"] = f"s3://rec-{acc.carrier_id}/{day}/{rec['event_id']}.opus"
                if rand() < 0.4:
                    rec["transcript"] = generate_transcript(rng, acc.region).text
        else:
            rec["ended_at"] = started + (ring if status != "failed" else rng.randrange(200, 3000))
    if app:
        rec["device"] = dict(rng.choice(acc.devices))
        rec["caller_ip"] = rng.choice(acc.ips)
    elif own.mobile:
        mnc = CARRIERS[acc.carrier_id][1]
        rec["cell_id"] = f"{country.mcc}-{mnc}-{1 + int(rand() * 65534)}-{1 + int(rand() * 268435454)}"
    if rand() < 0.5:
        rec["attributes"] = _attributes(rng, seed, acc)
    return rec


def _attributes(rng: random.Random, seed: int, acc: Account) -> dict[str, str]:
    attrs = {
        "trunk_group": f"tg-{1 + int(rng.random() * 39)}",
        "codec": rng.choice(("opus", "G.711a", "G.722", "AMR-WB")),
        "sip_call_id": f"{rng.getrandbits(64):016x}@sbc{1 + int(rng.random() * 8)}.{acc.carrier_id}.net",
    }
    if rng.random() < 0.3:
        attrs["queue"] = rng.choice(("billing", "support", "sales", "retention"))
    if rng.random() < 0.2:
        attrs["campaign"] = rng.choice(("winter-2026", "spring-promo", "renewals-q4"))
    if rng.random() < 0.05:
        other = rng.choice(number_pool(seed, acc.region))
        attrs["note"] = f"callback requested on {other.international}"
    if rng.random() < 0.04:
        attrs[rng.choice(SECRET_KEYS)] = f"{rng.getrandbits(40):010x}"
    return attrs


# ---------------------------------------------------------------- consents and privacy requests


def generate_consents(
    seed: int, accounts: tuple[Account, ...], start_ms: int, span_ms: int = DAY_MS
) -> list[dict[str, Any]]:
    """ConsentEvents: grants stamped before the window, grants and withdrawals inside it."""
    rng = random.Random(f"{seed}:consents:{start_ms}:{span_ms}")
    out: list[dict[str, Any]] = []

    def event(acc: Account, purpose: str, granted: bool, at: int) -> None:
        out.append(
            {
                "account_id": acc.account_id,
                "purpose": purpose,
                "granted": granted,
                "at": at,
                "source": rng.choice(SOURCES),
            }
        )

    def before() -> int:
        return start_ms - rng.randrange(HOUR_MS, 365 * DAY_MS)

    def during() -> int:
        return start_ms + rng.randrange(span_ms)

    for acc in accounts:
        for purpose, prior, change in (("recording", 0.4, 0.1), ("transcription", 0.3, 0.08)):
            r = rng.random()
            if r < prior:
                event(acc, purpose, True, before())
                if rng.random() < change:
                    event(acc, purpose, False, during())
            elif r < prior + change:
                event(acc, purpose, True, during())
        if rng.random() < 0.06:  # analytics is on by default; some withdraw, a few come back
            first = before() if rng.random() < 0.5 else during()
            event(acc, "analytics", False, first)
            if rng.random() < 0.3:
                event(acc, "analytics", True, first + rng.randrange(1, HOUR_MS))
    out.sort(key=lambda e: e["at"])
    return out


def generate_requests(
    seed: int, accounts: tuple[Account, ...], start_ms: int, span_ms: int = DAY_MS, share: float = 0.02
) -> list[dict[str, Any]]:
    """PrivacyRequests for about `share` of the accounts, inside the window."""
    rng = random.Random(f"{seed}:requests:{start_ms}:{span_ms}")
    out: list[dict[str, Any]] = []
    kinds = (("erase", 30), ("access", 30), ("object", 15), ("restrict", 25))
    for acc in accounts:
        if rng.random() >= share:
            continue
        kind = _weighted(rng, kinds)
        at = start_ms + rng.randrange(span_ms)
        out.append(
            {
                "request_id": _uuid(rng),
                "account_id": acc.account_id,
                "kind": kind,
                "at": at,
                "corrections": None,
            }
        )
        if kind == "restrict" and rng.random() < 0.4:
            later = at + rng.randrange(1, max(2, start_ms + span_ms - at))
            out.append(
                {
                    "request_id": _uuid(rng),
                    "account_id": acc.account_id,
                    "kind": "unrestrict",
                    "at": later,
                    "corrections": None,
                }
            )
    out.sort(key=lambda e: e["at"])
    return out


def generate_traffic(
    seed: int, count: int, start_ms: int, span_ms: int = DAY_MS, *, accounts: int = DEFAULT_ACCOUNTS
) -> Traffic:
    accs = generate_accounts(seed, accounts)
    return Traffic(
        accs,
        generate_calls(seed, count, start_ms, span_ms, accounts=accs),
        generate_consents(seed, accs, start_ms, span_ms),
        generate_requests(seed, accs, start_ms, span_ms),
    )


# ---------------------------------------------------------------- deliberately bad messages


def generate_bad_messages(seed: int, count: int, start_ms: int = 1_767_225_600_000) -> list[BadMessage]:
    """calls.raw values that decoding must reject, each with its reason code (cycled by kind)."""
    from pipeline import codec  # local: codec is only needed for the bad-message tooling

    rng = random.Random(f"{seed}:bad")
    base = generate_calls(seed, max(1, count), start_ms, HOUR_MS)
    out: list[BadMessage] = []
    for i, call in enumerate(base[:count]):
        acc = call["account_id"]
        good_avro = codec.encode([call], "CallEvent", "avro")[0]
        kind = i % 7
        if kind == 0:
            value, reason = codec.to_json(call, "CallEvent")[: -rng.randrange(2, 30)], Reason.MALFORMED
        elif kind == 1:
            value, reason = good_avro[: rng.randrange(6, len(good_avro) - 1)], Reason.MALFORMED
        elif kind == 2:
            value, reason = b"\x00" + (999).to_bytes(4, "big") + good_avro[5:], Reason.UNKNOWN_SCHEMA_ID
        elif kind == 3:
            value, reason = (
                codec.to_json({**call, "duration_s": str(call["duration_s"])}, "CallEvent"),
                Reason.WRONG_TYPE,
            )
        elif kind == 4:
            value = codec.to_json({k: v for k, v in call.items() if k != "started_at"}, "CallEvent")
            reason = Reason.MISSING_FIELD
        elif kind == 5:
            value, reason = codec.to_json({**call, "status": "dropped"}, "CallEvent"), Reason.UNKNOWN_ENUM
        else:
            value, reason = b"", Reason.EMPTY
        out.append(BadMessage(value, reason, acc))
    return out
