"""A generator of big, realistic lakes for tests and benchmarks, written straight with pyarrow.

It writes what the stream would write, faster: vault and analytics files with the column
contract of `schemas/zones.py`, in the layout of `sinks/layout.py`, one day partition per day and
one folder per hash bucket of the account (`layout.bucket_of(account_token, buckets)`), zstd,
Bloom filters on account_id / account_token, rows sorted by account inside each file.

Shape (what makes erasure and retention non-trivial): accounts are active on about
`active_days` of `days` days (35 of 180 by default, as measured on real call data), with a
spread of activity per account and ~`calls_per_day` calls on an active day; a share of accounts
granted recording or transcription, so those columns are sparse; app calls carry a device and an
IP. Everything is seeded: the same spec and key give the same lake.

Days are generated in `workers` processes (spawned, each rebuilding the small pools from the
spec), so 10 million rows over 180 days take a few minutes on 2 cores.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.replace import write_parquet
from pipeline.keys import Domain, PseudonymKey
from schemas.clock import DAY_MS
from schemas.zones import analytics_schema, vault_schema
from sinks import crypt
from sinks.layout import ANALYTICS, VAULT, bucket_of, partition_dir

KAFKA_PARTITIONS = 4
OFFSET_STRIDE = 10_000_000  # source_offset = day index * stride + row: unique per partition


@dataclass(frozen=True)
class SynthSpec:
    rows: int = 10_000_000  # approximate total calls (vault rows)
    days: int = 180
    last_day: str = "2026-11-28"
    buckets: int = 8
    active_days: float = 35.0
    calls_per_day: float = 3.0
    files_per_partition: int = 1
    recording_share: float = 0.2  # accounts that granted recording
    transcript_share: float = 0.2  # accounts that granted transcription
    restricted_share: float = 0.01  # accounts kept out of analytics
    seed: int = 7
    workers: int = 2

    @property
    def active_share(self) -> float:
        return min(self.active_days / self.days, 1.0)

    @property
    def accounts(self) -> int:
        return max(10, round(self.rows / (self.active_share * self.days * self.calls_per_day)))

    @property
    def first_day(self) -> date:
        return date.fromisoformat(self.last_day) - timedelta(days=self.days - 1)


def account_id(i: int) -> str:
    return f"acct-{i:07d}"


@dataclass(frozen=True)
class _Pools:
    """Per-account and per-number attributes, identical in every worker for one spec and key."""

    activity: np.ndarray  # probability of being active on a day
    bucket: np.ndarray
    kafka_partition: np.ndarray
    org: np.ndarray
    recording: np.ndarray
    transcription: np.ndarray
    restricted: np.ndarray
    app: np.ndarray
    account_ids: pa.Array
    account_tokens: pa.Array
    org_ids: pa.Array
    org_tokens: pa.Array
    phones: pa.Array  # account phones
    phone_tokens: pa.Array
    others: pa.Array  # a pool of numbers called and calling
    other_tokens: pa.Array
    other_country: pa.Array
    ips: pa.Array
    ip_prefixes: pa.Array
    device_ids: pa.Array
    device_tokens: pa.Array
    device_os: pa.Array
    cells: pa.Array
    cell_areas: pa.Array
    transcripts: pa.Array
    redacted: pa.Array


TEMPLATES = [
    (
        "Hi, this is about my order {n}, can you call me back on {p}?",
        "Hi, this is about my order {n}, can you call me back on [PHONE]?",
    ),
    (
        "My invoice for {m} looks wrong, email me at jo{n}@example.com",
        "My invoice for {m} looks wrong, email me at [EMAIL]",
    ),
    ("Meeting moved to {h}:30, see you then", "Meeting moved to {h}:30, see you then"),
    ("Please update my card ending {n}, thanks", "Please update my card ending {n}, thanks"),
    ("Reach me at {p} after {h} o'clock", "Reach me at [PHONE] after {h} o'clock"),
]
MONTHS = ["January", "March", "May", "July", "October"]


@cache
def _pools(spec: SynthSpec, version: str, secret: bytes) -> _Pools:
    key = PseudonymKey(version, secret)
    rng = np.random.default_rng(spec.seed)
    n = spec.accounts
    mean = spec.active_share
    activity = np.clip(rng.lognormal(np.log(mean), 0.5, n), 1.0 / spec.days, 1.0)
    activity = np.clip(activity * mean / activity.mean(), 0.0, 1.0)
    ids = [account_id(i) for i in range(n)]
    tokens = [key.token(Domain.ACCOUNT, a) for a in ids]
    n_orgs = max(1, n // 50)
    org_ids = [f"org-{i:05d}" for i in range(n_orgs)]
    phones = [f"+447{700000000 + i:09d}" for i in range(n)]
    n_other = max(1000, n)
    countries = rng.choice(np.array([44, 1, 49, 33], dtype=np.int16), n_other, p=[0.6, 0.2, 0.1, 0.1])
    lead = {44: "+447", 1: "+1202", 49: "+4915", 33: "+336"}
    others = [f"{lead[int(c)]}{(i * 7919) % 10**7:07d}{i % 100:02d}" for i, c in enumerate(countries)]
    ips = [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(n)]
    devices = [f"dev-{i:07d}" for i in range(n)]
    cells = [f"234-15-{lac}-{ci}" for lac in range(100, 150) for ci in range(40)]
    texts, redacted = [], []
    for t in range(200):
        raw, red = TEMPLATES[t % len(TEMPLATES)]
        fill = {"n": 1000 + t * 37, "p": f"+44 7700 900{t % 1000:03d}", "m": MONTHS[t % 5], "h": 8 + t % 10}
        texts.append(raw.format(**fill))
        redacted.append(red.format(**fill))
    return _Pools(
        activity=activity,
        bucket=np.array([bucket_of(t, spec.buckets) for t in tokens], dtype=np.int32),
        kafka_partition=np.array([int(t[:8], 16) % KAFKA_PARTITIONS for t in tokens], dtype=np.int32),
        org=rng.integers(0, n_orgs, n),
        recording=rng.random(n) < spec.recording_share,
        transcription=rng.random(n) < spec.transcript_share,
        restricted=rng.random(n) < spec.restricted_share,
        app=rng.random(n) < 0.3,
        account_ids=pa.array(ids),
        account_tokens=pa.array(tokens),
        org_ids=pa.array(org_ids),
        org_tokens=pa.array([key.token(Domain.ORG, o) for o in org_ids]),
        phones=pa.array(phones),
        phone_tokens=pa.array([key.token(Domain.PHONE, p) for p in phones]),
        others=pa.array(others),
        other_tokens=pa.array([key.token(Domain.PHONE, p) for p in others]),
        other_country=pa.array(countries),
        ips=pa.array(ips),
        ip_prefixes=pa.array([ip.rsplit(".", 1)[0] + ".0/24" for ip in ips]),
        device_ids=pa.array(devices),
        device_tokens=pa.array([key.token(Domain.DEVICE, d) for d in devices]),
        device_os=pa.array(["android 14", "ios 17.5", "android 13", "ios 18.1"]),
        cells=pa.array(cells),
        cell_areas=pa.array([c.rsplit("-", 1)[0] for c in cells]),
        transcripts=pa.array(texts),
        redacted=pa.array(redacted),
    )


def _ts(ms: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    return pa.array(ms, type=pa.timestamp("ms", tz="UTC"), mask=None if valid is None else ~valid)


def _masked(values: pa.Array, valid: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(valid), values, pa.nulls(len(values), values.type))


def _day(spec: SynthSpec, version: str, secret: bytes, lake: str, day_index: int) -> tuple[int, int, int]:
    """Generate and write one day; returns (vault rows, analytics rows, files)."""
    p = _pools(spec, version, secret)
    rng = np.random.default_rng([spec.seed, day_index])
    day = spec.first_day + timedelta(days=day_index)
    day_ms = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    active = np.flatnonzero(rng.random(len(p.activity)) < p.activity)
    calls = 1 + rng.poisson(max(spec.calls_per_day - 1, 0), len(active))
    acc = np.repeat(active, calls)
    n = len(acc)
    started = day_ms + rng.integers(0, DAY_MS - 3_600_000, n)
    order = np.lexsort((started, acc, p.bucket[acc]))
    acc, started = acc[order], started[order]
    kind_sms = rng.random(n) < 0.2
    outbound = rng.random(n) < 0.5
    status = rng.choice(
        np.array(["answered", "busy", "no_answer", "failed", "cancelled"]), n, p=[0.7, 0.08, 0.12, 0.05, 0.05]
    )
    answered = (status == "answered") & ~kind_sms
    ring = rng.integers(2_000, 20_000, n)
    duration = np.where(answered, rng.lognormal(4.5, 1.0, n).astype(np.int64) + 1, 0).astype(np.int32)
    ended = started + ring + duration.astype(np.int64) * 1000
    other = rng.integers(0, len(p.others), n)
    app = p.app[acc]
    recorded = answered & p.recording[acc]
    transcribed = answered & p.transcription[acc]
    template = rng.integers(0, len(p.transcripts), n)
    cell = rng.integers(0, len(p.cells), n)
    has_cell = ~app
    acc_idx, other_idx = pa.array(acc), pa.array(other)
    offsets = day_index * OFFSET_STRIDE + np.arange(n, dtype=np.int64)
    event_ids = pc.binary_join_element_wise(
        "ev", f"{day:%Y%m%d}", pc.cast(pa.array(offsets), pa.string()), "-"
    )
    own_phone, other_phone = p.phones.take(acc_idx), p.others.take(other_idx)
    out = pa.array(outbound)
    status_arr = pa.array(status)
    kind = pc.if_else(pa.array(kind_sms), "sms", "voice")
    direction = pc.if_else(out, "outbound", "inbound")
    device_os = p.device_os.take(pa.array(acc % len(p.device_os)))
    lineage = {
        "source_partition": pa.array(p.kafka_partition[acc], pa.int32()),
        "source_offset": pa.array(offsets),
        "source_index": pa.array(np.zeros(n, dtype=np.int32)),
    }
    has_attr = np.arange(n) % 10 == 0
    attributes = pa.MapArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(has_attr)]).astype(np.int32)),
        pa.array(np.full(int(has_attr.sum()), "trunk")),
        pc.binary_join_element_wise("t", pc.cast(pa.array(acc[has_attr] % 7), pa.string()), ""),
        mask=pa.array(~has_attr),
    )
    device = pa.StructArray.from_arrays(
        [p.device_ids.take(acc_idx), pa.array(np.full(n, "phone")), device_os, pa.array(np.full(n, "5.2.1"))],
        fields=list(vault_schema().field("device").type),
        mask=pa.array(~app),
    )
    vault = pa.table(
        {
            "event_id": event_ids,
            "account_id": p.account_ids.take(acc_idx),
            "org_id": p.org_ids.take(pa.array(p.org[acc])),
            "carrier_id": pa.array(np.where(acc % 3 == 0, "carrier-b", "carrier-a")),
            "kind": kind,
            "direction": direction,
            "caller": pc.if_else(out, own_phone, other_phone),
            "callee": pc.if_else(out, other_phone, own_phone),
            "started_at": _ts(started),
            "answered_at": _ts(started + ring, answered),
            "ended_at": _ts(ended),
            "duration_s": pa.array(duration),
            "status": status_arr,
            "cell_id": _masked(p.cells.take(pa.array(cell)), has_cell),
            "caller_ip": _masked(p.ips.take(acc_idx), app),
            "device": device,
            "recording_uri": _masked(
                pc.binary_join_element_wise("s3://callpipe-recordings/", event_ids, ".wav", ""), recorded
            ),
            "transcript": _masked(p.transcripts.take(pa.array(template)), transcribed),
            "attributes": attributes,
            **lineage,
        },
        schema=vault_schema(),
    )
    own_token, other_token = p.phone_tokens.take(acc_idx), p.other_tokens.take(other_idx)
    own_cc = pa.array(np.full(n, 44, dtype=np.int16))
    other_cc = p.other_country.take(other_idx)
    analytics = pa.table(
        {
            "event_id": event_ids,
            "account_token": p.account_tokens.take(acc_idx),
            "org_token": p.org_tokens.take(pa.array(p.org[acc])),
            "carrier_id": vault["carrier_id"],
            "kind": kind,
            "direction": direction,
            "caller_token": pc.if_else(out, own_token, other_token),
            "caller_country": pc.if_else(out, own_cc, other_cc),
            "caller_type": pa.array(np.full(n, "mobile")),
            "callee_token": pc.if_else(out, other_token, own_token),
            "callee_country": pc.if_else(out, other_cc, own_cc),
            "callee_type": pa.array(np.full(n, "mobile")),
            "started_at": vault["started_at"],
            "answered_at": vault["answered_at"],
            "ended_at": vault["ended_at"],
            "duration_s": vault["duration_s"],
            "status": status_arr,
            "cell_area": _masked(p.cell_areas.take(pa.array(cell)), has_cell),
            "caller_ip_prefix": _masked(p.ip_prefixes.take(acc_idx), app),
            "device_token": _masked(p.device_tokens.take(acc_idx), app),
            "device_type": _masked(pa.array(np.full(n, "phone")), app),
            "device_os": _masked(device_os, app),
            "device_app_version": _masked(pa.array(np.full(n, "5.2.1")), app),
            "has_recording": pa.array(recorded),
            "transcript": _masked(p.redacted.take(pa.array(template)), transcribed),
            "attributes": attributes,
            "key_version": pa.array(np.full(n, version)),
            **lineage,
        },
        schema=analytics_schema(),
    )
    keep = ~p.restricted[acc]
    buckets = p.bucket[acc]
    bounds = np.searchsorted(buckets, np.arange(spec.buckets + 1))
    files = 0
    analytics_rows = 0
    for b in range(spec.buckets):
        lo, hi = int(bounds[b]), int(bounds[b + 1])
        if lo == hi:
            continue
        cuts = np.linspace(lo, hi, spec.files_per_partition + 1).astype(int)
        for f in range(spec.files_per_partition):
            a, z = int(cuts[f]), int(cuts[f + 1])
            if a == z:
                continue
            name = f"synth-{day:%Y%m%d}-b{b:02d}-{f:03d}.parquet"
            write_parquet(vault.slice(a, z - a), partition_dir(Path(lake), VAULT, f"{day}", b) / name, VAULT)
            rows = analytics.slice(a, z - a).filter(pa.array(keep[a:z]))
            files += 1
            if rows.num_rows:
                write_parquet(rows, partition_dir(Path(lake), ANALYTICS, f"{day}", b) / name, ANALYTICS)
                analytics_rows += rows.num_rows
                files += 1
    return n, analytics_rows, files


def _day_star(args: tuple[SynthSpec, str, bytes, str, int]) -> tuple[int, int, int]:
    return _day(*args)


def build(lake: Path, key: PseudonymKey, spec: SynthSpec = SynthSpec()) -> dict[str, Any]:
    """Write a synthetic lake; returns what was written and how long it took."""
    started = time.monotonic()
    tasks = [(spec, key.version, key.secret, str(lake), d) for d in range(spec.days)]
    if spec.workers > 1:
        # the vault written with this process's keys in the spawned workers too
        spawn = multiprocessing.get_context("spawn")
        with spawn.Pool(
            spec.workers, initializer=crypt.configure_from, initargs=(crypt.for_subprocess(),)
        ) as pool:
            results = pool.map(_day_star, tasks, chunksize=1)
    else:
        results = [_day_star(t) for t in tasks]
    return {
        "spec": asdict(spec),
        "accounts": spec.accounts,
        "vault_rows": sum(r[0] for r in results),
        "analytics_rows": sum(r[1] for r in results),
        "files": sum(r[2] for r in results),
        "seconds": round(time.monotonic() - started, 1),
    }
