"""`callpipe worker --processes N` keeps its members together (pipeline/stream/supervise.py):
real processes stand in for the members, no broker. The members' Kafka side is the e2e suite's
(tests/e2e/test_stream_e2e.py, a two-process worker killed -9 and restarted)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import EXIT_TRIPPED
from pipeline.settings import Settings
from pipeline.stream.supervise import exit_status, metrics_env
from tests.support.streamkit import ROOT, alive

# A member: writes its pid, then waits; on SIGTERM notes it (once per signal) and exits with
# the code in its file `exit-<member>` if there is one, else 0. `die-<member>` makes it exit
# on its own with that code.
MEMBER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    here = Path(sys.argv[1]); me = os.environ["CALLPIPE_WORKER_MEMBER"]
    def on_term(signum, frame):
        with open(here / f"term-{me}", "a") as f:
            f.write("x")
        code = here / f"exit-{me}"
        time.sleep(0.3)  # landing takes a moment: a second signal meanwhile would be seen
        sys.exit(int(code.read_text()) if code.exists() else 0)
    signal.signal(signal.SIGTERM, on_term)
    (here / f"pid-{me}").write_text(str(os.getpid()))
    while True:
        die = here / f"die-{me}"
        if die.exists():
            sys.exit(int(die.read_text()))
        time.sleep(0.05)
    """
)


def _argv(tmp: Path) -> list[str]:
    script = tmp / "member.py"
    script.write_text(MEMBER)
    return [sys.executable, str(script), str(tmp)]


def _command(tmp: Path, processes: int) -> subprocess.Popen[bytes]:
    """supervise() in a process of its own, as `callpipe worker --processes` runs it."""
    code = (
        "import sys; from pipeline.stream.supervise import supervise; "
        f"sys.exit(supervise({_argv(tmp)!r}, {processes}))"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)


