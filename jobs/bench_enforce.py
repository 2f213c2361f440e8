"""The cost of `jobs requests`' enforcement (step 3) against the number of subjects erased in the
lake's history: one pass with nothing new to do, on a lake with N previously erased subjects,
as a ratio to the same pass with one (what `callpipe bench jobs` reports as `enforcement`).

The lake (`jobs.synth`) is small; what grows is the ledger: N erase requests recorded as
fulfilled (their raw-id files kept in the vault, as erasure keeps them: the suppression list),
and `_rejects/` of `files` dead-letter files in the forms the stream and `callpipe ingest` keep
(JSON events, some with escaped text, Confluent Avro, deflate containers), none of them the erased
subjects'. Each pass runs on a copy of the same lake, so every one starts from the same state.
The figures: seconds, `ratio_to_one` (the pass over N against the pass over one erased subject:
N when the cost is linear in the history, as it was before enforcement read `_rejects/` once a
pass), `ms_per_subject` (what each erased subject adds to the pass over none).
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb

from jobs import audit, intake, ledger
from jobs import requests as requests_job
from jobs.ledger import iso
from jobs.synth import SynthSpec, account_id, build
from pipeline import codec
from pipeline.carrier import generate
from pipeline.keys import PseudonymKey
from pipeline.policy import DEFAULT_POLICY
from schemas import clock
from sinks.rejects import write_rejects

BENCH_KEY = PseudonymKey("bench", bytes(range(32)))
NOW = datetime(2026, 11, 29, tzinfo=UTC)
LINES_PER_FILE = 40


def _dead_letters(lake: Path, accounts: int, files: int, seed: int = 3) -> int:
    """`files` dead-letter files of LINES_PER_FILE lines, of the lake's own accounts."""
    rng = random.Random(seed)
    start = clock.to_ms(NOW - timedelta(days=2))
    pool = generate.generate_calls(seed, 400, start)
    lines = 0
    for f in range(files):
        raws = []
        for _ in range(LINES_PER_FILE):
            calls = [dict(c, account_id=account_id(rng.randrange(accounts))) for c in rng.sample(pool, 3)]
            form = rng.random()
            if form < 0.55:  # one JSON event (the stream's and ingest's commonest reject)
                raws.append(codec.to_json(calls[0], "CallEvent"))
            elif form < 0.7:  # escaped text: every subject's spellings are searched for in it
                raws.append(codec.to_json(dict(calls[0], device_model="Caf\u00e9\u2122"), "CallEvent"))
            elif form < 0.9:  # Confluent Avro, one event
                raws.append(codec.encode([calls[0]], "CallEvent", "avro")[0])
            else:  # a deflate container cut short, kept whole by ingest: decoded to be searched
                raws.append(codec.encode_container(calls, "CallEvent")[:-9])
        entry = {"reason": "bad_duration", "stage": "validate", "index": None}
        dead = [SimpleNamespace(**entry, offset=i, raw=r) for i, r in enumerate(raws)]
        base = f * LINES_PER_FILE
        write_rejects(lake, f"stream-{f % 4}", base, base + len(raws) - 1, dead)
        lines += len(raws)
    return lines


def _erased(lake: Path, key: PseudonymKey, n: int, accounts: int) -> None:
    """N erase requests fulfilled in the past, of accounts the lake no longer holds (ids that sort
    among the lake's, so statistics do not rule them out: `acct-0000042-gone-17`)."""
    at = iso(NOW - timedelta(days=3))
    entries: list[dict[str, Any]] = []
    for i in range(n):
        rid, account = f"bench-erase-{i:06d}", f"{account_id(i % accounts)}-gone-{i}"
        intake.write(lake, rid, {"request_id": rid, "account_id": account, "kind": "erase", "at": 0})
        found = {"vault": 0, "analytics": 0, "dead_letters": 0, "access_exports": 0}
        entries += [
            {
                "event": "received",
                "request": rid,
                "kind": "erase",
                "subject": audit.subject_ref(key, account),
                "requested_at": at,
                "received_at": at,
                "deadline": at,
                "source": "file",
                "at": at,
            },
            {"event": "in_progress", "request": rid, "at": at, "found": found},
            {"event": "fulfilled", "request": rid, "at": at, "touched": {"rows_removed": found}},
        ]
    ledger.append(lake, entries)


def _pass(lake: Path, buckets: int) -> tuple[float, dict[str, Any]]:
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    started = time.monotonic()
    result = requests_job.run(
        con, lake, BENCH_KEY, buckets=buckets, deadlines=DEFAULT_POLICY.requests, now=NOW
    )
    return time.monotonic() - started, result


def sizes(quick: bool) -> tuple[tuple[int, ...], int]:
    """(N erased subjects of each pass, dead-letter files) of a quick or a full run."""
    return ((0, 1, 100, 1000), 50) if quick else ((0, 1, 100, 1000, 10_000), 200)


def run(
    subjects: tuple[int, ...] = (0, 1, 100, 1000),
    files: int = 100,
    rows: int = 40_000,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Time one idle pass per N in `subjects` (each on a fresh copy): its seconds, its ratio to
    the pass with one erased subject (N, were the cost linear in N), and the milliseconds each
    erased subject adds to the pass with none."""
    spec = SynthSpec(rows=rows, days=14, buckets=8, workers=1, seed=11)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        lake = root / "lake"
        build(lake, BENCH_KEY, spec)
        lines = _dead_letters(lake, spec.accounts, files)
        out: dict[str, Any] = {
            "lake": {"accounts": spec.accounts, "dead_letter_files": files, "dead_letters": lines},
            "passes": {},
        }
        for n in subjects:
            work = root / f"n{n}"
            shutil.copytree(lake, work)
            _erased(work, BENCH_KEY, n, spec.accounts)
            seconds, result = _pass(work, spec.buckets)
            assert result["enforced"] == 0, result
            out["passes"][str(n)] = {"seconds": round(seconds, 3)}
            shutil.rmtree(work)
    none = out["passes"].get("0", {}).get("seconds")
    one = out["passes"].get("1", {}).get("seconds")
    for n, p in out["passes"].items():
        if int(n) > 1 and one:  # a pass's growth with the history: linear would be N
            p["ratio_to_one"] = round(p["seconds"] / one, 2)
        if int(n) and none is not None:
            p["ms_per_subject"] = round(1000 * (p["seconds"] - none) / int(n), 2)
    return out


if __name__ == "__main__":
    import sys

    import orjson

    from pipeline.settings import Settings
    from sinks import crypt

    crypt.configure_temporary(encrypted=Settings.from_env().vault_encryption)  # no CLI here
    ns = tuple(int(a) for a in sys.argv[1].split(",")) if len(sys.argv) > 1 else (0, 1, 100, 1000)
    nfiles = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    sys.stdout.buffer.write(orjson.dumps(run(ns, nfiles), option=orjson.OPT_INDENT_2) + b"\n")
