"""How a callpipe client connects to Kafka: one home for the connection settings of a principal.

Each command connects as its role's principal (docs/ARCHITECTURE.md, Security): `produce` as
carrier, `worker` as worker, `topics`, `jobs requests` and the operator tools as operator. The
default is the secure broker `callpipe kafka up` starts: SASL_SSL with SCRAM-SHA-512, the local
CA's certificate and the role's password file under <home>/kafka/secrets/. CALLPIPE_KAFKA_USER,
CALLPIPE_KAFKA_PASSWORD_FILE, CALLPIPE_KAFKA_CA and CALLPIPE_KAFKA_SECURITY point elsewhere (a
real cluster, or the development-only plaintext listener of `callpipe kafka up --plaintext`).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

CARRIER, WORKER, OPERATOR, ANALYST, ADMIN = "carrier", "worker", "operator", "analyst", "admin"
ROLES = (CARRIER, WORKER, OPERATOR, ANALYST)
SECURITY = ("sasl_ssl", "plaintext")
MECHANISM = "SCRAM-SHA-512"


class _QuietLogin(logging.Filter):
    """aiokafka logs every CA load and SASL login at INFO: one line per connection, no news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Authenticated as", "Loading SSL CA"))


for _name in ("aiokafka.conn", "aiokafka.helpers"):
    logging.getLogger(_name).addFilter(_QuietLogin())


class AccessError(ValueError):
    """A connection setting that cannot be used; names the file, never a secret."""


def secrets_dir(home: Path) -> Path:
    return home / "kafka" / "secrets"


def password_path(home: Path, user: str) -> Path:
    return secrets_dir(home) / f"{user}.password"


def ca_path(home: Path) -> Path:
    return secrets_dir(home) / "ca.pem"


@dataclass(frozen=True)
class KafkaAccess:
    """The bootstrap servers and credentials of one principal."""

    bootstrap: str
    security: str = "sasl_ssl"
    user: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None

    @property
    def secure(self) -> bool:
        return self.security == "sasl_ssl"

    def password(self) -> str:
        if self.password_file is None:
            raise AccessError(f"no password file for Kafka user {self.user}")
        try:
            value = self.password_file.read_text().strip()
        except OSError as exc:
            raise AccessError(
                f"cannot read the Kafka password file {self.password_file} ({type(exc).__name__});"
                " start the broker with `callpipe kafka up` or set CALLPIPE_KAFKA_PASSWORD_FILE"
            ) from None
        if not value:
            raise AccessError(f"the Kafka password file {self.password_file} is empty")
        return value

    def _ca(self) -> str:
        if self.ca_file is None or not self.ca_file.is_file():
            raise AccessError(
                f"no CA certificate at {self.ca_file}; start the broker with `callpipe kafka up`"
                " or set CALLPIPE_KAFKA_CA"
            )
        return str(self.ca_file)

    def ssl_context(self) -> ssl.SSLContext:
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(cafile=self._ca())

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
        if not self.secure:
            return {"bootstrap_servers": self.bootstrap, "security_protocol": "PLAINTEXT"}
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "ssl_context": self.ssl_context(),
            "sasl_mechanism": MECHANISM,
            "sasl_plain_username": self.user,
            "sasl_plain_password": self.password(),
        }

    def librdkafka(self) -> dict[str, str]:
        """The configuration of a librdkafka client (confluent-kafka, kcat -X)."""
        if not self.secure:
            return {"bootstrap.servers": self.bootstrap, "security.protocol": "plaintext"}
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": MECHANISM,
            "sasl.username": self.user or "",
            "sasl.password": self.password(),
            "ssl.ca.location": self._ca(),
        }

    def env(self) -> dict[str, str]:
        """The CALLPIPE_* variables that make a child process connect as this principal."""
        out = {"CALLPIPE_BOOTSTRAP": self.bootstrap, "CALLPIPE_KAFKA_SECURITY": self.security}
        if self.user:
            out["CALLPIPE_KAFKA_USER"] = self.user
        if self.password_file:
            out["CALLPIPE_KAFKA_PASSWORD_FILE"] = str(self.password_file)
        if self.ca_file:
            out["CALLPIPE_KAFKA_CA"] = str(self.ca_file)
        return out

    def with_bootstrap(self, bootstrap: str) -> KafkaAccess:
        return replace(self, bootstrap=bootstrap)


def access_for(
    role: str,
    *,
    bootstrap: str,
    home: Path,
    security: str = "sasl_ssl",
    user: str | None = None,
    password_file: Path | None = None,
    ca_file: Path | None = None,
) -> KafkaAccess:
    """The role's principal; an explicit user (CALLPIPE_KAFKA_USER) replaces the role's default."""
    if security not in SECURITY:
        raise AccessError("CALLPIPE_KAFKA_SECURITY must be sasl_ssl or plaintext")
    name = user or role
    home = home.resolve()  # child processes (the worker) may run elsewhere
    return KafkaAccess(
        bootstrap=bootstrap,
        security=security,
        user=name,
        password_file=password_file if (user and password_file) else password_path(home, name),
        ca_file=ca_file or ca_path(home),
    )
