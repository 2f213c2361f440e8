"""`jobs requests`' enforcement at scale: a pass reads each dead-letter file of `_rejects/` once
for all the subjects ever erased (not once per subject), probes the lake for them together, and
still erases what arrived for any of them since: a dead letter of one, a late vault row of
another, a dead letter holding two (counted for the first erased, as when each was probed in
turn). In process (`jobs.requests.run`), on a small synthetic lake."""

from __future__ import annotations

import base64
import pathlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import orjson
import pyarrow.compute as pc
import pytest

from jobs import erase, ledger, rectify, requests, withdraw
from jobs.requests_intake import Batch
from jobs.subject import BLOOM_MAX, locate, locate_many
from jobs.synth import SynthSpec, build
from jobs.withdrawals import Withdrawal
from pipeline import codec
from pipeline.carrier import generate
from pipeline.keys import PseudonymKey
from pipeline.policy import DEFAULT_POLICY
from pipeline.raw_records import subject_match
from schemas import clock
from sinks.files import write_table
from sinks.layout import ANALYTICS, VAULT, bucket_of
from sinks.read import read_zone
from sinks.rejects import REJECTS_DIR, files_in, find, write_rejects
from tests.support.ops_lake import make_key

pytestmark = pytest.mark.e2e

BUCKETS = 2
ERASED = 12
NOW = datetime(2026, 11, 29, tzinfo=UTC)
LATER = datetime(2026, 11, 29, 6, tzinfo=UTC)
AT = clock.to_ms(datetime(2026, 11, 28, 12, tzinfo=UTC))


def _pass(lake: Path, key: PseudonymKey, now: datetime, files: list[Batch] | None = None) -> dict[str, Any]:
    con = duckdb.connect()
    return requests.run(
        con, lake, key, buckets=BUCKETS, deadlines=DEFAULT_POLICY.requests, now=now, files=files or []
    )


def _keep(lake: Path, source: str, raws: list[bytes]) -> None:
    entry = {"reason": "bad_duration", "stage": "validate", "index": None}
    dead = [SimpleNamespace(**entry, offset=i, raw=raw) for i, raw in enumerate(raws)]
    write_rejects(lake, source, 0, len(raws) - 1, dead)  # type: ignore[arg-type]


def _calls(*accounts: str) -> list[dict[str, Any]]:
    pool = generate.generate_calls(4, len(accounts), AT)
    return [dict(c, account_id=a) for c, a in zip(pool, accounts, strict=True)]


def _vault_rows(lake: Path, account: str) -> int:
    return read_zone(lake, VAULT, columns=["account_id"], filter=pc.field("account_id") == account).num_rows


