"""Takeover after a kill -9: two workers share the partitions, one is killed, the survivor takes
its partitions over. Prints how long after the kill the survivor owned them and how long until
every event was in the lake (flush every second, as the broker tests run the worker).

    CALLPIPE_BOOTSTRAP=127.0.0.1:9092 .venv/bin/python -m pipeline.bench.bench_takeover WORKDIR

Needs a running broker (`callpipe kafka up`). Timing only; the exactly-once checks are the broker
tests' job (tests/e2e/test_stream_e2e.py, test_carrier_partitioning.py).
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from pipeline.bench import kafka
from pipeline.bench.worker import Worker, worker_env
from pipeline.carrier.generate import generate_traffic
from pipeline.carrier.produce import Shipment, publish
from pipeline.kafka_access import CARRIER, OPERATOR, WORKER
from pipeline.settings import Settings
from schemas.clock import HOUR_MS
from schemas.topics import CALLS, STREAM_GROUP

PARTITIONS = 4


def main() -> None:
    settings = replace(Settings.from_env(), partitions=PARTITIONS)
    tmp = Path(sys.argv[1]).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    prefix = f"tk{random.randrange(1 << 30):x}."
    kafka.make_topics(settings, prefix)
    calls = generate_traffic(77, 8000, int(time.time() * 1000) - 3 * HOUR_MS, 2 * HOUR_MS, accounts=400).calls
    env = worker_env(tmp, settings.kafka(WORKER), PARTITIONS)
    lake = tmp / "lake"
    survivor = Worker.start(prefix, lake, env, tmp / "w1.log")
    victim = Worker.start(prefix, lake, env, tmp / "w2.log")
    try:
        kafka.wait_for_group(settings.kafka(OPERATOR), prefix + STREAM_GROUP, 2, 120)
        asyncio.run(publish(settings.kafka(CARRIER), [Shipment(prefix + CALLS, "CallEvent", calls[:4000])]))
        survivor.wait_for(4000, 120)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        killed = time.time()
        asyncio.run(publish(settings.kafka(CARRIER), [Shipment(prefix + CALLS, "CallEvent", calls[4000:])]))
        survivor.wait_for(len(calls), 180)
        landed = time.time()
    finally:
        survivor.stop()
        victim.stop()
        kafka.delete_topics(settings.kafka(OPERATOR), prefix)
    text = survivor.log.read_text()
    owned = [
        datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for m in re.findall(r"^\[([\d-]+ [\d:,]+)\].*resumes at offset", text, re.M)
    ]
    after = [t - killed for t in owned if t > killed]
    owned_after = min(after) if after else -1
    print(f"survivor owned the dead worker's partitions after {owned_after:.1f} s;", end=" ")
    print(f"every event landed {landed - killed:.1f} s after the kill")


if __name__ == "__main__":
    main()
