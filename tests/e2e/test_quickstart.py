"""The README's quick start: `bash infra/dev.sh demo` works and tells what happened to every
event, and the log of the run holds no phone number, email or IP address from the input."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

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