def _names(lake: Path) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in files_in(lake)]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Reads of each `_rejects/` file made by the pass itself, not by the erasures it runs (an
    erasure reads them to remove and to verify, as it always has)."""
    counts: Counter[str] = Counter()
    inside = [0]
    read_bytes, erase_locked = pathlib.Path.read_bytes, erase.erase_locked

    def counted(self: pathlib.Path) -> bytes:
        if REJECTS_DIR in self.parts and not inside[0]:
            counts[f"{self.parent.name}/{self.name}"] += 1
        return read_bytes(self)

    def erasing(*args: Any, **kwargs: Any) -> Any:
        inside[0] += 1
        try:
            return erase_locked(*args, **kwargs)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(pathlib.Path, "read_bytes", counted)
    monkeypatch.setattr(erase, "erase_locked", erasing)
    yield counts


def test_a_pass_reads_each_dead_letter_file_once_and_still_erases_what_arrived(
    tmp_path: Path, reads: Counter[str]
) -> None:
    _, key = make_key(tmp_path)
    lake = tmp_path / "lake"
    build(lake, key, SynthSpec(rows=3_000, days=4, buckets=BUCKETS, workers=1, seed=5, restricted_share=0.0))
    accounts = sorted(set(read_zone(lake, VAULT, columns=["account_id"])["account_id"].to_pylist()))
    erased, others = accounts[:ERASED], accounts[ERASED:]
    shown, late, first, second = erased[0], erased[1], erased[2], erased[3]
    for n, source in enumerate(("stream-0", "stream-1", "ingest-a")):  # other subjects' dead letters
        _keep(lake, source, [codec.to_json(c, "CallEvent") for c in _calls(*others[3 * n : 3 * n + 3])])
    late_rows = read_zone(lake, VAULT, filter=pc.field("account_id") == late).slice(0, 2)
    assert late_rows.num_rows == 2

    batch = [
        {"request_id": f"r-{i:02d}", "account_id": a, "kind": "erase", "at": AT + i, "corrections": None}
        for i, a in enumerate(erased)
    ]
    done = _pass(lake, key, NOW, [Batch(records=batch, source="file")])
    assert done["handled"] == {"erase fulfilled": ERASED}
    assert all(_vault_rows(lake, a) == 0 for a in erased)

    # Since: a dead letter of one erased subject, a late vault row of another, one dead letter
    # holding two of them (a batch), and one of a subject never erased.
    _keep(lake, "stream-2", [codec.to_json(_calls(shown)[0], "CallEvent")])
    both = b"\n".join(codec.to_json(c, "CallEvent") for c in _calls(first, second))
    _keep(lake, "stream-3", [both, codec.to_json(_calls(others[0])[0], "CallEvent")])
    bucket = bucket_of(key.account_token(late), BUCKETS)
    target = lake / VAULT / "calls" / "dt=2026-11-28" / f"bucket={bucket:02d}" / "late.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_table(late_rows, target, VAULT)
    before = _names(lake)
    reads.clear()

    result = _pass(lake, key, LATER)

    assert reads == dict.fromkeys(before, 1), "each dead-letter file read once by the pass"
    assert result["enforced"] == 3
    folded = ledger.requests(lake)
    by_account = {a: folded[f"r-{i:02d}"] for i, a in enumerate(erased)}
    touched = {a: [e["touched"]["rows_removed"] for e in r.enforced] for a, r in by_account.items()}
    assert touched[shown] == [{"vault": 0, "analytics": 0, "dead_letters": 1}]
    assert touched[late] == [{"vault": 2, "analytics": 0, "dead_letters": 0}]
    assert touched[first] == [{"vault": 0, "analytics": 0, "dead_letters": 1}]  # the dead letter of two
    assert touched[second] == []  # erased with the first's: nothing left when its turn came
    assert all(not touched[a] for a in erased[4:])
    assert _vault_rows(lake, late) == 0
    kept = [orjson.loads(line) for p in files_in(lake) for line in p.read_bytes().splitlines()]
    assert len(kept) == 9 + 1  # the other subjects' dead letters stay
    raws = b"".join(base64.b64decode(k["raw_b64"]) for k in kept)
    assert not any(a.encode() in raws for a in erased)

    reads.clear()
    again = _pass(lake, key, LATER)  # nothing new: nothing enforced, each file read once
    assert again["enforced"] == 0 and ledger.requests(lake) == folded
    assert reads == dict.fromkeys(_names(lake), 1)


def test_probing_many_subjects_together_finds_what_each_alone_finds(tmp_path: Path) -> None:
    """`jobs.subject.locate_many` (the lake probed per bucket for every erased subject) gives each
    value the hits `locate` gives it alone, in the encrypted vault (statistics only) and in
    analytics (statistics and Bloom filters), for subjects held and not."""
    _, key = make_key(tmp_path)
    lake = tmp_path / "lake"
    build(lake, key, SynthSpec(rows=3_000, days=4, buckets=BUCKETS, workers=1, seed=6, files_per_partition=2))
    accounts = sorted(set(read_zone(lake, VAULT, columns=["account_id"])["account_id"].to_pylist()))
    ids = [*accounts[::5], "acct-9999999", "acct-9999998"]
    con = duckdb.connect()
    held = rectify.rows_of_many(con, lake, key, ids, BUCKETS)
    assert held == {a: rectify.rows_of(con, lake, key, a, BUCKETS) for a in ids}
    assert any(h[VAULT] for h in held.values()) and any(h[ANALYTICS] for h in held.values())
    assert len(ids) > 2 * BLOOM_MAX  # more than BLOOM_MAX in a bucket: its column is read
    for some in (ids[:6], ids):  # a few: each one's Bloom filters are probed
        for zone, value_of in ((VAULT, str), (ANALYTICS, key.account_token)):
            values = {value_of(a): bucket_of(key.account_token(a), BUCKETS) for a in some}
            many = locate_many(con, lake, zone, values)
            assert many == {v: locate(con, lake, zone, v, b).hits for v, b in values.items()}
            assert any(many.values())


def test_one_read_finds_each_withdrawals_dead_letters_as_its_purge_would(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    late, early = AT + 3_600_000, AT - 3_600_000
    calls = [
        dict(c, recording_uri=uri, transcript=text, started_at=AT, answered_at=None, ended_at=None)
        for c, uri, text in zip(
            _calls("w-1", "w-1", "w-2", "e-1", "w-1"),
            ["s3://r/1", None, "s3://r/3", "s3://r/4", "s3://r/5"],
            [None, "said", None, None, "said"],
            strict=True,
        )
    ]
    calls[4]["started_at"] = late + 1  # after the withdrawals: not covered
    _keep(lake, "stream-0", [codec.to_json(c, "CallEvent") for c in calls])
    _keep(lake, "ingest-a", [codec.encode_container(calls, "CallEvent")[:-9], b'{"account_id": "w-2"'])
    checks = [
        Withdrawal("w-1", "recording", late),
        Withdrawal("w-1", "transcription", late),
        Withdrawal("w-2", "recording", early),
        Withdrawal("w-2", "analytics", late),
    ]
    erased, covered = requests.dead_letters_of(lake, ["e-1", "w-1", "nobody"], checks)
    assert erased == {a: find(lake, subject_match(a)) for a in ["e-1", "w-1", "nobody"]}
    assert covered == [withdraw._dead_letters(lake, w) for w in checks]
    assert [f.count for f in covered] == [2, 2, 0, 0]  # its calls before: a line, and the container
