"""The worker's HTTP endpoint for operators: `/metrics` (Prometheus), `/healthz`, `/readyz`.

Served on the worker's own event loop, so a scrape sees the worker between two of its steps
(no lock, no copy in another thread) and a loop that stopped answering is a failed probe. A scrape
costs a walk over the owned partitions and the counters; nothing is added to the work per event:
the consume loop stamps `Liveness.turned` once per poll, the worker adds a range's stats when it
lands it, everything else is read when asked (the lag from the consumer's own fetch metadata,
aiokafka's `highwater`, without a request to the broker).

Off unless `CALLPIPE_METRICS_PORT` (or `--metrics-port`) names a port: `bind` opens the socket
before the worker starts, so a port in use stops `callpipe worker` with one line. It binds
127.0.0.1 unless `CALLPIPE_METRICS_HOST` says otherwise; it has no authentication, and answers
carry no identifiers (pipeline/stream/metrics.py), nor do its logs: it logs no request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.codec import native_decoding
from pipeline.stream.metrics import (
    CONTENT_TYPE,
    PartitionView,
    WorkerView,
    health,
    metrics_of,
    readiness,
    render,
)

log = logging.getLogger("callpipe.worker")

READ_TIMEOUT_S = 5.0
MAX_HEADER_LINES = 100
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class MetricsPortError(OSError):
    """The metrics address cannot be bound (in use, or not an address of this host)."""


def bind(host: str, port: int) -> socket.socket:
    """The listening socket of the endpoint, opened now: a port in use is an error at start-up."""
    try:
        return socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        raise MetricsPortError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or type(exc).__name__}); "
            "set CALLPIPE_METRICS_PORT (or --metrics-port) to a free port, 0 for none"
        ) from None


@dataclass
class Liveness:
    """What the runtime tells the endpoint as it goes (cheap assignments only)."""

    phase: str = "starting"  # starting | running | stopping
    joined: bool = False  # holds an assignment of its consumer group (set by the rebalance listener)
    turned: float | None = None  # time.monotonic() of the consume loop's last turn


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def runtime_view(rt: Any) -> WorkerView:
    """What a `WorkerRuntime` (pipeline/stream/app.py), its control state and its consumer show
    now; its worker and broker exist once it has started its clients."""
    life: Liveness = rt.life
    control = rt.control
    base = {
        "topic": rt.calls,
        "now_ms": int(time.time() * 1000),
        "started_ms": rt.started_ms,
        "phase": life.phase,
        "loop_age_s": None if life.turned is None else time.monotonic() - life.turned,
        "control_loaded": rt.reader.ready.is_set(),
        "control_from_snapshot": rt.reader.resumed_from_snapshot,
        "group_joined": life.joined,
        "control": dict(control.counts),
        "accounts": len(control.accounts),
        "watermarks": {(s.value, p): ms for (s, p), ms in control.watermarks.event_times().items()},
        "rss_bytes": rss_bytes(),
        "native_decoder": native_decoding(),
    }
    worker, broker = getattr(rt, "worker", None), getattr(rt, "broker", None)
    if worker is None or broker is None:
        return WorkerView(**base)
    return WorkerView(
        **base,
        tripped=worker.tripped is not None,
        partitions=_partitions(worker, broker),
        landed=dict(worker.landed),
        counters=dict(worker.counters),
        dead_pending=broker.unacknowledged + worker.dead_to_resend,
    )


def _partitions(worker: Any, broker: Any) -> tuple[PartitionView, ...]:
    from aiokafka import TopicPartition

    consumer = broker.consumer
    assigned = consumer.assignment()
    out = []
    for p in sorted(worker.owned | set(worker.stalled)):
        tp = TopicPartition(worker.topic, p)
        highwater = consumer.highwater(tp) if tp in assigned else None
        part = worker.parts.get(p)
        state = "stalled" if p in worker.stalled else "waiting_for_lake" if part is None else "open"
        out.append(
            PartitionView(
                partition=p,
                state=state,
                highwater=highwater,
                taken=part.runner.expected if part is not None else None,
                landed=part.runner.next_offset if part is not None else None,
                waiting=part.runner.waiting if part is not None else 0,
                last_landed_ms=worker.last_landed_ms.get(p),
            )
        )
    return tuple(out)


class MetricsServer:
    """A small HTTP/1.1 server (one request per connection) on a socket `bind` opened."""

    def __init__(self, sock: socket.socket, view: Callable[[], WorkerView]) -> None:
        self.sock = sock
        self.view = view
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self.sock, limit=8192)
        log.info("metrics on http://%s/metrics (/healthz, /readyz)", self.address)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a request (what `_serve` writes)."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET only\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE, render(metrics_of(self.view())).encode()
        if path in ("/healthz", "/readyz"):
            ok, doc = (health if path == "/healthz" else readiness)(self.view())
            return (200 if ok else 503), "application/json", orjson.dumps(doc) + b"\n"
        return 404, "text/plain", b"/metrics, /healthz or /readyz\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
            for _ in range(MAX_HEADER_LINES):  # the headers are not needed: read past them
                header = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
                if header in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("latin-1").split()
            method = parts[0] if len(parts) == 3 else ""
            try:
                if len(parts) != 3:
                    status, ctype, body = 400, "text/plain", b"bad request\n"
                else:
                    status, ctype, body = self.answer(method, parts[1].split("?", 1)[0])
            except Exception as exc:  # a scrape must never take the worker down
                log.error("metrics: answer failed (%s)", type(exc).__name__)
                status, ctype, body = 503, "text/plain", b"unavailable\n"
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
