"""The secure local broker's secrets, principals and ACLs (docs/ARCHITECTURE.md, Security).

secrets   a local CA and the broker's certificate (the `cryptography` package, PEM files Kafka 4
          reads with ssl.keystore.type=PEM), one random password per principal; every secret in a
          file of mode 0600 under <home>/kafka/secrets/ (mode 0700).
users     SCRAM-SHA-512 credentials: bootstrapped when the storage is formatted, rotated at run
          time through the admin API (AlterUserScramCredentials) by the admin super user.
acls      the roles' ACLs on a topic set (prefix "" for callpipe's own topics; tests and benches
          use prefixed sets), created by the admin super user with the StandardAuthorizer.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.kafka_access import ADMIN, ANALYST, CARRIER, OPERATOR, ROLES, WORKER, KafkaAccess
from schemas.topics import CALLS, CONSENT, DLQ, REPLAY_TXN, REPLAYED, REQUESTS, STREAM_GROUP

PRINCIPALS = (ADMIN, *ROLES)
ROLE_OF = {
    ADMIN: "broker and super user (ACLs, users); used by `callpipe kafka` only",
    CARRIER: "writes calls.raw, consent.events, privacy.requests",
    WORKER: "reads the carrier topics, writes calls.dlq",
    OPERATOR: "manages topics, reads calls.dlq, privacy.requests and consent.events, writes privacy.requests",
    ANALYST: "no Kafka access (reads the lake)",
}


class SecurityError(RuntimeError):
    """Secrets or principals that cannot be used; the message names files, never a secret."""


@dataclass(frozen=True)
class Secrets:
    root: Path  # <home>/kafka/secrets

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def broker_pem(self) -> Path:
        """The broker's private key and certificate chain (a PEM keystore)."""
        return self.root / "broker.pem"

    def password_file(self, user: str) -> Path:
        return self.root / f"{user}.password"

    def password(self, user: str) -> str:
        return self.password_file(user).read_text().strip()

    def complete(self) -> bool:
        files = [self.ca_cert, self.ca_key, self.broker_pem] + [self.password_file(u) for u in PRINCIPALS]
        return all(f.is_file() for f in files)


def write_secret(path: Path, data: bytes) -> None:
    """Write `data` to a new file of mode 0600, then move it over `path` (never a readable moment)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def new_password() -> str:
    return secrets.token_urlsafe(24)


def _tls(s: Secrets) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "callpipe local CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    plain = serialization.NoEncryption()
    write_secret(s.ca_key, ca_key.private_bytes(pem, pkcs8, plain))
    write_secret(
        s.broker_pem,
        key.private_bytes(pem, pkcs8, plain) + cert.public_bytes(pem) + ca.public_bytes(pem),
    )
    # The CA certificate is public: clients need it to check the broker.
    write_secret(s.ca_cert, ca.public_bytes(pem))
    s.ca_cert.chmod(0o644)


def ensure_secrets(home: Path) -> tuple[Secrets, bool]:
    """The secrets under <home>/kafka/secrets, created when missing. Returns (secrets, created)."""
    s = Secrets((home / "secrets").resolve())
    if s.complete():
        return s, False
    s.root.mkdir(parents=True, exist_ok=True)
    s.root.chmod(0o700)
    _tls(s)
    for user in PRINCIPALS:
        write_secret(s.password_file(user), (new_password() + "\n").encode())
    return s, True


def scram_arguments(s: Secrets) -> list[str]:
    """StorageTool format arguments that bootstrap every principal's SCRAM credential."""
    out: list[str] = []
    for user in PRINCIPALS:
        out += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={s.password(user)}]"]
    return out


# ---------------------------------------------------------------- ACLs


def role_acls(prefix: str = "") -> list[tuple[str, str, str, str, str]]:
    """(principal, resource type, pattern type, resource name, operation) the roles are allowed, for
    the topic set `prefix`. The operator's topic management covers every topic (wildcard)."""
    calls, consent, requests, dlq = (prefix + t for t in (CALLS, CONSENT, REQUESTS, DLQ))
    rows: list[tuple[str, str, str, str, str]] = []
    for topic in (calls, consent, requests):
        rows += [(CARRIER, "TOPIC", "LITERAL", topic, op) for op in ("WRITE", "DESCRIBE")]
        rows += [(WORKER, "TOPIC", "LITERAL", topic, op) for op in ("READ", "DESCRIBE")]
    rows += [(WORKER, "GROUP", "LITERAL", prefix + STREAM_GROUP, "READ")]
    rows += [(WORKER, "TOPIC", "LITERAL", dlq, op) for op in ("WRITE", "DESCRIBE", "DESCRIBE_CONFIGS")]
    rows += [(OPERATOR, "TOPIC", "LITERAL", dlq, op) for op in ("READ", "DESCRIBE")]
    # `jobs requests` reads privacy.requests, and consent.events for withdrawals; `jobs erase`
    # publishes its erase request (WRITE, below).
    for topic in (requests, consent):
        rows += [(OPERATOR, "TOPIC", "LITERAL", topic, op) for op in ("READ", "DESCRIBE")]
    # `callpipe dlq replay`: a repaired dead letter goes back to its source topic, in one
    # transaction with its record in the replay ledger, which a later replay reads.
    for topic in (calls, consent, requests):
        rows.append((OPERATOR, "TOPIC", "LITERAL", topic, "WRITE"))
    rows += [(OPERATOR, "TOPIC", "LITERAL", prefix + REPLAYED, op) for op in ("READ", "WRITE", "DESCRIBE")]
    rows += [(OPERATOR, "TRANSACTIONAL_ID", "PREFIXED", REPLAY_TXN, op) for op in ("WRITE", "DESCRIBE")]
    for op in ("CREATE", "ALTER", "ALTER_CONFIGS", "DESCRIBE", "DESCRIBE_CONFIGS", "DELETE"):
        rows.append((OPERATOR, "TOPIC", "LITERAL", "*", op))
    rows.append((OPERATOR, "GROUP", "LITERAL", "*", "DESCRIBE"))
    return rows


