"""Throughput of the free-text detector on realistic call transcripts.

    .venv/bin/python -m pipeline.bench.bench_detect [N]     (from a checkout)

Builds N seeded transcripts (4-14 speaker turns of call-centre talk full of ordinary numbers:
times, dates, amounts, order and ticket numbers, versions; about 1 in 8 carries planted PII from
the labelled canary corpus the tests use, tests/canary/transcripts.jsonl), then times `detect` +
`redact` over all of them and prints transcripts per second of CPU time (the machine may be
shared) and of wall-clock time.
Not a test: timing belongs to benchmarks.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from pipeline.detect import detect, redact

CORPUS = Path(__file__).resolve().parents[2] / "tests" / "canary" / "transcripts.jsonl"

TURNS = [
    "Agent: Thank you for calling, my name is {name}, how can I help you today?",
    "Customer: Hi, I'm calling about my bill from {date}, it says {amount} but I expected less.",
    "Agent: I can see order {order} placed on {date} at {time}.",
    "Customer: Yes, that's the one, it was supposed to arrive by {time} on {date}.",
    "Agent: I've opened ticket #{ticket} for you; the refund of {amount} takes {n} working days.",
    "Customer: The app on version {version} keeps crashing since the update.",
    "Agent: Our engineers fixed that in {version}, please update and restart.",
    "Customer: I've been a customer since {year} and my plan went up {pct} this year.",
    "Agent: I understand. I can offer {pct} off for the next {n} months, that's {amount} a month.",
    "Customer: Okay, that sounds fair. Can you confirm it in writing?",
    "Agent: Of course. Is there anything else I can help with today?",
    "Customer: No, that's all, thank you very much.",
    "Agent: You're welcome, have a great day. Your reference is case {ticket}.",
    "Customer: Sorry, could you repeat that? The line is bad, I'm on the train.",
    "Agent: The outage on {date} between {time} and {time} affected {n} customers in your area.",
]
NAMES = ["Priya", "Tom", "Anna", "Luis", "Mei", "Kwame", "Sofia", "Omar"]


def _fill(rng: random.Random, template: str) -> str:
    return template.format_map(
        {
            "name": rng.choice(NAMES),
            "date": rng.choice(
                [
                    f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                    f"{rng.randint(1, 28)}/0{rng.randint(1, 9)}/2024",
                ]
            ),
            "time": f"{rng.randint(7, 20)}:{rng.choice(['00', '15', '30', '45'])}",
            "amount": rng.choice(
                [
                    f"${rng.randint(10, 2000)}.{rng.randint(0, 99):02d}",
                    f"£{rng.randint(1, 9)},{rng.randint(100, 999)}.00",
                ]
            ),
            "order": str(rng.randint(10**9, 10**10 - 1)),
            "ticket": str(rng.randint(10_000, 9_999_999)),
            "version": f"{rng.randint(1, 12)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
            "year": str(rng.randint(2005, 2024)),
            "pct": f"{rng.randint(1, 40)}%",
            "n": str(rng.randint(2, 30)),
        }
    )


def corpus(n: int, seed: int = 7) -> list[tuple[str, tuple[str, ...]]]:
    rng = random.Random(seed)
    canaries = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    out = []
    for _ in range(n):
        turns = [_fill(rng, rng.choice(TURNS)) for _ in range(rng.randint(4, 14))]
        regions: tuple[str, ...] = ("US", "GB")
        if rng.random() < 0.125:
            canary = rng.choice(canaries)
            turns.insert(rng.randint(0, len(turns)), canary["text"])
            regions = tuple(canary["regions"]) or regions
        out.append((" ".join(turns), regions))
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    texts = corpus(n)
    chars = sum(len(t) for t, _ in texts)
    start, cpu = time.perf_counter(), time.process_time()
    found = 0
    for text, regions in texts:
        spans = detect(text, regions)
        found += len(spans)
        redact(text, spans)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(
        f"{n} transcripts, {chars / n:.0f} chars avg, {found} spans: "
        f"{n / cpu:,.0f} transcripts/s of CPU time ({chars / cpu / 1e6:.1f} MB/s), "
        f"{n / elapsed:,.0f}/s wall clock"
    )


if __name__ == "__main__":
    main()
