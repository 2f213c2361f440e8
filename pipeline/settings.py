"""One settings object, read once at start-up from CALLPIPE_* environment variables and the policy
file, validated, then passed in. Nothing else in callpipe reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.kafka_access import SECURITY, KafkaAccess, access_for
from pipeline.keys import PseudonymKey, key_from_hex, load_key
from pipeline.policy import DEFAULT_POLICY, Policy
from pipeline.policy_check import load_policy

if TYPE_CHECKING:
    from sinks.crypt import VaultCrypto


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable, never a secret value."""


@dataclass(frozen=True)
class Settings:
    bootstrap: str = "127.0.0.1:9092"  # CALLPIPE_BOOTSTRAP
    partitions: int = 4  # CALLPIPE_PARTITIONS: shared by the co-partitioned topics
    lake: Path = Path("lake")  # CALLPIPE_LAKE
    buckets: int = 8  # CALLPIPE_BUCKETS: hash buckets of the account inside each day partition
    home: Path = Path(".cache/callpipe")  # CALLPIPE_HOME: Kafka jars, broker data and logs, pid files
    kafka_port: int = 9092  # CALLPIPE_KAFKA_PORT (the controller listens on the next port)
    kafka_data: Path | None = None  # CALLPIPE_KAFKA_DATA (default: <home>/kafka/data)
    key_file: Path | None = None  # CALLPIPE_KEY_FILE: pseudonymization key file (overrides the policy)
    key_hex: str | None = field(default=None, repr=False)  # the variable the policy names (key.env)
    # CALLPIPE_VAULT_KEY_FILE: the vault's master keys (sinks.crypt; default <home>/keys/vault.keys)
    vault_key_file: Path | None = None
    # CALLPIPE_VAULT_ENCRYPTION: on (default) or off, the explicit opt-out to a plaintext vault
    vault_encryption: bool = True
    flush_rows: int = 50_000  # CALLPIPE_FLUSH_ROWS: a sink file is written at this many rows...
    flush_seconds: float = 10.0  # CALLPIPE_FLUSH_SECONDS: ...or when its oldest row is this old
    ingest_flush_rows: int = 1_000_000  # CALLPIPE_INGEST_FLUSH_ROWS: rows `callpipe ingest` holds per flush
    ingest_jobs: int = 0  # CALLPIPE_INGEST_JOBS: processes of `callpipe ingest` (0: one per core)
    # CALLPIPE_WORKER_PROCESSES: members of the consumer group `callpipe worker` runs (0: one per core)
    worker_jobs: int = 1
    max_idle_ms: int = 2_000  # CALLPIPE_MAX_IDLE_MS: how long calls wait for a silent consent stream
    log_level: str = "info"  # CALLPIPE_LOG_LEVEL
    # How clients connect (pipeline/kafka_access.py): sasl_ssl (default) or plaintext (development)
    kafka_security: str = "sasl_ssl"  # CALLPIPE_KAFKA_SECURITY
    kafka_ca: Path | None = None  # CALLPIPE_KAFKA_CA (default: <home>/kafka/secrets/ca.pem)
    kafka_user: str | None = None  # CALLPIPE_KAFKA_USER (default: the command's role)
    kafka_password_file: Path | None = None  # CALLPIPE_KAFKA_PASSWORD_FILE (with CALLPIPE_KAFKA_USER)
    policy: Policy = DEFAULT_POLICY  # CALLPIPE_POLICY: path of the policy TOML
    # CALLPIPE_DLQ_KEY_FILE: the operator's private key that opens dead letters (default
    # <home>/keys/dlq-operator.key); CALLPIPE_DLQ_PUBLIC_KEY: its public half, all a worker holds
    dlq_key: Path | None = None
    dlq_public: Path | None = None
    # CALLPIPE_TRIP_INTERNAL_ERRORS: events in a row failing with internal errors that stop a worker
    trip_internal_errors: int = 50
    # CALLPIPE_METRICS_PORT: the worker's /metrics, /healthz and /readyz (0: none; with
    # `--processes N`, member i serves on port + i); CALLPIPE_METRICS_HOST: the address it binds
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    @property
    def ingest_processes(self) -> int:
        """How many processes `callpipe ingest` shares its files among."""
        return self.ingest_jobs or os.cpu_count() or 1

    @property
    def worker_processes(self) -> int:
        """How many group members (processes) `callpipe worker` runs."""
        return self.worker_jobs or os.cpu_count() or 1

    def key(self) -> PseudonymKey:
        """The pseudonymization key: CALLPIPE_KEY_FILE, else the policy's key file or variable,
        else <home>/keys/pseudonymization.key if `callpipe key init` made it there."""
        version = self.policy.key.version
        if self.policy.key.env and self.key_file is None and not self.policy.key.file:
            if not self.key_hex:
                raise SettingsError(f"the policy takes the key from {self.policy.key.env}, which is not set")
            return key_from_hex(self.key_hex, version, self.policy.key.env)
        path = self.key_file_to_create()
        if path == self.home_key_file and not path.exists():
            raise SettingsError(
                "no pseudonymization key: set CALLPIPE_KEY_FILE or the policy's key source, "
                "or create one with `callpipe key init`"
            )
        return load_key(path, version)

    @property
    def home_key_file(self) -> Path:
        """Where `callpipe key init` puts the pseudonymization key when nothing names a file."""
        return self.home / "keys" / "pseudonymization.key"

    def key_file_to_create(self) -> Path:
        """The pseudonymization key's file, the one `key()` reads and `callpipe key init` creates:
        CALLPIPE_KEY_FILE, else the policy's key file, else `home_key_file`."""
        if self.key_file is not None:
            return self.key_file
        if self.policy.key.file:
            return Path(self.policy.key.file)
        if self.policy.key.env:
            raise SettingsError(f"the policy takes the key from {self.policy.key.env}, not from a file")
        return self.home_key_file

    def kafka(self, role: str) -> KafkaAccess:
        """How a client in `role` (carrier, worker, operator, admin) connects to the broker."""
        return access_for(
            role,
            bootstrap=self.bootstrap,
            home=self.home,
            security=self.kafka_security,
            user=self.kafka_user,
            password_file=self.kafka_password_file,
            ca_file=self.kafka_ca,
        )

    @property
    def vault_keys(self) -> Path:
        """The vault key file: CALLPIPE_VAULT_KEY_FILE, else <home>/keys/vault.keys (beside the
        dead-letter operator key, created with it by `callpipe kafka up`)."""
        return self.vault_key_file or self.home / "keys" / "vault.keys"

    def vault_crypto(self) -> VaultCrypto | None:
        """The vault's encryption keys (`vault_keys`); None only for CALLPIPE_VAULT_ENCRYPTION=off.
        A missing key file is an error (VaultKeyError), never a plaintext vault. The file must not
        be the pseudonymization key's: the two keys are held apart."""
        if not self.vault_encryption:
            return None
        pseudonym = self.key_file or (Path(self.policy.key.file) if self.policy.key.file else None)
        if pseudonym is not None and pseudonym.resolve() == self.vault_keys.resolve():
            raise SettingsError("the vault key file must not be the pseudonymization key file")
        from sinks.crypt import from_key_file

        return from_key_file(self.vault_keys)

    @property
    def dlq_key_file(self) -> Path:
        return self.dlq_key or self.home / "keys" / "dlq-operator.key"

    @property
    def dlq_public_key(self) -> Path:
        return self.dlq_public or self.home / "keys" / "dlq-operator.pub"

    @property
    def kafka_data_dir(self) -> Path:
        return self.kafka_data or self.home / "kafka" / "data"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def text(name: str, default: str) -> str:
            return env.get(f"CALLPIPE_{name}", default)

        def number(name: str, default: int, minimum: int = 1) -> int:
            raw = env.get(f"CALLPIPE_{name}")
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"CALLPIPE_{name} must be an integer") from None
            if value < minimum:
                raise SettingsError(f"CALLPIPE_{name} must be at least {minimum}")
            return value

        def seconds(name: str, default: float) -> float:
            raw = env.get(f"CALLPIPE_{name}")
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise SettingsError(f"CALLPIPE_{name} must be a number of seconds") from None
            if value <= 0:
                raise SettingsError(f"CALLPIPE_{name} must be positive")
            return value

        def path(name: str) -> Path | None:
            raw = env.get(f"CALLPIPE_{name}")
            return Path(raw) if raw else None

        port = number("KAFKA_PORT", 9092)
        if port > 65534:
            raise SettingsError("CALLPIPE_KAFKA_PORT must be below 65535")
        level = text("LOG_LEVEL", "info").lower()
        if level not in ("debug", "info", "warning", "error"):
            raise SettingsError("CALLPIPE_LOG_LEVEL must be debug, info, warning or error")
        policy = load_policy(path("POLICY"))
        encryption = text("VAULT_ENCRYPTION", "on").lower()
        if encryption not in ("on", "off"):
            raise SettingsError("CALLPIPE_VAULT_ENCRYPTION must be on or off")
        metrics_port = number("METRICS_PORT", 0, minimum=0)
        if metrics_port > 65535:
            raise SettingsError("CALLPIPE_METRICS_PORT must be at most 65535")
        security = text("KAFKA_SECURITY", "sasl_ssl").lower()
        if security not in SECURITY:
            raise SettingsError("CALLPIPE_KAFKA_SECURITY must be sasl_ssl or plaintext")
        return cls(
            key_hex=env.get(policy.key.env) if policy.key.env else None,
            bootstrap=text("BOOTSTRAP", f"127.0.0.1:{port}"),
            partitions=number("PARTITIONS", 4),
            lake=path("LAKE") or Path("lake"),
            buckets=number("BUCKETS", 8),
            home=path("HOME") or Path(".cache/callpipe"),
            kafka_port=port,
            kafka_data=path("KAFKA_DATA"),
            key_file=path("KEY_FILE"),
            vault_key_file=path("VAULT_KEY_FILE"),
            vault_encryption=encryption == "on",
            flush_rows=number("FLUSH_ROWS", 50_000),
            flush_seconds=seconds("FLUSH_SECONDS", 10.0),
            ingest_flush_rows=number("INGEST_FLUSH_ROWS", 1_000_000),
            ingest_jobs=number("INGEST_JOBS", 0, minimum=0),
            worker_jobs=number("WORKER_PROCESSES", 1, minimum=0),
            max_idle_ms=number("MAX_IDLE_MS", 2_000, minimum=0),
            log_level=level,
            policy=policy,
            kafka_security=security,
            kafka_ca=path("KAFKA_CA"),
            kafka_user=env.get("CALLPIPE_KAFKA_USER") or None,
            kafka_password_file=path("KAFKA_PASSWORD_FILE"),
            dlq_key=path("DLQ_KEY_FILE"),
            dlq_public=path("DLQ_PUBLIC_KEY"),
            trip_internal_errors=number("TRIP_INTERNAL_ERRORS", 50),
            metrics_port=metrics_port,
            metrics_host=text("METRICS_HOST", "127.0.0.1") or "127.0.0.1",
        )
