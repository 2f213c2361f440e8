"""`callpipe worker --processes N`: one command, N members of the consumer group.

A worker process runs the chain in Python, so it uses one core. Kafka Streams runs
`num.stream.threads` consumers in one instance for the same reason; Python's threads share one
interpreter lock, so here the members are processes. Each member is today's worker, unchanged: it
joins the group, owns the calls partitions the group gives it, reads the control streams whole
(pipeline/stream/control.py) and lands into the lake under its partitions' writer locks. Every
guarantee of a group of workers (exactly-once per range, takeover, gaps, dead letters) is therefore
the one the suite already checks for several workers; this module only keeps them together:

  - SIGTERM or SIGINT to the command is passed to every member once; each lands what it has taken
    and leaves the group; the command exits when all have.
  - A member that stops on its own (the trip-wire, a crash, the kernel's out-of-memory killer)
    stops the others the same way: the worker fails as one, so its supervisor (systemd,
    Kubernetes) sees one failure and restarts one unit. The exit status is the trip-wire's
    (pipeline.errors.EXIT_TRIPPED) if any member tripped, else the first failure's.
  - A command killed with SIGKILL takes its members with it (Linux PR_SET_PDEATHSIG): no orphan
    keeps a partition's lake writer from its next owner.
  - The members join the group together: each reads the control state whole before it joins,
    and at a million accounts that takes long enough for siblings to finish seconds apart, more
    than the broker's `group.initial.rebalance.delay.ms`. The first would then take every
    partition alone and land them again at the rebalance the others cause. So each member, its
    state read, says so on a pipe and waits (`siblings_ready`); the command lets them all on
    when the last is ready, or after BARRIER_TIMEOUT_S (a member that slow joins late: one more
    rebalance, nothing lost), or when it stops them.

Each member holds the whole control state (about 200 MiB at a million accounts), so memory grows
with the members (docs/ARCHITECTURE.md "Consent whatever the producers' partitioning").
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

from pipeline.errors import EXIT_TRIPPED

log = logging.getLogger("callpipe.worker")

POLL_S = 0.2
BARRIER_TIMEOUT_S = 300.0
BARRIER_ENV = "CALLPIPE_WORKER_BARRIER"  # a member's "ready" and "go" pipe ends: "<write fd>,<read fd>"
_PR_SET_PDEATHSIG = 1


def member_argv(prefix: str) -> list[str]:
    """The command of one member: a worker of one process."""
    return [sys.executable, "-m", "pipeline.cli", "worker", "--prefix", prefix, "--processes", "1"]


def metrics_env(port: int) -> Callable[[int], Mapping[str, str]]:
    """Each member's metrics port: member i serves on `port` + i (none for every member at 0)."""
    return lambda i: {"CALLPIPE_METRICS_PORT": str(port + i) if port else "0"}


