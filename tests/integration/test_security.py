"""The secure broker `callpipe kafka up` starts: only SASL_SSL with SCRAM-SHA-512 gets in, and each
role's principal can do what its ACLs say and nothing else (docs/ARCHITECTURE.md, Security)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from pipeline.kafka_access import ANALYST, CARRIER, WORKER
from schemas import topics
from sinks import crypt
from tests.support.streamkit import access, make_topics

pytestmark = pytest.mark.integration
T = TypeVar("T")


def run(coro: Awaitable[T], timeout_s: float = 30.0) -> T:
    async def go() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(go())


async def _list_topics(kwargs: dict[str, Any]) -> set[str]:
    admin = AIOKafkaAdminClient(**kwargs, request_timeout_ms=5_000)
    try:
        await admin.start()
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _read(kwargs: dict[str, Any], topic: str) -> Any:
    consumer = AIOKafkaConsumer(topic, **kwargs, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        return await consumer.getmany(timeout_ms=5_000)
    finally:
        await consumer.stop()


async def _produce(kwargs: dict[str, Any], topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(**kwargs, request_timeout_ms=5_000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


def test_a_plaintext_or_anonymous_connection_is_refused(kafka_bootstrap: str) -> None:
    carrier = access(CARRIER, kafka_bootstrap)
    with pytest.raises(KafkaConnectionError):
        run(_list_topics({"bootstrap_servers": kafka_bootstrap}))
    # TLS without a SASL login: the anonymous principal is not let in either.
    with pytest.raises(KafkaConnectionError):
        run(
            _list_topics(
                {
                    "bootstrap_servers": kafka_bootstrap,
                    "security_protocol": "SSL",
                    "ssl_context": carrier.ssl_context(),
                }
            )
        )


def test_a_wrong_password_is_refused(kafka_bootstrap: str) -> None:
    wrong = access(CARRIER, kafka_bootstrap).aiokafka() | {"sasl_plain_password": "not-the-password"}
    with pytest.raises(KafkaConnectionError):
        run(_list_topics(wrong))


def test_the_carrier_writes_its_topics_and_reads_nothing(kafka_bootstrap: str, topic_prefix: str) -> None:
    make_topics(kafka_bootstrap, topic_prefix, 1)
    carrier = access(CARRIER, kafka_bootstrap).aiokafka()
    run(_produce(carrier, topic_prefix + topics.CALLS, b"from-the-carrier"))
    for topic in (topics.DLQ, topics.CONSENT, topics.CALLS):
        with pytest.raises(TopicAuthorizationFailedError):
            run(_read(carrier, topic_prefix + topic))
    with pytest.raises(TopicAuthorizationFailedError):  # nor write the dead letters
        run(_produce(carrier, topic_prefix + topics.DLQ, b"x"))
    got = run(_read(access(WORKER, kafka_bootstrap).aiokafka(), topic_prefix + topics.CALLS))
    assert [m.value for batch in got.values() for m in batch] == [b"from-the-carrier"]


def test_the_analyst_cannot_produce_nor_see_a_topic(kafka_bootstrap: str, topic_prefix: str) -> None:
    make_topics(kafka_bootstrap, topic_prefix, 1)
    analyst = access(ANALYST, kafka_bootstrap).aiokafka()
    with pytest.raises(TopicAuthorizationFailedError):
        run(_produce(analyst, topic_prefix + topics.CALLS, b"x"))
    assert not {t for t in run(_list_topics(analyst)) if t.startswith(topic_prefix)}


def test_the_worker_cannot_write_the_carrier_topics(kafka_bootstrap: str, topic_prefix: str) -> None:
    make_topics(kafka_bootstrap, topic_prefix, 1)
    with pytest.raises(TopicAuthorizationFailedError):
        run(_produce(access(WORKER, kafka_bootstrap).aiokafka(), topic_prefix + topics.CONSENT, b"x"))


def callpipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_users_lists_the_principals_and_rotation_refuses_the_old_password(kafka_bootstrap: str) -> None:
    listed = callpipe("kafka", "users")
    assert listed.returncode == 0, listed.stderr
    for user in ("admin", "carrier", "worker", "operator", "analyst"):
        assert f"User:{user}" in listed.stdout
    old = access(ANALYST, kafka_bootstrap)
    old_kwargs = old.aiokafka()
    rotated = callpipe("kafka", "users", "--rotate", ANALYST)
    assert rotated.returncode == 0, rotated.stderr
    assert old.password() not in rotated.stdout + rotated.stderr
    assert old.password_file is not None
    assert stat.S_IMODE(old.password_file.stat().st_mode) == 0o600
    assert old.password() != old_kwargs["sasl_plain_password"]
    with pytest.raises(KafkaConnectionError):
        run(_list_topics(old_kwargs))
    run(_list_topics(old.aiokafka()))  # the new password from the file gets in


def test_a_carrier_produces_with_confluent_kafka_over_sasl_ssl(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """The librdkafka properties docs/ARCHITECTURE.md gives a carrier, as a carrier's client uses them."""
    from confluent_kafka import KafkaError, KafkaException, Producer
    from confluent_kafka.admin import AdminClient

    make_topics(kafka_bootstrap, topic_prefix, 1)
    carrier = access(CARRIER, kafka_bootstrap)
    props = carrier.librdkafka()
    assert set(props) == {
        "bootstrap.servers",
        "security.protocol",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "ssl.ca.location",
    }
    assert (props["security.protocol"], props["sasl.mechanisms"]) == ("SASL_SSL", "SCRAM-SHA-512")
    topic = topic_prefix + topics.CALLS
    producer = Producer({**props, "enable.idempotence": True})
    failures: list[Any] = []
    producer.produce(
        topic,
        b"from-librdkafka",
        key=b"acct-1",
        partition=0,
        on_delivery=lambda e, _m: e and failures.append(e),
    )
    assert producer.flush(30) == 0 and not failures
    got = run(_read(access(WORKER, kafka_bootstrap).aiokafka(), topic))
    assert [(m.key, m.value) for batch in got.values() for m in batch] == [(b"acct-1", b"from-librdkafka")]
    errors: list[Any] = []
    wrong = AdminClient({**props, "sasl.password": "wrong", "log_level": 0, "error_cb": errors.append})
    with pytest.raises(KafkaException):
        wrong.list_topics(timeout=10)
    wrong.poll(1)  # serves error_cb
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors


