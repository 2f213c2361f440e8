"""A command whose reader goes away (`callpipe ... | head`) ends quietly: its work is done and
recorded, and no "error" is printed for the closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_closed_stdout_is_not_reported_as_an_error(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes its first line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "jobs", "report"],
            stdout=write,
            stderr=subprocess.PIPE,
            env={**os.environ, "CALLPIPE_LAKE": str(lake), "CALLPIPE_VAULT_ENCRYPTION": "off"},
            cwd=ROOT,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr.decode()
    assert b"error" not in done.stderr.lower() and b"Traceback" not in done.stderr
