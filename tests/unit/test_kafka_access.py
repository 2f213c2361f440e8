"""Connection settings per role, the roles' ACL table, secrets on disk, and an old plaintext data
folder (pure code and files; the broker itself is in tests/integration/test_security.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from infra import kafka, security
from pipeline.kafka_access import AccessError
from pipeline.settings import Settings, SettingsError


def test_each_role_connects_as_itself_with_the_brokers_files(tmp_path: Path) -> None:
    settings = Settings.from_env({"CALLPIPE_HOME": str(tmp_path), "CALLPIPE_KAFKA_PORT": "19000"})
    carrier = settings.kafka("carrier")
    assert (carrier.bootstrap, carrier.user, carrier.security) == ("127.0.0.1:19000", "carrier", "sasl_ssl")
    assert carrier.password_file == tmp_path.resolve() / "kafka" / "secrets" / "carrier.password"
    assert carrier.ca_file == tmp_path.resolve() / "kafka" / "secrets" / "ca.pem"
    assert settings.kafka("worker").user == "worker"
    with pytest.raises(AccessError, match="no CA certificate") as err:
        carrier.aiokafka()
    assert "callpipe kafka up" in str(err.value)


def test_a_named_user_and_password_file_replace_the_role(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret-value\n")
    (tmp_path / "ca.pem").write_text("x")
    settings = Settings.from_env(
        {
            "CALLPIPE_KAFKA_USER": "carrier-acme",
            "CALLPIPE_KAFKA_PASSWORD_FILE": str(pw),
            "CALLPIPE_KAFKA_CA": str(tmp_path / "ca.pem"),
        }
    )
    conf = settings.kafka("carrier").librdkafka()
    assert conf == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "carrier-acme",
        "sasl.password": "s3cret-value",
        "ssl.ca.location": str(tmp_path / "ca.pem"),
    }
    env = settings.kafka("worker").env()
    assert env["CALLPIPE_KAFKA_USER"] == "carrier-acme" and "s3cret-value" not in str(env)


def test_plaintext_is_explicit_and_nothing_else_is_accepted() -> None:
    plain = Settings.from_env({"CALLPIPE_KAFKA_SECURITY": "PLAINTEXT"}).kafka("worker")
    assert plain.aiokafka() == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    with pytest.raises(SettingsError, match="CALLPIPE_KAFKA_SECURITY"):
        Settings.from_env({"CALLPIPE_KAFKA_SECURITY": "ssl"})


def test_the_acl_table_gives_each_role_what_it_needs_and_nothing_more() -> None:
    rows = security.role_acls("p.")
    by_user: dict[str, set[tuple[str, str, str]]] = {}
    for user, rtype, _pattern, name, op in rows:
        by_user.setdefault(user, set()).add((rtype, name, op))
    carrier = by_user["carrier"]
    assert {op for _t, _n, op in carrier} == {"WRITE", "DESCRIBE"}
    assert {n for _t, n, _o in carrier} == {"p.calls.raw", "p.consent.events", "p.privacy.requests"}
    worker = by_user["worker"]
    assert ("GROUP", "p.callpipe-stream", "READ") in worker
    assert ("TOPIC", "p.calls.dlq", "WRITE") in worker and ("TOPIC", "p.calls.dlq", "READ") not in worker
    assert ("TOPIC", "p.calls.dlq", "DESCRIBE_CONFIGS") in worker
    assert not {(t, n, o) for t, n, o in worker if o == "WRITE" and n != "p.calls.dlq"}
    operator = by_user["operator"]
    assert ("TOPIC", "p.calls.dlq", "READ") in operator and ("TOPIC", "*", "CREATE") in operator
    # The operator writes only what `callpipe dlq replay` needs (repaired messages back to their
    # source topics, in a transaction with the replay ledger) and `jobs erase` (its erase request
    # to privacy.requests); never the dead-letter topic itself.
    assert {(t, n) for t, n, o in operator if o == "WRITE"} == {
        ("TOPIC", "p.calls.raw"),
        ("TOPIC", "p.consent.events"),
        ("TOPIC", "p.privacy.requests"),
        ("TOPIC", "p.calls.dlq.replayed"),
        ("TRANSACTIONAL_ID", "callpipe-dlq-replay"),
    }
    # It reads what its jobs read: dead letters (dlq inspect), the replay ledger, privacy.requests
    # and consent.events (`jobs requests`: subject requests and consent withdrawals); never calls.raw.
    assert {(t, n) for t, n, o in operator if o == "READ"} == {
        ("TOPIC", "p.calls.dlq"),
        ("TOPIC", "p.calls.dlq.replayed"),
        ("TOPIC", "p.privacy.requests"),
        ("TOPIC", "p.consent.events"),
    }
    assert "analyst" not in by_user and "admin" not in by_user


def test_secrets_are_private_files_and_reused(tmp_path: Path) -> None:
    s, created = security.ensure_secrets(tmp_path / "kafka")
    assert created
    assert stat.S_IMODE(s.root.stat().st_mode) == 0o700
    for f in s.root.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == (0o644 if f.name == "ca.pem" else 0o600), f.name
    passwords = {u: s.password(u) for u in security.PRINCIPALS}
    assert len(set(passwords.values())) == len(passwords)
    again, created = security.ensure_secrets(tmp_path / "kafka")
    assert not created and {u: again.password(u) for u in security.PRINCIPALS} == passwords
    pem = s.broker_pem.read_text()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----") and pem.count("BEGIN CERTIFICATE") == 2


def test_the_broker_certificate_is_signed_by_the_ca_for_the_loopback_address(tmp_path: Path) -> None:
    from cryptography import x509

    s, _ = security.ensure_secrets(tmp_path / "kafka")
    ca = x509.load_pem_x509_certificate(s.ca_cert.read_bytes())
    broker = x509.load_pem_x509_certificates(s.broker_pem.read_bytes())[0]
    broker.verify_directly_issued_by(ca)
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def test_a_data_folder_from_the_old_plaintext_setup_is_refused_with_a_way_out(tmp_path: Path) -> None:
    broker = kafka.broker_for(tmp_path, tmp_path / "data", 19999)
    broker.data.mkdir(parents=True)
    (broker.data / "meta.properties").write_text("cluster.id=x\n")
    with pytest.raises(kafka.BrokerError, match="formatted without callpipe's SCRAM users") as err:
        kafka._format_storage(broker)
    assert str(broker.data) in str(err.value) and "remove" in str(err.value)