def test_a_partition_of_the_dead_letters_stays_closed_to_the_carrier(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Assigning the partition directly (no metadata look-up of the topic) is refused as well."""
    make_topics(kafka_bootstrap, topic_prefix, 1)

    async def fetch() -> Any:
        consumer = AIOKafkaConsumer(
            **access(CARRIER, kafka_bootstrap).aiokafka(), group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic_prefix + topics.CONSENT, 0)])
            return await consumer.getmany(timeout_ms=5_000)
        finally:
            await consumer.stop()

    with pytest.raises(TopicAuthorizationFailedError):
        run(fetch())


def test_secret_files_are_private(kafka_bootstrap: str) -> None:
    home = Path(os.environ["CALLPIPE_HOME"]) / "kafka"
    secrets = home / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    for f in secrets.iterdir():
        expected = 0o644 if f.name == "ca.pem" else 0o600  # the CA certificate is public
        assert stat.S_IMODE(f.stat().st_mode) == expected, f.name
    assert stat.S_IMODE((home / "server.properties").stat().st_mode) == 0o600
    # `kafka up` also made the keys a local set-up needs: the dead-letter operator key and the
    # vault's master keys (the vault is encrypted by default), each 0600 in a 0700 folder
    keys = home.parent / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for name in ("dlq-operator.key", "vault.keys"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600, name
    assert crypt.KeyFile(keys / "vault.keys").versions() == [1]
