"""Codec throughput: decode (the stream's hot path) and encode, per format and events per message.

    .venv/bin/python pipeline/bench/bench_codec.py [--events 50000] [--repeat 5]

Decodes realistic generated CallEvents (transcripts, devices, attributes) through
`codec.decode_batch`, the call the stream agents make, and prints events/s for Avro (Confluent
wire format) and JSON at 1 and 500 events per message, best of --repeat runs, per CPU second
of this process (the machine may be shared). Also prints encode events/s and how fast the
generator makes events.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from pipeline import codec
from pipeline.carrier import generate

START = 1_767_225_600_000


@dataclass(frozen=True, slots=True)
class Message:
    value: bytes
    partition: int
    offset: int
    headers: Any = None


def best(repeat: int, fn: Any) -> float:
    """Fastest of `repeat` runs in CPU seconds of this process (steadier than wall time when
    other work shares the machine)."""
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n = args.events
    t = time.process_time()
    calls = generate.generate_calls(7, n, START)
    print(f"generate      {n / (time.process_time() - t):>10,.0f} events/s")
    for fmt in ("avro", "json"):
        for batch in (1, 500):
            enc = best(args.repeat, lambda fmt=fmt, batch=batch: codec.encode(calls, "CallEvent", fmt, batch))
            values = codec.encode(calls, "CallEvent", fmt, batch)
            msgs = [Message(v, 0, i) for i, v in enumerate(values)]
            out = codec.decode_batch(msgs, "CallEvent")
            assert out.records == calls and not out.rejections
            dec = best(args.repeat, lambda msgs=msgs: codec.decode_batch(msgs, "CallEvent"))
            size = sum(map(len, values)) / n
            print(
                f"{fmt:<4} batch {batch:<3}  decode {n / dec:>10,.0f} events/s   "
                f"encode {n / enc:>10,.0f} events/s   {size:,.0f} bytes/event"
            )


if __name__ == "__main__":
    main()
