"""The analysts' commands end to end: a lake in, `callpipe jobs anonymize`, `callpipe query`,
`callpipe jobs report --html` out, and the HTML rendered by headless Chromium into a non-blank
screenshot that shows the charts' colours."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib
from datetime import timedelta
from pathlib import Path

import pytest

from tests.support.analysis_lake import T0, analytics_row, vault_row, write_zone
from tests.support.ops_lake import make_key

pytestmark = pytest.mark.e2e

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHART_BLUE = (0x25, 0x63, 0xEB)  # PALETTE[0] of jobs/report_html.py
CHART_ORANGE = (0xF9, 0x73, 0x16)


def _callpipe(lake: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # the pseudonymization key: the aggregates' noise is drawn under it, and it keys the audit's
    # digest of a vault query's text
    env = {**os.environ, "CALLPIPE_LAKE": str(lake), "CALLPIPE_KEY_FILE": str(make_key(lake.parent)[0])}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def busy_lake(lake: Path) -> Path:
    rng = random.Random(4)
    rows, vault = [], []
    for s in range(200):
        for _ in range(10):
            at = T0 + timedelta(hours=rng.randrange(24 * 3), minutes=rng.randrange(60))
            rows.append(
                analytics_row(
                    s,
                    at,
                    cell_area=f"234-10-{rng.randrange(30)}",
                    caller_country=rng.choice([44, 44, 44, 33]),
                    duration_s=rng.choice([120, 400]),
                )
            )
            vault.append(vault_row(s, at, transcript="hi" if s % 3 == 0 else None))
    write_zone(lake, "analytics", rows)
    write_zone(lake, "vault", vault)
    return lake


def test_anonymize_query_report(busy_lake: Path, tmp_path: Path) -> None:
    done = _callpipe(busy_lake, "jobs", "anonymize", "--as-of", "2026-07-01T00:00:00Z", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {a["name"] for a in result["aggregates"]} == {"calls_hourly", "calls_daily"}
    assert result["source_rows"] == 2000
    assert all(a["min_subjects"] >= 5 for a in result["aggregates"])  # k, on the true counts
    # the policy's default: noisy values, and the error bars an analyst reads beside them
    hourly = next(a for a in result["aggregates"] if a["name"] == "calls_hourly")
    assert hourly["noise"]["epsilon_per_row"] == "1" and hourly["noise"]["values"]["calls"]["ci95"] == 18

    low = _callpipe(busy_lake, "query", "SELECT min(calls_ci95) AS m FROM calls_hourly", "--json")
    assert low.returncode == 0, low.stderr
    assert json.loads(low.stdout)[0]["m"] == 18
    total = _callpipe(busy_lake, "query", "SELECT count(*) AS n FROM analytics_calls", "--csv")
    assert total.stdout.splitlines() == ["n", "2000"]
    refused = _callpipe(busy_lake, "query", "SELECT count(*) FROM vault_calls")
    assert refused.returncode == 2 and "--vault" in refused.stderr
    assert _callpipe(busy_lake, "query", "SELECT count(*) FROM vault_calls", "--vault").returncode == 0
    # a vault query is audited under the pseudonymization key: without it, it does not run at all
    env = {**os.environ, "CALLPIPE_LAKE": str(busy_lake), "CALLPIPE_KEY_FILE": str(tmp_path / "none.key")}
    unkeyed = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "query", "--vault", "SELECT count(*) FROM vault_calls"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert unkeyed.returncode == 2 and "none.key" in unkeyed.stderr and not unkeyed.stdout

    html = tmp_path / "report.html"
    shown = _callpipe(
        busy_lake, "jobs", "report", "--as-of", "2026-07-01", "--html", str(html), "--sample", "200"
    )
    assert shown.returncode == 0, shown.stderr
    assert "unicity" in shown.stdout and "calls_hourly" in shown.stdout
    assert "values noisy: discrete_laplace, epsilon 1 per row" in shown.stdout
    assert "error bars (95%) calls ±18" in html.read_text()
    as_json = _callpipe(busy_lake, "jobs", "report", "--as-of", "2026-07-01", "--json")
    data = json.loads(as_json.stdout)
    assert data["zones"][0]["zone"] == "vault"
    assert [j["job"] for j in data["jobs"]] == ["anonymize"]
    assert data["reads"]["count"] == 1  # the --vault query is audited, counted beside the history

    png = tmp_path / "report.png"
    _screenshot(html, png, tmp_path / "chromium")
    width, height, pixels = _decode_png(png.read_bytes())
    assert (width, height) == (1280, 2000)
    non_white = sum(1 for p in pixels if p != (255, 255, 255))
    assert non_white > len(pixels) // 100, "the screenshot is blank"
    assert any(_near(p, CHART_BLUE) for p in pixels), "no chart bars or lines in the first colour"
    assert any(_near(p, CHART_ORANGE) for p in pixels), "no chart bars or lines in the second colour"


def test_noise_needs_the_key_and_says_so_in_one_line(lake: Path, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k != "CALLPIPE_KEY_FILE"},
        "CALLPIPE_LAKE": str(lake),
        "CALLPIPE_HOME": str(tmp_path / "home"),
    }
    run = [sys.executable, "-m", "pipeline.cli", "jobs", "anonymize", "--as-of", "2026-07-01"]
    done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no pseudonymization key" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    policy = tmp_path / "policy.toml"
    policy.write_text("[aggregates.noise]\nenabled = false\n")
    exact = subprocess.run(
        run, env={**env, "CALLPIPE_POLICY": str(policy)}, capture_output=True, text=True, timeout=300
    )
    assert exact.returncode == 0, exact.stderr
    assert "noise off (exact values)" in exact.stdout


def test_bad_as_of_is_one_clear_line(lake: Path) -> None:
    done = _callpipe(lake, "jobs", "anonymize", "--as-of", "yesterday")
    assert done.returncode == 2 and "ISO-8601" in done.stderr and "Traceback" not in done.stderr


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "chromium is not installed: `apt-get install -y chromium` (the report test needs it)", pytrace=False
    )


def _screenshot(html: Path, png: Path, profile: Path) -> None:
    cmd = [
        _chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        "--window-size=1280,2000",
        html.resolve().as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.exists(), f"chromium wrote no screenshot (exit {done.returncode})"


def _near(p: tuple[int, int, int], q: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 8 for a, b in zip(p, q, strict=True))


def _decode_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """RGB pixels (every 3rd column) of an 8-bit RGB/RGBA non-interlaced PNG, as Chromium writes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    width = height = bpp = 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + size]
        pos += 12 + size
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev = bytearray(stride)
    pixels = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        pixels += [tuple(line[x : x + 3]) for x in range(0, stride, 3 * bpp)]
        prev = line
    return width, height, pixels  # type: ignore[return-value]
