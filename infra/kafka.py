"""A real local Apache Kafka (KRaft, one combined broker+controller) without Docker.

fetch   `mvn dependency:copy-dependencies` on infra/pom.xml, once, into <home>/kafka/libs (the
        Maven repository itself lives in <home>/m2); a later run finds the `.complete` marker.
up      creates the secrets on first start (infra/security.py: a local CA, the broker's certificate,
        one password per principal), formats the KRaft storage with the principals' SCRAM
        credentials, starts the broker in its own session, records its pid, grants the roles'
        ACLs, and waits until it answers a metadata request over SASL_SSL. Clients reach only the
        SASL_SSL listener (SCRAM-SHA-512 over TLS); the controller listener takes SASL PLAIN over
        TLS for the admin principal only. `up --plaintext` adds an unauthenticated PLAINTEXT
        listener on port+2 for development. A second `up` reports the
        running broker. A broker that dies or does not answer in time gives one line and the
        path of its log, and is stopped.
down    stops exactly the process `up` started (pid file, checked against its command line)
        and waits for it to exit.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from infra import security
from pipeline.kafka_access import ADMIN, KafkaAccess

INFRA = Path(__file__).resolve().parent
KAFKA_VERSION = "4.1.1"
MAIN_CLASS = "kafka.Kafka"


class BrokerError(RuntimeError):
    """The broker could not be fetched, started or stopped; the message says what to look at."""


@dataclass(frozen=True)
class Broker:
    home: Path  # <home>/kafka
    data: Path
    port: int
    plaintext: bool = False  # also a development-only PLAINTEXT listener on port+2

    @property
    def secrets(self) -> security.Secrets:
        return security.Secrets(self.home / "secrets")

    @property
    def format_marker(self) -> Path:
        """Written into the data dir once it was formatted with the principals' SCRAM users."""
        return self.data / "callpipe-security"

    @property
    def plaintext_port(self) -> int:
        return self.port + 2

    def admin(self) -> KafkaAccess:
        """The admin super user's connection (ACLs, users, the readiness probe)."""
        return KafkaAccess(
            bootstrap=self.bootstrap,
            user=ADMIN,
            password_file=self.secrets.password_file(ADMIN),
            ca_file=self.secrets.ca_cert,
        )

    @property
    def libs(self) -> Path:
        return self.home / "libs"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "broker.log"

    @property
    def out_file(self) -> Path:
        return self.log_dir / "broker.out"

    @property
    def config(self) -> Path:
        return self.home / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def broker_for(home: Path, data: Path, port: int, plaintext: bool = False) -> Broker:
    return Broker(home=(home / "kafka").resolve(), data=data.resolve(), port=port, plaintext=plaintext)


# ---------------------------------------------------------------- fetch


def fetch(broker: Broker) -> bool:
    """Make sure the Kafka jars are in the cache. Returns True when they had to be downloaded."""
    marker = broker.libs / ".complete"
    if marker.exists() and marker.read_text().strip() == KAFKA_VERSION:
        return False
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("mvn not found: install Maven to fetch Apache Kafka from Maven Central")
    staging = broker.home / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    broker.home.mkdir(parents=True, exist_ok=True)
    log = broker.home / "fetch.log"
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(INFRA / "pom.xml"),
        f"-Dmaven.repo.local={broker.home.parent / 'm2'}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    with log.open("w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if rc != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"fetching Apache Kafka {KAFKA_VERSION} with mvn failed; see {log}")
    (staging / ".complete").write_text(KAFKA_VERSION + "\n")
    shutil.rmtree(broker.libs, ignore_errors=True)
    staging.rename(broker.libs)
    return True


# ---------------------------------------------------------------- process


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java not found: Apache Kafka 4 needs Java 17 or newer")
    return java


def _classpath(broker: Broker) -> str:
    return str(broker.libs / "*")


def _write_config(broker: Broker) -> None:
    controller = broker.port + 1
    sec = broker.secrets
    admin = sec.password(ADMIN)
    listeners = [f"SASL_SSL://127.0.0.1:{broker.port}", f"CONTROLLER://127.0.0.1:{controller}"]
    advertised = [f"SASL_SSL://127.0.0.1:{broker.port}"]
    supers = [f"User:{ADMIN}"]
    if broker.plaintext:  # development only: anyone on the host may do anything through it
        listeners.append(f"PLAINTEXT://127.0.0.1:{broker.plaintext_port}")
        advertised.append(f"PLAINTEXT://127.0.0.1:{broker.plaintext_port}")
        supers.append("User:ANONYMOUS")
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    lines = [
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{controller}",
        f"listeners={','.join(listeners)}",
        f"advertised.listeners={','.join(advertised)}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL,PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name=SASL_SSL",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        # KRaft controllers cannot check SCRAM (the credentials live in the metadata they serve):
        # the controller listener takes PLAIN over TLS, with the admin as its only user.
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f'listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram} required username="{ADMIN}"'
        f' password="{admin}";',
        f'listener.name.controller.plain.sasl.jaas.config={plain} required username="{ADMIN}"'
        f' password="{admin}" user_{ADMIN}="{admin}";',
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={sec.broker_pem}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={sec.ca_cert}",
        "ssl.client.auth=none",
        "ssl.endpoint.identification.algorithm=https",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"super.users={';'.join(supers)}",
        f"log.dirs={broker.data}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=8",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        # How long a new group waits for more members before its first assignment (Kafka's
        # default is 3 s). Not 0: the members of `callpipe worker --processes N` subscribe within
        # milliseconds of each other, and at 0 the first of them took every partition alone, then
        # landed them at the rebalance its siblings caused a moment later (seconds of one member
        # working); 1 s keeps a test's first join quick.
        "group.initial.rebalance.delay.ms=1000",
        # Topics are declared by `callpipe topics create`.
        "auto.create.topics.enable=true",
        "message.max.bytes=10485760",
        "log.retention.check.interval.ms=60000",
        "",
    ]
    # It holds the admin's password: readable by this user only.
    security.write_secret(broker.config, "\n".join(lines).encode())


