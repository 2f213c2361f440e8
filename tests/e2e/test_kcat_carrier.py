"""A carrier connecting with kcat, with exactly the properties docs/ARCHITECTURE.md (Security, "How
a carrier connects") hands it: over SASL_SSL it produces into calls.raw and the worker lands every
event; reading calls.dlq, the same login is refused by the broker's ACLs.

kcat must be installed (Debian's kcat package; `infra/dev.sh test` installs it as root): a
missing kcat fails the test, never skips it. Debian 12's kcat links librdkafka 2.0.2, whose SCRAM
exchange Kafka 4 rejects as "invalid credentials" (fixed in librdkafka 2.6.1, see ARCHITECTURE.md);
with an older librdkafka the test runs the same kcat binary against the librdkafka that the
confluent-kafka wheel bundles (same soname and ABI), as a carrier on such a system can.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import confluent_kafka
import pytest

from pipeline import codec
from pipeline.carrier.generate import generate_traffic
from pipeline.kafka_access import CARRIER
from schemas import topics
from tests.support.streamkit import (
    ROOT,
    access,
    make_topics,
    start_worker,
    stop,
    wait_for_events,
    worker_env,
    zone,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
PARTITIONS = 2
HOUR = 3_600_000
FIXED_SCRAM = (2, 6, 1)  # the first librdkafka whose SCRAM exchange Kafka 4 accepts


def _librdkafka(kcat: str, env: dict[str, str]) -> tuple[int, ...]:
    out = subprocess.run([kcat, "-V"], env=env, capture_output=True, text=True, timeout=30, check=True)
    found = re.search(r"librdkafka (\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    assert found, f"kcat -V names no librdkafka version: {out.stdout!r}"
    return tuple(int(n) for n in found.groups())


@pytest.fixture(scope="module")
def kcat(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """(kcat, the environment it runs in): with the system's librdkafka when that can do SCRAM
    against Kafka 4, else with confluent-kafka's bundled one through a private library folder."""
    exe = shutil.which("kcat")
    if exe is None:
        pytest.fail("kcat is not installed: Debian's kcat package (infra/dev.sh test installs it as root)")
    env = dict(os.environ)
    if _librdkafka(exe, env) < FIXED_SCRAM:
        bundled = sorted(
            (Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs").glob("librdkafka-*.so.1")
        )
        assert bundled, "confluent-kafka's wheel bundles no librdkafka-*.so.1"
        libs = tmp_path_factory.mktemp("librdkafka")
        (libs / "librdkafka.so.1").symlink_to(bundled[0])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH")) if p)
    assert _librdkafka(exe, env) >= FIXED_SCRAM
    return exe, env


def documented_properties(bootstrap: str) -> list[str]:
    """The `-b` and `-X` arguments of the kcat command in docs/ARCHITECTURE.md, with the carrier's
    real password and CA file where the document names `carrier.password` and `ca.pem`."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"```\n(kcat -P .*?)```", text, re.S)
    assert block, "docs/ARCHITECTURE.md shows no kcat command"
    props = dict(re.findall(r'-X ([a-z.]+)=("[^"]*"|\S+)', block.group(1)))
    assert set(props) == {
        "security.protocol",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "ssl.ca.location",
    }
    assert props["sasl.username"] == CARRIER
    carrier = access(CARRIER, bootstrap)
    assert props["sasl.password"] == '"$(cat carrier.password)"' and props["ssl.ca.location"] == "ca.pem"
    assert carrier.ca_file is not None
    props |= {"sasl.password": carrier.password(), "ssl.ca.location": str(carrier.ca_file)}
    return ["-b", bootstrap, *(arg for k, v in props.items() for arg in ("-X", f"{k}={v}"))]


def test_a_carrier_produces_with_kcat_and_cannot_read_the_dead_letters(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, kcat: tuple[str, dict[str, str]]
) -> None:
    exe, env = kcat
    make_topics(kafka_bootstrap, topic_prefix, PARTITIONS)
    props = documented_properties(kafka_bootstrap)
    calls = generate_traffic(31, 60, int(time.time() * 1000) - 3 * HOUR, HOUR, accounts=12).calls
    # one JSON call a line, keyed by its account (kcat -K: key, tab, value); librdkafka's own
    # partitioner picks the partition, as a carrier's would
    lines = b"".join(c["account_id"].encode() + b"\t" + codec.to_json(c, "CallEvent") + b"\n" for c in calls)
    produced = subprocess.run(
        [exe, "-P", "-t", topic_prefix + topics.CALLS, "-K", "\\t", *props],
        input=lines,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert produced.returncode == 0, produced.stderr.decode(errors="replace")[-400:]

    lake = tmp_path / "lake"
    proc = start_worker(topic_prefix, lake, worker_env(tmp_path, kafka_bootstrap), tmp_path / "worker.log")
    try:
        wait_for_events(lake, len(calls), 120, proc)
    finally:
        stop(proc)
    assert sorted(r["event_id"] for r in zone(lake, "vault")) == sorted(c["event_id"] for c in calls)

    # the carrier's login, consuming calls.dlq: refused by the broker (no READ ACL)
    refused = subprocess.run(
        [exe, "-C", "-e", "-t", topic_prefix + topics.DLQ, *props],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    assert b"Topic authorization failed" in refused.stderr, refused.stderr.decode(errors="replace")[-400:]
    assert not refused.stdout
