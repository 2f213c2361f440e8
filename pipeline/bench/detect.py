"""`callpipe bench detect`: pipeline.detect against (a) phonenumbers' PhoneNumberMatcher alone and
(b) Presidio's pattern recognizers, on the same labelled transcripts.

Corpus: transcripts over every region the generator knows, with their ground truth (PII values
by category, and ordinary numbers that must survive): half from
pipeline.carrier.generate_pii.generate_transcript (callpipe's own), half from
pipeline.bench.detect_corpus.hard_transcript (text as others write it: cards of every brand and
length, IBANs of every length in running text, international call prefixes, CJK text). Each
tool gets the call's region, as the stream gives pipeline.detect the call's own
regions: PhoneNumberMatcher(text, region), and Presidio's PhoneRecognizer built with
supported_regions=(region,): the figures the targets use. A second Presidio row runs its
PhoneRecognizer as it comes out of the box (eight default regions). Presidio (presidio-analyzer,
the `bench` extra) runs without any language model: PhoneRecognizer, EmailRecognizer,
IpRecognizer, CreditCardRecognizer and IbanRecognizer called directly with nlp_artifacts=None,
results merged with Presidio's own remove_duplicates (what AnalyzerEngine does, minus the NLP
pass). Its email check uses tldextract with the bundled public-suffix snapshot (no download).

Speed: transcripts per CPU second of the benchmark process (one core), the three tools taking
turns chunk by chunk. Scoring per PII value: found when a span of the same category covers it
whole (a partly redacted number still leaks); a predicted span is correct when it overlaps a
value of its category.
Ordinary numbers touched by any span are counted too (they are also false positives).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from pipeline.bench.common import BenchError, table
from pipeline.bench.detect_corpus import hard_transcript
from pipeline.carrier.generate import REGIONS
from pipeline.carrier.generate_pii import generate_transcript
from pipeline.detect import detect

Found = tuple[int, int, str]  # start, end, category
Tool = Callable[[str, str], list[Found]]

LABELS = {"[PHONE]": "phone", "[EMAIL]": "email", "[IP]": "ip", "[CARD]": "card", "[IBAN]": "iban"}
PRESIDIO = {
    "PHONE_NUMBER": "phone",
    "EMAIL_ADDRESS": "email",
    "IP_ADDRESS": "ip",
    "CREDIT_CARD": "card",
    "IBAN_CODE": "iban",
}
TARGET_SPEEDUP = 10.0
QUICK_TRANSCRIPTS = 3_000
FULL_TRANSCRIPTS = 20_000


@dataclass(frozen=True)
class Sample:
    text: str
    region: str
    pii: tuple[Found, ...]
    keep: tuple[tuple[int, int], ...]


def _locate(text: str, value: str, used: set[int]) -> tuple[int, int]:
    start = text.find(value)
    while start in used:
        start = text.find(value, start + 1)
    used.add(start)
    return start, start + len(value)


def corpus(seed: int, count: int) -> list[Sample]:
    """`count` labelled transcripts, regions in turn, callpipe's own and others' shapes in turn."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        region = REGIONS[i // 2 % len(REGIONS)]
        t = (hard_transcript if i % 2 else generate_transcript)(rng, region)
        used: set[int] = set()
        pii = tuple((*_locate(t.text, v, used), cat) for cat, v in t.pii)
        keep = tuple(_locate(t.text, v, used) for v in t.keep)
        out.append(Sample(t.text, region, pii, keep))
    return out


def callpipe_tool(text: str, region: str) -> list[Found]:
    return [(s.start, s.end, LABELS[s.label.value]) for s in detect(text, (region,))]


def phonenumbers_tool(text: str, region: str) -> list[Found]:
    import phonenumbers

    return [(m.start, m.end, "phone") for m in phonenumbers.PhoneNumberMatcher(text, region)]


def presidio_tool(default_regions: bool = False) -> Tool:
    """Presidio's pattern recognizers, no NLP engine; BenchError when the package is missing.
    default_regions: PhoneRecognizer as configured out of the box (its eight regions) instead of
    the call's region."""
    try:
        import tldextract
        from presidio_analyzer import EntityRecognizer
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
        )
        from presidio_analyzer.predefined_recognizers.generic import email_recognizer
    except ImportError:
        raise BenchError(
            "bench detect compares against Presidio: install the bench extra "
            "(pip install 'callpipe[bench]', which brings presidio-analyzer)"
        ) from None

    class _Offline:  # the email check's public-suffix lookup, from the bundled snapshot only
        extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    email_recognizer.tldextract = _Offline  # type: ignore[assignment,unused-ignore]
    fixed = [EmailRecognizer(), IpRecognizer(), CreditCardRecognizer(), IbanRecognizer()]
    entities = list(PRESIDIO)

    @cache
    def phone(region: str) -> Any:
        return PhoneRecognizer() if default_regions else PhoneRecognizer(supported_regions=(region,))

    def run(text: str, region: str) -> list[Found]:
        results = []
        for recognizer in [phone(region), *fixed]:
            results.extend(recognizer.analyze(text, entities, None))
        merged = EntityRecognizer.remove_duplicates(results)
        return [(r.start, r.end, PRESIDIO[r.entity_type]) for r in merged if r.entity_type in PRESIDIO]

    return run


