"""The worker under test: a `callpipe worker` subprocess on a prefixed topic set and its own lake,
and what its lake says about when each offset range became durable."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson

from pipeline.bench.common import BenchError, proc_memory_kib
from pipeline.bench.passthrough import Commit
from pipeline.kafka_access import KafkaAccess
from pipeline.keys import create_key_file
from pipeline.sealed import ensure_keys
from sinks import crypt, lineage
from sinks.stats import read_stats, stats_path

_TICKS = os.sysconf("SC_CLK_TCK")
_RESUMES = re.compile(rb"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\].*resumes at offset", re.M)


def home_keys(home: Path) -> None:
    """The keys a worker finds in its CALLPIPE_HOME, as `callpipe kafka up` creates them: the
    operator key it seals dead letters to and the vault's master keys (a CALLPIPE_VAULT_KEY_FILE in
    the environment, as the tests set, takes precedence)."""
    ensure_keys(home / "keys" / "dlq-operator.key", home / "keys" / "dlq-operator.pub")
    crypt.ensure_key_file(home / "keys" / "vault.keys")


def worker_env(tmp: Path, access: KafkaAccess, partitions: int = 4) -> dict[str, str]:
    """The environment of a worker that flushes every second, with its own key in `tmp`,
    connecting as `access` (the worker's principal) (the takeover bench and the broker tests run
    workers so)."""
    key = tmp / "key.hex"
    if not key.exists():
        create_key_file(key)
    home_keys(tmp / "home")
    return {
        "CALLPIPE_KEY_FILE": str(key),
        # The worker's principal: its own home is elsewhere, its password file and CA are the broker's.
        **access.env(),
        "CALLPIPE_PARTITIONS": str(partitions),
        "CALLPIPE_FLUSH_SECONDS": "1",
        "CALLPIPE_FLUSH_ROWS": "5000",
        "CALLPIPE_HOME": str(tmp / "home"),
    }


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    lake: Path
    log: Path
    started: float  # wall clock
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (wall clock, CPU seconds) samples
    processes: int = 1  # members of the consumer group it runs (`callpipe worker --processes`)

    @classmethod
    def start(cls, prefix: str, lake: Path, env: dict[str, str], log: Path) -> Worker:
        full = {**os.environ, **env, "CALLPIPE_LAKE": str(lake), "CALLPIPE_LOG_LEVEL": "info"}
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "worker", "--prefix", prefix],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full,
                cwd=log.parent,
            )
        return cls(
            proc,
            lake,
            log,
            time.time(),
            processes=int(full.get("CALLPIPE_WORKER_PROCESSES", "1")) or os.cpu_count() or 1,
        )

    def pids(self) -> list[int]:
        """The command's process and its members' (`callpipe worker --processes`)."""
        try:
            members = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            members = []
        return [self.proc.pid, *(int(m) for m in members)]

    def memory_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM summed over the command and its members (a sum of each one's peak)."""
        total: dict[str, int] = {}
        for pid in self.pids():
            for name, kib in proc_memory_kib(pid).items():
                total[name] = total.get(name, 0) + kib
        return total

    def wait_for(self, events: int, timeout_s: float) -> int:
        """Poll the lake until it holds `events` events; returns the peak RSS seen (KiB)."""
        deadline = time.monotonic() + timeout_s
        held = 0
        while time.monotonic() < deadline:
            self.sample_cpu()
            held = read_stats(self.lake).events_in
            if held >= events:
                return self.memory_kib().get("VmHWM", 0)
            if self.proc.poll() is not None:
                raise BenchError(f"the worker exited with {self.proc.returncode}; see {self.log}")
            time.sleep(0.25)
        raise BenchError(f"the worker landed {held} of {events} events in {timeout_s:.0f}s; see {self.log}")

    def sample_cpu(self) -> None:
        ticks = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])
        self.cpu.append((time.time(), ticks / _TICKS))

    def idle_seconds(self, start: float, end: float, busy_share: float = 0.05) -> float:
        """Wall time between start and end in which each of the worker's processes used under
        `busy_share` of a CPU on average (waiting for its flush timer or an idle consent stream,
        not working)."""
        idle = 0.0
        share = busy_share * self.processes
        for (t0, c0), (t1, c1) in zip(self.cpu, self.cpu[1:], strict=False):
            lo, hi = max(t0, start), min(t1, end)
            if hi > lo and (c1 - c0) < share * (t1 - t0):
                idle += hi - lo
        return idle

    def first_consume(self) -> float:
        """Wall clock of the worker's first consumed message (its first partition runner)."""
        found = _RESUMES.search(self.log.read_bytes())
        if found is None:
            return self.started
        return datetime.strptime(found.group(1).decode(), "%Y-%m-%d %H:%M:%S,%f").timestamp()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def lake_commits(lake: Path) -> list[Commit]:
    """Every committed range of the lake: its manifest's time (when the range became durable)
    and the events its stats record counts."""
    out = []
    for source in lineage.sources(lake):
        for first, last in lineage.held_ranges(lake, source):
            at = lineage.manifest_path(lake, source, first, last).stat().st_mtime_ns / 1e9
            stats = stats_path(lake, source, first, last)
            events = orjson.loads(stats.read_bytes())["counts"].get("events_in", 0) if stats.exists() else 0
            out.append(Commit(source, first, last, at, events))
    return out
