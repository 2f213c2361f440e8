"""Takeover after a kill -9: two workers share the partitions, one is killed, the survivor takes
its partitions over. Prints how long after the kill the survivor owned them and how long until
every event was in the lake (with the test settings: flush every second).

    CALLPIPE_BOOTSTRAP=127.0.0.1:9092 PYTHONPATH=. .venv/bin/python tests/canary/bench_takeover.py WORKDIR

Needs a running broker (`callpipe kafka up`). Timing only; the exactly-once checks are the e2e
tests' job (tests/e2e/test_stream_e2e.py, test_carrier_partitioning.py).
"""

from __future__ import annotations

import os
import random
import re
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from pipeline.carrier.generate import generate_traffic
from tests.e2e.test_stream_e2e import wait_for_group, worker_env
from tests.streamkit import make_topics, publish, records_to_messages, start_worker, stop, wait_for_events

b = os.environ["CALLPIPE_BOOTSTRAP"]
tmp = Path(sys.argv[1])
tmp.mkdir(parents=True, exist_ok=True)
prefix = f"tk{random.randrange(1 << 30):x}."
make_topics(b, prefix, 4)
calls = generate_traffic(77, 8000, int(time.time() * 1000) - 3 * 3600000, 2 * 3600000, accounts=400).calls
msgs = records_to_messages(calls, "CallEvent", 4)
lake = tmp / "lake"
env = worker_env(tmp, b)
w1 = start_worker(prefix, lake, env, tmp / "w1.log")
w2 = start_worker(prefix, lake, env, tmp / "w2.log")
wait_for_group(b, prefix + "callpipe-stream", 2, 120)
publish(b, prefix + "calls.raw", msgs[:4000])
wait_for_events(lake, 4000, 120, w1)
w2.send_signal(signal.SIGKILL)
w2.wait()
killed = time.time()
publish(b, prefix + "calls.raw", msgs[4000:])
wait_for_events(lake, len(msgs), 180, w1)
landed = time.time()
stop(w1)
text = (tmp / "w1.log").read_text()
owned = [
    datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    for m in re.findall(r"^\[([\d-]+ [\d:,]+)\].*resumes at offset", text, re.M)
]
after = [t - killed for t in owned if t > killed]
owned_after = min(after) if after else -1
print(f"survivor owned the dead worker's partitions after {owned_after:.1f} s;", end=" ")
print(f"every event landed {landed - killed:.1f} s after the kill")