def score(samples: Sequence[Sample], found: Sequence[Sequence[Found]]) -> dict[str, Any]:
    truth: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    predicted = correct = keep_hit = keep_total = 0
    for sample, spans in zip(samples, found, strict=True):
        for ts, te, cat in sample.pii:
            truth[cat] += 1
            if any(c == cat and s <= ts and e >= te for s, e, c in spans):
                hits[cat] += 1
        for s, e, c in spans:
            predicted += 1
            if any(c == cat and s < te and e > ts for ts, te, cat in sample.pii):
                correct += 1
        for ks, ke in sample.keep:
            keep_total += 1
            if any(s < ke and e > ks for s, e, _c in spans):
                keep_hit += 1
    total = sum(truth.values())
    return {
        "recall": round(sum(hits.values()) / total, 4) if total else None,
        "precision": round(correct / predicted, 4) if predicted else None,
        "recall_by_category": {c: round(hits[c] / n, 4) for c, n in sorted(truth.items())},
        "ordinary_numbers_touched": keep_hit,
        "ordinary_numbers": keep_total,
        "spans": predicted,
    }


def measure(tools: dict[str, Tool], samples: Sequence[Sample], rounds: int = 10) -> dict[str, Any]:
    """CPU seconds of each tool over the samples (process time: steadier than wall time on a
    shared machine), the tools interleaved chunk by chunk so load changes hit them alike."""
    for tool in tools.values():
        for s in samples[:200]:  # warm-up: caches, lazily loaded metadata
            tool(s.text, s.region)
    seconds = dict.fromkeys(tools, 0.0)
    found: dict[str, list[list[Found]]] = {name: [] for name in tools}
    step = max(1, -(-len(samples) // rounds))
    for start in range(0, len(samples), step):
        chunk = samples[start : start + step]
        for name, tool in tools.items():
            began = time.process_time()
            found[name].extend(tool(s.text, s.region) for s in chunk)
            seconds[name] += time.process_time() - began
    return {"seconds": seconds, "found": found}


def run(quick: bool, count: int | None = None) -> dict[str, Any]:
    presidio = presidio_tool()
    samples = corpus(7, count or (QUICK_TRANSCRIPTS if quick else FULL_TRANSCRIPTS))
    figures: dict[str, Any] = {
        "bench": "detect",
        "quick": quick,
        "transcripts": len(samples),
        "pii_values": sum(len(s.pii) for s in samples),
        "tools": {},
    }
    tools = {
        "callpipe": callpipe_tool,
        "phonenumbers": phonenumbers_tool,
        "presidio": presidio,
        "presidio_default_regions": presidio_tool(default_regions=True),
    }
    measured = measure(tools, samples)
    for name in tools:
        seconds = measured["seconds"][name]
        figures["tools"][name] = {
            "cpu_seconds": round(seconds, 3),
            "transcripts_per_s": round(len(samples) / seconds),
            **score(samples, measured["found"][name]),
        }
    ours, theirs = figures["tools"]["callpipe"], figures["tools"]["presidio"]
    speedup = ours["transcripts_per_s"] / theirs["transcripts_per_s"]
    for t in figures["tools"].values():
        t["speed_vs_presidio"] = round(t["transcripts_per_s"] / theirs["transcripts_per_s"], 2)
    figures["targets"] = {
        "speed_at_least_10x_presidio": speedup >= TARGET_SPEEDUP,
        "recall_at_least_presidio": ours["recall"] >= theirs["recall"],
        "precision_at_least_presidio": ours["precision"] >= theirs["precision"],
    }
    return figures


def render(figures: dict[str, Any]) -> str:
    rows = [
        [
            name,
            t["transcripts_per_s"],
            t["speed_vs_presidio"],
            t["recall"],
            t["precision"],
            f"{t['ordinary_numbers_touched']}/{t['ordinary_numbers']}",
            " ".join(f"{c}={v:.3f}" for c, v in t["recall_by_category"].items()),
        ]
        for name, t in figures["tools"].items()
    ]
    head = f"{figures['transcripts']:,} transcripts, {figures['pii_values']:,} PII values\n\n"
    body = table(
        [
            "detector",
            "transcripts/s",
            "x presidio",
            "recall",
            "precision",
            "ordinary touched",
            "recall by category",
        ],
        rows,
    )
    targets = table(["target", "met"], [[k, v] for k, v in figures["targets"].items()])
    return head + body + "\n\n" + targets
