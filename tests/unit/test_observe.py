"""The worker's HTTP endpoint (pipeline/stream/observe.py) on a loopback socket: its routes, a
port in use refused at start-up, and the setting and option that turn it on."""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest

from pipeline.cli import main
from pipeline.settings import Settings, SettingsError
from pipeline.stream.metrics import CONTENT_TYPE, WorkerView
from pipeline.stream.observe import MetricsPortError, MetricsServer, bind, rss_bytes

NOW_MS = 1_767_225_600_000


def view(**kw: object) -> WorkerView:
    base: dict[str, object] = {"topic": "calls.raw", "now_ms": NOW_MS, "started_ms": NOW_MS}
    return WorkerView(**{**base, **kw})  # type: ignore[arg-type]


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_routes_on_a_real_socket() -> None:
    current = [view()]  # starting: alive, not ready

    async def go() -> None:
        server = MetricsServer(bind("127.0.0.1", 0), lambda: current[0])
        port = server.sock.getsockname()[1]
        await server.start()
        try:
            status, headers, body = await request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == 200 and headers["Content-Type"] == CONTENT_TYPE
            assert b"# TYPE callpipe_events_consumed_total counter" in body
            assert int(headers["Content-Length"]) == len(body)
            status, _, body = await request(port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert (status, orjson.loads(body)["status"]) == (200, "ok")
            status, _, body = await request(port, b"GET /readyz HTTP/1.1\r\n\r\n")
            assert (status, orjson.loads(body)["control_state"]) == (503, "loading")
            current[0] = view(phase="running", control_loaded=True, group_joined=True, loop_age_s=0.1)
            status, _, body = await request(port, b"GET /readyz?verbose=1 HTTP/1.0\r\n\r\n")
            assert (status, orjson.loads(body)["ready"]) == (200, True)
            status, _, body = await request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            assert (status, body) == (200, b"")
            assert (await request(port, b"GET /other HTTP/1.1\r\n\r\n"))[0] == 404
            assert (await request(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
            # a client that sends garbage or nothing does not stop the endpoint
            assert (await request(port, b"\r\n\r\n"))[0] == 400
            assert (await request(port, b"GET /healthz HTTP/1.1\r\n\r\n"))[0] == 200
        finally:
            await server.stop()

    asyncio.run(go())


def test_a_failing_view_answers_503_and_the_endpoint_goes_on() -> None:
    def broken() -> WorkerView:
        raise KeyError("boom")

    server = MetricsServer(socket.socket(), broken)
    with pytest.raises(KeyError):
        server.answer("GET", "/metrics")  # `_serve` turns this into a 503

    async def go() -> None:
        s = MetricsServer(bind("127.0.0.1", 0), broken)
        await s.start()
        try:
            assert (await request(s.sock.getsockname()[1], b"GET /metrics HTTP/1.1\r\n\r\n"))[0] == 503
        finally:
            await s.stop()

    asyncio.run(go())
    server.sock.close()


def test_a_port_in_use_is_one_clear_error() -> None:
    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(
            MetricsPortError, match=r"cannot serve metrics on 127\.0\.0\.1:\d+ .*CALLPIPE_METRICS_PORT"
        ):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_rss_is_read() -> None:
    rss = rss_bytes()
    assert rss is None or rss > 1_000_000


def test_the_setting_is_off_by_default_and_bound_to_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    default = Settings.from_env({})
    assert (default.metrics_port, default.metrics_host) == (0, "127.0.0.1")
    on = Settings.from_env({"CALLPIPE_METRICS_PORT": "9464", "CALLPIPE_METRICS_HOST": "0.0.0.0"})
    assert (on.metrics_port, on.metrics_host) == (9464, "0.0.0.0")
    for bad in ("-1", "65536", "x"):
        with pytest.raises(SettingsError, match="CALLPIPE_METRICS_PORT"):
            Settings.from_env({"CALLPIPE_METRICS_PORT": bad})
    assert main(["worker", "--metrics-port", "70000"]) == 2
    assert "--metrics-port must be a port number" in capsys.readouterr().err