def _die_with_parent() -> Callable[[], None]:
    """What a member runs between fork and exec: the kernel kills it with SIGKILL when the command
    dies; if the command died before that was set, the member exits at once."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork, not in the child
    parent = os.getpid()

    def setup() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return setup


def exit_status(codes: Sequence[int], first_failure: int | None) -> int:
    """The command's exit status from its members' (a negative code: killed by that signal,
    reported as a shell does, 128 + the signal). `first_failure` is the code of the member that
    stopped on its own, if one did: even 0 is a failure then, no one asked it to stop."""
    if EXIT_TRIPPED in codes:
        return EXIT_TRIPPED
    failure = first_failure if first_failure is not None else next((c for c in codes if c != 0), 0)
    if failure < 0:
        return 128 - failure
    if failure == 0 and first_failure is not None:
        return 1
    return failure


async def siblings_ready() -> None:
    """A member's side of the join barrier: say this member is ready, wait until the command lets
    the members on (at once for a worker of one process, which has no barrier)."""
    ends = os.environ.get(BARRIER_ENV)
    if not ends:
        return
    ready, go = (int(fd) for fd in ends.split(","))
    os.write(ready, b"r")
    os.close(ready)
    os.set_blocking(go, False)  # the read end is shared: whoever reads first takes one byte
    loop = asyncio.get_running_loop()
    let_on = loop.create_future()

    def readable() -> None:
        try:
            os.read(go, 1)  # b"" if the command is gone: nothing to wait for either
        except BlockingIOError:
            return  # a sibling took the byte this wake-up was for
        if not let_on.done():
            let_on.set_result(None)

    started = time.monotonic()
    loop.add_reader(go, readable)
    try:
        await let_on
    finally:
        loop.remove_reader(go)
        os.close(go)
    log.info(
        "worker: joining the group with the other processes after waiting %.1fs", time.monotonic() - started
    )


class _Barrier:
    """The command's side: counts the members' "ready" bytes, then writes one "go" per member."""

    def __init__(self, members: int, timeout_s: float) -> None:
        self.members, self.timeout_s = members, timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.ready_r, self.ready_w = os.pipe()
        self.go_r, self.go_w = os.pipe()
        os.set_blocking(self.ready_r, False)
        self.count = 0
        self.open = True

    def env(self) -> str:
        return f"{self.ready_w},{self.go_r}"

    def started(self) -> None:
        """Every member holds its ends: the command's copies of them go."""
        os.close(self.ready_w)
        os.close(self.go_r)

    def poll(self, wait_s: float) -> None:
        """Wait up to `wait_s` for members' "ready"; let them on when all are, or at the deadline."""
        if not self.open:
            time.sleep(wait_s)
            return
        if select.select([self.ready_r], [], [], wait_s)[0]:
            try:
                got = os.read(self.ready_r, self.members)
            except BlockingIOError:
                got = b"-"  # a spurious wake-up
            if not got:  # every member has closed its end: none is left waiting
                self.release()
            self.count += got.count(b"r")
        if self.count >= self.members:
            self.release()
        elif time.monotonic() >= self.deadline:
            log.warning(
                "worker: %s of %s processes ready after %.0fs; letting them join",
                self.count,
                self.members,
                self.timeout_s,
            )
            self.release()

    def release(self) -> None:
        if self.open:
            self.open = False
            os.write(self.go_w, b"g" * self.members)  # a pipe holds far more than a byte per member

    def close(self) -> None:
        self.release()
        os.close(self.go_w)
        os.close(self.ready_r)


def supervise(
    argv: Sequence[str],
    processes: int,
    barrier_timeout_s: float = BARRIER_TIMEOUT_S,
    env_of: Callable[[int], Mapping[str, str]] | None = None,
) -> int:
    """Run `processes` members, each `argv` (and member i with `env_of(i)` in its
    environment), until they all stop; returns the exit status."""
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False
    barrier = _Barrier(processes, barrier_timeout_s)

    def stop_all() -> None:
        barrier.release()  # a member waiting for its siblings stops at once, as asked
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("worker: %s received; stopping %s processes", signal.Signals(signum).name, len(procs))
            stop_all()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    first_failure: int | None = None
    try:
        setup = _die_with_parent()
        for i in range(processes):
            member_env = {
                **os.environ,
                "CALLPIPE_WORKER_PROCESSES": "1",
                "CALLPIPE_WORKER_MEMBER": str(i),
                BARRIER_ENV: barrier.env(),
                **(env_of(i) if env_of is not None else {}),
            }
            # Its own process group: a terminal's Ctrl-C reaches the command only, which passes
            # one SIGTERM on (a member signalled twice would stop without landing).
            procs.append(
                subprocess.Popen(
                    list(argv),
                    env=member_env,
                    preexec_fn=setup,
                    process_group=0,
                    pass_fds=(barrier.ready_w, barrier.go_r),
                )
            )
            if stopping:  # a signal came while starting: the new member stops too
                stop_all()
        barrier.started()
        log.info("worker: %s processes, pids %s", processes, " ".join(str(p.pid) for p in procs))
        while [p.poll() for p in procs].count(None):  # every member polled: its status is read
            if not stopping:
                for i, p in enumerate(procs):
                    if p.returncode is not None:
                        # One member stopped on its own: the worker stops as one.
                        stopping = True
                        first_failure = p.returncode
                        log.error(
                            "worker: process %s (pid %s) exited with %s; stopping the others",
                            i,
                            p.pid,
                            p.returncode,
                        )
                        stop_all()
                        break
            barrier.poll(POLL_S)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        barrier.close()
    codes = [p.returncode for p in procs]
    if first_failure is None and not stopping:  # all stopped on their own between two looks
        first_failure = next((c for c in codes if c != 0), 0)
    return exit_status(codes, first_failure)
