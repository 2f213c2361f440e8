"""anonymize killed with SIGKILL at random moments: every aggregate reads as its old or its new
version, never a mix or a torn file, and the next run finishes the work."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from jobs.anonymize import AGGREGATES, aggregate_path
from tests.support.analysis_lake import T0, analytics_row, write_zone

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TRIALS = 12
# With noise on (the policy's default): a rebuild gives the same bytes, noise included.
RUN = """
import sys, duckdb
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from jobs.anonymize import anonymize
from jobs.anonymize_noise import Noise
from jobs.noise import NoiseKey
noise = Noise(NoiseKey("v1", bytes(range(32))), Fraction(1))
anonymize(duckdb.connect(), Path(sys.argv[1]), k=5, as_of=datetime.fromisoformat(sys.argv[2]), noise=noise)
"""
OLD_AS_OF = (T0 + timedelta(days=4)).isoformat()
NEW_AS_OF = (T0 + timedelta(days=9)).isoformat()


def _run(lake: Path, as_of: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", RUN, str(lake), as_of], stderr=subprocess.DEVNULL)


def _digests(lake: Path) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for agg in AGGREGATES:
        path = aggregate_path(lake, agg.name)
        out[agg.name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    return out


def test_killed_anonymize_leaves_old_or_new_aggregates(lake: Path) -> None:
    rng = random.Random(8)
    rows = [
        analytics_row(
            s,
            T0 + timedelta(hours=rng.randrange(24 * 10), minutes=rng.randrange(60)),
            caller_country=rng.choice([44, 33, 49]),
            duration_s=rng.choice([0, 30, 90, 400]),
        )
        for s in range(300)
        for _ in range(60)
    ]
    write_zone(lake, "analytics", rows)
    assert _run(lake, NEW_AS_OF).wait() == 0
    new = _digests(lake)
    started = time.monotonic()
    assert _run(lake, OLD_AS_OF).wait() == 0
    took = time.monotonic() - started
    old = _digests(lake)
    assert old != new

    for trial in range(TRIALS):
        proc = _run(lake, NEW_AS_OF)
        time.sleep(rng.uniform(0.3 * took, took))  # past start-up, mostly
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = _digests(lake)
        for agg in AGGREGATES:
            assert now[agg.name] in (old[agg.name], new[agg.name]), f"trial {trial}: {agg.name} torn"
            duckdb.connect().execute(f"SELECT count(*) FROM '{aggregate_path(lake, agg.name)}'").fetchall()
        assert _run(lake, NEW_AS_OF).wait() == 0  # the next run finishes the work
        assert _digests(lake) == new
        for agg in AGGREGATES:
            assert os.listdir(aggregate_path(lake, agg.name).parent) == [f"{agg.name}.parquet"]
        assert _run(lake, OLD_AS_OF).wait() == 0  # back to the old state for the next trial