def _admin(access: KafkaAccess) -> Any:
    from confluent_kafka.admin import AdminClient

    config: dict[str, str | int | float | bool] = {**access.librdkafka(), "log_level": 3}
    return AdminClient(config)


def grant(access: KafkaAccess, prefix: str = "", timeout_s: float = 30.0) -> int:
    """Create the roles' ACLs for the topic set `prefix` as the admin super user (idempotent).
    Returns the number of ACL bindings."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    bindings = [
        AclBinding(
            ResourceType[rtype],
            name,
            ResourcePatternType[ptype],
            f"User:{user}",
            "*",
            AclOperation[op],
            AclPermissionType.ALLOW,
        )
        for user, rtype, ptype, name, op in role_acls(prefix)
    ]
    admin = _admin(access)  # kept alive until the futures resolve
    futures = admin.create_acls(bindings, request_timeout=timeout_s)
    for future in futures.values():
        try:
            future.result()
        except Exception as exc:
            raise SecurityError(f"creating ACLs failed ({type(exc).__name__}: {exc})") from None
    _await_visible(admin, bindings, timeout_s)
    return len(bindings)


def _await_visible(admin: Any, bindings: list[Any], timeout_s: float) -> None:
    """Wait until the broker's authorizer holds `bindings`: created ACLs reach it through the
    metadata log a moment later, and a client that connects first is refused."""
    import time

    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    anything: Any = None  # the filter's wildcard (the stubs type these arguments as str)
    every = AclBindingFilter(
        ResourceType.ANY,
        anything,
        ResourcePatternType.ANY,
        anything,
        anything,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    wanted = {str(b) for b in bindings}
    deadline = time.monotonic() + timeout_s
    while True:
        seen = {str(b) for b in admin.describe_acls(every, request_timeout=timeout_s).result()}
        if wanted <= seen:
            return
        if time.monotonic() > deadline:
            raise SecurityError("created ACLs did not reach the broker's authorizer in time")
        time.sleep(0.1)


def allow(access: KafkaAccess, user: str, topic: str, operations: tuple[str, ...]) -> None:
    """One principal's ACLs on one topic (tests give the carrier topics of their own)."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    bindings = [
        AclBinding(
            ResourceType.TOPIC,
            topic,
            ResourcePatternType.LITERAL,
            f"User:{user}",
            "*",
            AclOperation[op],
            AclPermissionType.ALLOW,
        )
        for op in operations
    ]
    admin = _admin(access)
    for future in admin.create_acls(bindings, request_timeout=30.0).values():
        future.result()


def rotate(access: KafkaAccess, s: Secrets, user: str, timeout_s: float = 30.0) -> Path:
    """A new SCRAM-SHA-512 password for `user`: set on the broker, then written to its file (0600).
    The old password is refused from then on. Returns the password file."""
    from confluent_kafka.admin import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    if user not in PRINCIPALS:
        raise SecurityError(f"unknown principal {user!r}; one of {', '.join(PRINCIPALS)}")
    password = new_password()
    upsert = UserScramCredentialUpsertion(
        user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), password.encode()
    )
    admin = _admin(access)
    futures = admin.alter_user_scram_credentials([upsert], request_timeout=timeout_s)
    for future in futures.values():
        try:
            future.result()
        except Exception as exc:
            raise SecurityError(f"rotating the password of {user} failed ({type(exc).__name__})") from None
    write_secret(s.password_file(user), (password + "\n").encode())
    return s.password_file(user)


def users(access: KafkaAccess, timeout_s: float = 30.0) -> dict[str, list[str]]:
    """The broker's SCRAM users and their mechanisms."""
    admin = _admin(access)
    futures = admin.describe_user_scram_credentials(request_timeout=timeout_s)
    try:
        described = futures.result()
    except Exception as exc:
        raise SecurityError(f"listing users failed ({type(exc).__name__})") from None
    out: dict[str, list[str]] = {}
    for name, desc in described.items():
        out[name] = [str(info.mechanism.name) for info in desc.scram_credential_infos]
    return out
