"""`callpipe ingest`: the stream's chain over files, without a broker, straight into the lake.

For backfills of historical CDR files and the offline path. Each calls file is one source
(named after the file and a hash of its content, so ingesting it twice lands its rows once);
its records are numbered 0..n-1 and those numbers play the role of offsets. Consent and privacy
requests are loaded first, whole: every decision is judged at the call's own time against that
history, which is the event-time order the stream reaches by waiting for its consent streams.
Dead letters go to `<lake>/_rejects/<source>/<first>-<last>.jsonl` (mode 0600: they hold raw
input), written before the range they belong to lands.
Rejected consent events and privacy requests are kept the same way, under their file's source.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from pipeline.codec import Decoded, Limits, Lineage, decode_value
from pipeline.consent import AccountState, record_consent, record_request
from pipeline.keys import PseudonymKey
from pipeline.runner import DeadLetter, PartitionRunner
from pipeline.settings import Settings
from sinks import files
from sinks.lake import file_source

CHUNK = 5_000  # input records per pass through the chain
REJECTS_DIR = "_rejects"


class IngestError(ValueError):
    """An input file that cannot be read at all; the message names the file, never its content."""


@dataclass(frozen=True)
class IngestResult:
    source: str
    counts: Counter[str]
    skipped: int  # records the lake already held


def _read(path: Path, record_name: str) -> Decoded:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IngestError(f"{path}: cannot read ({exc.strerror})") from None
    if not data.strip():
        return Decoded()
    if data.startswith(b"Obj\x01"):
        # A container file is one unit of many records: the per-message limit of the stream
        # (a Kafka message) does not apply to it, the per-event limit still does.
        return decode_value(data, record_name, limits=Limits(max_message_bytes=len(data) + 1))
    # JSON lines: one unit per line, so a bad line is one dead letter with its own position.
    out = Decoded()
    for number, line in enumerate(data.splitlines()):
        if not line.strip():
            continue
        one = decode_value(line, record_name, offset=number)
        out.records.extend(one.records)
        out.lineage.extend(Lineage(-1, number, i) for i in range(len(one.records)))
        out.rejections.extend(one.rejections)
    return out


def load_states(
    consent: list[Path], requests: list[Path], lake: Path | None = None
) -> tuple[dict[str, AccountState], Counter[str]]:
    """Every account's consent and request history from the control files. Rejected records are
    counted by reason and, with `lake`, kept as dead letters like rejected calls (under the file's
    own source), so an operator sees them and an access request or erasure finds them."""
    states: dict[str, AccountState] = {}
    counts: Counter[str] = Counter()
    for kind, paths, record_name, apply in (
        ("consent", consent, "ConsentEvent", record_consent),
        ("requests", requests, "PrivacyRequest", record_request),
    ):
        for path in paths:
            decoded = _read(path, record_name)
            for rej in decoded.rejections:
                counts[f"{kind}_rejected.{rej.reason.value}"] += 1
            if lake is not None and decoded.rejections:
                _keep_rejects(lake, file_source(path), decoded)
            for rec in sorted(decoded.records, key=lambda r: r["at"]):
                states[rec["account_id"]] = apply(states.get(rec["account_id"]), rec)
                counts["consent_events" if kind == "consent" else "privacy_requests"] += 1
    return states, counts


def _keep_rejects(lake: Path, source: str, decoded: Decoded) -> None:
    dead = [
        DeadLetter(
            rej.reason, rej.stage, -1, rej.offset if rej.offset >= 0 else (rej.index or 0), rej.index, rej.raw
        )
        for rej in decoded.rejections
    ]
    offsets = [d.offset for d in dead]
    lake.mkdir(parents=True, exist_ok=True)  # the control files are read before any calls land
    write_rejects(lake, source, min(offsets), max(offsets), dead)


def _units(decoded: Decoded) -> Iterator[tuple[int, Decoded]]:
    """Input units in order: a record (container files: its index) or a line with its events."""
    by_unit: dict[int, Decoded] = {}
    for rec, lin in zip(decoded.records, decoded.lineage, strict=True):
        unit = lin.offset if lin.offset >= 0 else lin.index
        by_unit.setdefault(unit, Decoded()).records.append(rec)
    for rej in decoded.rejections:
        unit = rej.offset if rej.offset >= 0 else (rej.index or 0)
        by_unit.setdefault(unit, Decoded()).rejections.append(rej)
    for unit in sorted(by_unit):
        yield unit, by_unit[unit]


def write_rejects(lake: Path, source: str, first: int, last: int, dead: list[DeadLetter]) -> None:
    lines = b"".join(
        orjson.dumps(
            {
                "reason": d.reason.value,
                "stage": d.stage.value,
                "offset": d.offset,
                "index": d.index,
                "raw_b64": base64.b64encode(d.raw).decode(),
            }
        )
        + b"\n"
        for d in dead
    )
    final = lake / REJECTS_DIR / source / f"{first:012d}-{last:012d}.jsonl"
    files.write_bytes(lines, final, mode=0o600, root=lake, dir_mode=0o700)


def ingest_file(
    path: Path, settings: Settings, key: PseudonymKey, states: Mapping[str, AccountState], now_ms: int
) -> IngestResult:
    source = file_source(path)
    decoded = _read(path, "CallEvent")
    runner = PartitionRunner(
        lake=settings.lake,
        source=source,
        partition=-1,
        settings=settings,
        key=key,
        states_for=lambda accounts: {a: states[a] for a in accounts if a in states},
        now_ms=now_ms,
    )
    try:
        return _ingest(runner, settings, decoded, source, now_ms)
    finally:
        runner.close()


def _ingest(
    runner: PartitionRunner, settings: Settings, decoded: Decoded, source: str, now_ms: int
) -> IngestResult:
    total: Counter[str] = Counter()
    dead: list[DeadLetter] = []
    units = list(_units(decoded))
    for start in range(0, len(units), CHUNK):
        for unit, one in units[start : start + CHUNK]:
            dead.extend(runner.feed_records(unit, one))
        dead.extend(runner.pump(now_ms, time.monotonic(), drain=True))
        first, through = runner.next_offset, runner.writer.through
        if through >= first and (runner.due(time.monotonic()) or start + CHUNK >= len(units)):
            if dead:
                write_rejects(settings.lake, source, first, through, dead)
                dead = []
            total.update(runner.counts)
            runner.flush()
    return IngestResult(source, total, runner.skipped)