def _pids(tmp: Path, n: int, timeout_s: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        files = [tmp / f"pid-{i}" for i in range(n)]
        if all(f.exists() and f.read_text() for f in files):
            return [int(f.read_text()) for f in files]
        time.sleep(0.05)
    raise AssertionError("the members did not start")


def _gone(pids: list[int], timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_sigterm_reaches_every_member_once_and_the_command_exits_with_them(tmp_path: Path) -> None:
    cmd = _command(tmp_path, 3)
    _pids(tmp_path, 3)
    cmd.send_signal(signal.SIGTERM)
    assert cmd.wait(20) == 0
    assert [(tmp_path / f"term-{i}").read_text() for i in range(3)] == ["x", "x", "x"]


def test_sigint_reaches_the_members_as_one_sigterm(tmp_path: Path) -> None:
    cmd = _command(tmp_path, 2)
    _pids(tmp_path, 2)
    cmd.send_signal(signal.SIGINT)
    assert cmd.wait(20) == 0
    assert [(tmp_path / f"term-{i}").read_text() for i in range(2)] == ["x", "x"]


def test_a_tripped_member_stops_the_others_and_the_command_reports_the_trip(tmp_path: Path) -> None:
    cmd = _command(tmp_path, 3)
    _pids(tmp_path, 3)
    (tmp_path / "die-1").write_text(str(EXIT_TRIPPED))
    assert cmd.wait(20) == EXIT_TRIPPED
    # the others were asked to stop (and land), the tripped one was not signalled
    assert (tmp_path / "term-0").read_text() == "x"
    assert (tmp_path / "term-2").read_text() == "x"
    assert not (tmp_path / "term-1").exists()


def test_a_member_killed_by_the_kernel_stops_the_others_and_fails_the_command(tmp_path: Path) -> None:
    cmd = _command(tmp_path, 2)
    pids = _pids(tmp_path, 2)
    os.kill(pids[0], signal.SIGKILL)  # as the out-of-memory killer would
    assert cmd.wait(20) == 128 + signal.SIGKILL
    assert (tmp_path / "term-1").read_text() == "x"


def test_a_member_that_exits_unasked_fails_the_command_even_with_status_zero(tmp_path: Path) -> None:
    cmd = _command(tmp_path, 2)
    _pids(tmp_path, 2)
    (tmp_path / "die-0").write_text("0")
    assert cmd.wait(20) == 1
    assert (tmp_path / "term-1").read_text() == "x"


def test_sigkill_of_the_command_takes_its_members_with_it(tmp_path: Path) -> None:
    cmd = _command(tmp_path, 2)
    pids = _pids(tmp_path, 2)
    cmd.kill()
    cmd.wait(10)
    assert _gone(pids), "a member outlived the killed command and would hold its partitions"


def test_members_are_told_apart_and_run_as_single_process_workers(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    script = tmp_path / "env.py"
    script.write_text(
        "import os, sys, time; from pathlib import Path\n"
        "m = os.environ['CALLPIPE_WORKER_MEMBER']\n"
        "(Path(sys.argv[1]) / m).write_text(os.environ['CALLPIPE_WORKER_PROCESSES'])\n"
        "time.sleep(60)\n"
    )
    argv = [sys.executable, str(script), str(seen)]
    code = f"import sys; from pipeline.stream.supervise import supervise; sys.exit(supervise({argv!r}, 2))"
    cmd = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    deadline = time.monotonic() + 20
    while len([p for p in seen.iterdir() if p.read_text()]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    cmd.send_signal(signal.SIGTERM)
    cmd.wait(20)
    assert {p.name: p.read_text() for p in seen.iterdir()} == {"0": "1", "1": "1"}


def test_member_i_serves_its_metrics_on_port_plus_i(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    script = tmp_path / "env.py"
    script.write_text(
        "import os, sys, time; from pathlib import Path\n"
        "m = os.environ['CALLPIPE_WORKER_MEMBER']\n"
        "(Path(sys.argv[1]) / m).write_text(os.environ['CALLPIPE_METRICS_PORT'])\n"
        "time.sleep(60)\n"
    )
    argv = [sys.executable, str(script), str(seen)]
    code = (
        "import sys; from pipeline.stream.supervise import metrics_env, supervise; "
        f"sys.exit(supervise({argv!r}, 3, env_of=metrics_env(9470)))"
    )
    cmd = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "CALLPIPE_METRICS_PORT": "1"}
    )
    deadline = time.monotonic() + 20
    while len([p for p in seen.iterdir() if p.read_text()]) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    cmd.send_signal(signal.SIGTERM)
    cmd.wait(20)
    assert {p.name: p.read_text() for p in seen.iterdir()} == {"0": "9470", "1": "9471", "2": "9472"}
    assert metrics_env(0)(2) == {"CALLPIPE_METRICS_PORT": "0"}  # off for every member, whatever the env says


@pytest.mark.parametrize(
    ("codes", "first", "status"),
    [
        ([0, 0], None, 0),  # asked to stop, all landed
        ([0, EXIT_TRIPPED, 0], EXIT_TRIPPED, EXIT_TRIPPED),
        ([0, 0, EXIT_TRIPPED], None, EXIT_TRIPPED),  # tripped while stopping
        ([-9, 0], -9, 137),
        ([0, 1], 1, 1),
        ([0, 0], 0, 1),  # exited unasked
        ([2, 0], None, 2),
    ],
)
def test_exit_status(codes: list[int], first: int | None, status: int) -> None:
    assert exit_status(codes, first) == status


def test_processes_setting_and_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert Settings.from_env({}).worker_processes == 1  # like Kafka Streams' num.stream.threads
    assert Settings.from_env({"CALLPIPE_WORKER_PROCESSES": "3"}).worker_processes == 3
    assert Settings.from_env({"CALLPIPE_WORKER_PROCESSES": "0"}).worker_processes == (os.cpu_count() or 1)
    assert main(["worker", "--processes", "-1"]) == 2
    assert "--processes must be 0 (one per core) or more" in capsys.readouterr().err


# A member with the worker's side of the join barrier: ready after `ready-<member>` seconds (its
# control state read), then notes when it was let on, or that it was stopped while waiting.
BARRIER_MEMBER = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    from pathlib import Path
    from pipeline.stream.supervise import siblings_ready
    here = Path(sys.argv[1]); me = os.environ["CALLPIPE_WORKER_MEMBER"]
    async def main():
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        (here / f"pid-{me}").write_text(str(os.getpid()))
        try:
            await asyncio.sleep(float((here / f"ready-{me}").read_text()))
        except asyncio.CancelledError:
            return  # stopped while reading its state
        (here / f"readyat-{me}").write_text(repr(time.time()))
        try:
            await siblings_ready()
        except asyncio.CancelledError:
            (here / f"stopped-{me}").write_text("waiting")
            return
        (here / f"goat-{me}").write_text(repr(time.time()))
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            pass
    asyncio.run(main())
    """
)


def _barrier_command(tmp: Path, readies: list[float], timeout_s: float = 60) -> subprocess.Popen[bytes]:
    script = tmp / "member.py"
    script.write_text(BARRIER_MEMBER)
    for i, s in enumerate(readies):
        (tmp / f"ready-{i}").write_text(str(s))
    argv = [sys.executable, str(script), str(tmp)]
    code = (
        "import sys; from pipeline.stream.supervise import supervise; "
        f"sys.exit(supervise({argv!r}, {len(readies)}, barrier_timeout_s={timeout_s}))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )


def _times(tmp: Path, name: str, n: int, timeout_s: float = 20) -> list[float]:
    deadline = time.monotonic() + timeout_s
    files = [tmp / f"{name}-{i}" for i in range(n)]
    while time.monotonic() < deadline:
        if all(f.exists() and f.read_text() for f in files):
            return [float(f.read_text()) for f in files]
        time.sleep(0.05)
    raise AssertionError(f"not every member wrote {name}")


def test_members_join_together_when_the_slowest_has_read_its_state(tmp_path: Path) -> None:
    cmd = _barrier_command(tmp_path, [0.0, 2.5, 0.5])
    try:
        ready, go = _times(tmp_path, "readyat", 3), _times(tmp_path, "goat", 3)
        # none went on before the last was ready (2.5 s after the first), and all within moments
        assert min(go) >= max(ready)
        assert max(go) - min(go) < 1.0
        assert max(ready) - min(ready) > 2.0
    finally:
        cmd.send_signal(signal.SIGTERM)
        assert cmd.wait(20) == 0


def test_a_member_that_is_never_ready_does_not_hold_the_others_past_the_timeout(tmp_path: Path) -> None:
    cmd = _barrier_command(tmp_path, [0.0, 3600.0], timeout_s=1.5)
    try:
        (ready,) = _times(tmp_path, "readyat", 1)
        (go,) = _times(tmp_path, "goat", 1)
        assert 1.0 <= go - ready < 5.0
    finally:
        cmd.send_signal(signal.SIGTERM)
        assert cmd.wait(20) == 0


def test_a_stop_while_members_wait_for_their_siblings_stops_them_at_once(tmp_path: Path) -> None:
    cmd = _barrier_command(tmp_path, [0.0, 3600.0])
    _pids(tmp_path, 2)  # both handle SIGTERM
    _times(tmp_path, "readyat", 1)
    started = time.monotonic()
    cmd.send_signal(signal.SIGTERM)
    assert cmd.wait(20) == 0
    assert time.monotonic() - started < 10  # the ready member did not wait for its sibling
    assert not (tmp_path / "readyat-1").exists()
