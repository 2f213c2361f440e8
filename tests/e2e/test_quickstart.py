"""The README's quick start: `bash infra/dev.sh demo` works and tells what happened to every
event, and the log of the run holds no phone number, email or IP address from the input."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.support.ops_lake import callpipe_cmd
from tests.support.streamkit import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PHONE = re.compile(r"\+\d{8,15}\b|\b0\d{2,4}[ -]?\d{3,4}[ -]?\d{3,4}\b")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
IPV6 = re.compile(r"\b(?:[0-9a-f]{1,4}:){3,7}[0-9a-f]{1,4}\b", re.I)


def test_demo_quick_start(kafka_bootstrap: str, tmp_path: Path) -> None:
    home = Path(os.environ.get("CALLPIPE_HOME", ROOT / ".cache" / "test"))
    lake = tmp_path / "demo-lake"
    out = subprocess.run(
        ["bash", "infra/dev.sh", "demo", "--events", "3000", "--lake", str(lake)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CALLPIPE_HOME": str(home)},
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "the lake holds 3000 of 3000 events" in out.stdout
    accounted = re.search(r"accounted: vault (\d+) \+ dead letters (\d+) \+ erased (\d+) = (\d+)", out.stdout)
    assert accounted is not None and int(accounted[4]) == 3000
    assert int(accounted[2]) == 30  # 1% malformed, every one a dead letter
    assert "answer rate per carrier" in out.stdout
    log_path = home / "demo" / "worker.log"
    assert oct(log_path.stat().st_mode & 0o777) == "0o600"  # the operator's alone
    log = log_path.read_text()
    for text in (log, out.stdout, out.stderr):
        assert not EMAIL.search(text)
        assert not IPV6.search(text)
        assert [ip for ip in IPV4.findall(text) if not ip.startswith(("127.", "0."))] == []
        assert not PHONE.search(text)
    # the producer's line counts both halves of the calls (Avro with the bad ones, then JSON)
    produced = re.search(r"(\d+) events in \d+ messages to demo\d+\.calls\.raw \(\+(\d+) bad\)", out.stdout)
    assert produced is not None and int(produced[1]) + int(produced[2]) == 3000
    # what the demo says to do next works: its export line points the commands at its lake and keys
    exported = re.search(r"export (.+?) \\\n\s+(.+)\n", out.stdout)
    assert exported is not None
    then = dict(pair.split("=", 1) for pair in shlex.split(exported[1] + " " + exported[2]))
    assert set(then) == {
        "CALLPIPE_LAKE",
        "CALLPIPE_KEY_FILE",
        "CALLPIPE_VAULT_KEY_FILE",
        "CALLPIPE_DLQ_KEY_FILE",
        "CALLPIPE_DLQ_PUBLIC_KEY",
    }
    env = {**os.environ, "CALLPIPE_HOME": str(home), **then}
    for argv in (
        ["jobs", "anonymize"],
        ["query", "SELECT count(*) FROM calls_daily"],
        ["query", "--vault", "SELECT 1"],
    ):
        step = subprocess.run(
            callpipe_cmd(*argv), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert step.returncode == 0, (argv, step.stderr[-2000:])
    # the subject requests the demo produced wait in its topic until a pass reads them: the line
    # the demo prints answers them, and a second pass finds nothing new
    answer = re.search(r"callpipe jobs requests --prefix (\S+)", out.stdout)
    assert answer is not None
    for expected in ("new", "none"):
        step = subprocess.run(
            callpipe_cmd("jobs", "requests", "--prefix", answer[1], "--json"),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert step.returncode == 0, step.stderr[-2000:]
        received = json.loads(step.stdout)["received"]
        assert (received > 0) if expected == "new" else (received == 0)
