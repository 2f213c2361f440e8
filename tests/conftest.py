"""Shared fixtures. Integration tests talk to the real broker at CALLPIPE_BOOTSTRAP (started from
infra/ by the README's test command); a missing broker is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def vault_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The whole suite runs with the encrypted vault, as callpipe does by default: one vault key
    file for the session, configured in this process and named by CALLPIPE_VAULT_KEY_FILE for
    every worker, ingest and job the tests start (a test wanting another sets its own)."""
    from sinks import crypt

    path = tmp_path_factory.mktemp("vault-keys") / "vault.keys"
    crypt.create_key_file(path)
    before = os.environ.get("CALLPIPE_VAULT_KEY_FILE")
    os.environ["CALLPIPE_VAULT_KEY_FILE"] = str(path)
    os.environ.pop("CALLPIPE_VAULT_ENCRYPTION", None)
    with crypt.configured(crypt.from_key_file(path)):
        yield path
    if before is None:
        os.environ.pop("CALLPIPE_VAULT_KEY_FILE", None)
    else:
        os.environ["CALLPIPE_VAULT_KEY_FILE"] = before


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = os.environ.get("CALLPIPE_BOOTSTRAP", "127.0.0.1:9092")

    async def probe() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        from tests.support.streamkit import access

        admin = AIOKafkaAdminClient(**access("admin", bootstrap).aiokafka(), request_timeout_ms=5000)
        await admin.start()
        try:
            await admin.describe_cluster()
        finally:
            await admin.close()

    try:
        asyncio.run(asyncio.wait_for(probe(), 15))
    except Exception as exc:  # any failure to reach the broker fails the test
        pytest.fail(
            f"no Kafka broker at {bootstrap} ({type(exc).__name__}); start one with `callpipe kafka up`",
            pytrace=False,
        )
    return bootstrap


@pytest.fixture
def topic_prefix() -> str:
    """A unique prefix so tests on the shared broker never see each other's messages."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "lake"
    root.mkdir()
    yield root


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """Say plainly how the tests that need the real broker did (they are never skipped)."""
    counts: dict[str, int] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") == "call" and "integration" in getattr(report, "keywords", {}):
                counts[outcome] = counts.get(outcome, 0) + 1
    if counts:
        bootstrap = os.environ.get("CALLPIPE_BOOTSTRAP", "127.0.0.1:9092")
        parts = ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
        terminalreporter.write_line(
            f"tests against the real Kafka broker at {bootstrap} (marker integration): {parts}"
        )