def _format_storage(broker: Broker) -> None:
    if (broker.data / "meta.properties").exists():
        if not broker.format_marker.exists():
            raise BrokerError(
                f"the broker data in {broker.data} was formatted without callpipe's SCRAM users (an"
                " older plaintext setup, or its secrets were re-created); remove that directory"
                " (its messages are lost) and run `callpipe kafka up` again"
            )
        return
    broker.data.mkdir(parents=True, exist_ok=True)
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    # The SCRAM passwords reach the format tool through a 0600 argument file, not the command line.
    argfile = broker.secrets.root / "format.args"
    args = [
        "-cp",
        _classpath(broker),
        "kafka.tools.StorageTool",
        "format",
        f"--cluster-id={cluster_id}",  # one argument: an id may start with "-"
        "-c",
        str(broker.config),
        "--standalone",
        *security.scram_arguments(broker.secrets),
    ]
    security.write_secret(argfile, "\n".join(f'"{a}"' for a in args).encode())
    try:
        out = subprocess.run([_java(), f"@{argfile}"], capture_output=True, text=True)
    finally:
        argfile.unlink(missing_ok=True)
    if out.returncode != 0:
        (broker.log_dir / "format.log").write_text(out.stdout + out.stderr)
        raise BrokerError(f"formatting KRaft storage failed; see {broker.log_dir / 'format.log'}")
    broker.format_marker.write_text("sasl_ssl scram-sha-512\n")


def running_pid(broker: Broker) -> int | None:
    """The pid of the broker this cache started, if it is still alive."""
    try:
        pid = int(broker.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if MAIN_CLASS.encode() in cmdline and str(broker.config).encode() in cmdline:
        return pid
    return None  # the pid was reused by something else: not ours


async def _answers(access: KafkaAccess, timeout_s: float) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    # A broker still starting refuses connections; aiokafka logs each refusal as an error.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    admin = AIOKafkaAdminClient(**access.aiokafka(), request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return True
    except Exception:
        return False
    finally:
        await admin.close()


def answers(access: KafkaAccess, timeout_s: float = 3.0) -> bool:
    """True when the broker answers a metadata request from `access`."""
    return asyncio.run(_answers(access, timeout_s))


def up(broker: Broker, wait_s: float = 60.0) -> tuple[int, bool]:
    """Start the broker unless it runs. Returns (pid, started_now)."""
    pid = running_pid(broker)
    if pid is not None:
        return pid, False
    fetch(broker)
    broker.log_dir.mkdir(parents=True, exist_ok=True)
    _, created = security.ensure_secrets(broker.home)
    if created and (broker.data / "meta.properties").exists():
        broker.format_marker.unlink(missing_ok=True)  # its users' passwords are not these
    _write_config(broker)
    _format_storage(broker)
    cmd = [
        _java(),
        "-Xms256m",
        "-Xmx1g",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={broker.log_dir}",
        f"-Dlog4j2.configurationFile={INFRA / 'log4j2.properties'}",
        "-cp",
        _classpath(broker),
        MAIN_CLASS,
        str(broker.config),
    ]
    with broker.out_file.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    broker.pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            broker.pid_file.unlink(missing_ok=True)
            raise BrokerError(
                f"the broker exited with status {proc.returncode} while starting; see {broker.log_file}"
                f" and {broker.out_file}"
            )
        if answers(broker.admin(), timeout_s=2.0):
            try:
                security.grant(broker.admin())
            except security.SecurityError as exc:
                _stop(proc.pid, 10.0)
                broker.pid_file.unlink(missing_ok=True)
                raise BrokerError(str(exc)) from None
            return proc.pid, True
        time.sleep(0.5)
    _stop(proc.pid, 10.0)
    broker.pid_file.unlink(missing_ok=True)
    raise BrokerError(f"the broker did not answer within {wait_s:.0f}s; see {broker.log_file}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _stop(pid: int, wait_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while _alive(pid):
        time.sleep(0.1)


def down(broker: Broker, wait_s: float = 30.0) -> int | None:
    """Stop the broker `up` started; returns its pid, or None when none was running."""
    pid = running_pid(broker)
    if pid is None:
        broker.pid_file.unlink(missing_ok=True)
        return None
    _stop(pid, wait_s)
    broker.pid_file.unlink(missing_ok=True)
    return pid
