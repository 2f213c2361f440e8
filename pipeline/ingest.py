"""`callpipe ingest`: the stream's chain over files, without a broker, straight into the lake.

For backfills of historical CDR files and the offline path. Each calls file is one source
(named after the file and a hash of its content, so ingesting it twice lands its rows once);
its records are numbered 0..n-1 and those numbers play the role of offsets. Consent and privacy
requests are loaded first, whole: every decision is judged at the call's own time against that
history, which is the event-time order the stream reaches by waiting for its consent streams.
What the policy's retention no longer allows at `now_ms` (the command's start) does not land:
a backfill lands what `jobs retention` would keep of it, and counts the rest (pipeline/expiry.py).
Dead letters go to `<lake>/_rejects/<source>/<first>-<last>.jsonl` (mode 0600: they hold raw
input), written before the range they belong to lands.
Rejected consent events and privacy requests are kept the same way, under their file's source.

A backfill lands a few large files per partition, not one per file, day, bucket and flush. The
unit of exactly once stays the input file (its source, its manifests, its lock), but one run
holds the rows of many files, staged as Arrow, until `Settings.ingest_flush_rows` (a memory
budget: ~360 bytes per staged row, twice that while the flush sorts them) or the end of its
input, and lands them all as one group flush (`sinks.group.land_together`): one file per zone x
dt x bucket for the rows of every file of the group, committed for all of them at one instant
through a group record. A kill -9 at any moment leaves every file of the group landed whole or
not at all; the next run (of any of them) finishes or undoes the group, then skips what the lake
holds. A file larger than the budget is landed in several ranges. Per-file sources rather than
one source per run (whose manifest would list its files): a file given again in a later run,
beside other files, is still recognised by its own manifests, and locks and recovery stay per
file as the stream's are per partition. The chain's caches (`pipeline.memo.Memo`) last the run.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.codec import Decoded, Limits, Lineage, decode_value
from pipeline.consent import AccountState, record_consent, record_request
from pipeline.keys import PseudonymKey
from pipeline.memo import Memo
from pipeline.policy import DEFAULT_SECRET_NAMES
from pipeline.reasons import Rejection
from pipeline.secrets_raw import without_secrets
from pipeline.settings import Settings
from pipeline.stream.runner import PartitionRunner, Tripped, Unit
from sinks import stats
from sinks.group import Hook, land_together
from sinks.lake import SourceBusy, file_source
from sinks.rejects import write_rejects
from sinks.stats import write_stats

CHUNK = 5_000  # input records per pass through the chain


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
    consent: list[Path],
    requests: list[Path],
    lake: Path | None = None,
    secret_names: Iterable[str] = DEFAULT_SECRET_NAMES,
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
                counts[stats.rejected(kind, rej.reason.value)] += 1
            if lake is not None and decoded.rejections:
                _keep_rejects(lake, file_source(path), decoded, secret_names)
            for rec in sorted(decoded.records, key=lambda r: r["at"]):
                states[rec["account_id"]] = apply(states.get(rec["account_id"]), rec)
                counts[stats.CONTROL_APPLIED[0] if kind == "consent" else stats.CONTROL_APPLIED[1]] += 1
    return states, counts


def _keep_rejects(lake: Path, source: str, decoded: Decoded, secret_names: Iterable[str]) -> None:
    """A control file's rejected records kept as dead letters, without secret-named entries (a
    JSON line may carry fields the schema does not know), as rejected calls are."""
    dead = [
        without_secrets(
            Rejection(
                rej.reason,
                rej.stage,
                -1,
                rej.offset if rej.offset >= 0 else (rej.index or 0),
                rej.index,
                rej.raw,
                rej.field,
            ),
            secret_names,
        )
        for rej in decoded.rejections
    ]
    offsets = [d.offset for d in dead]
    lake.mkdir(parents=True, exist_ok=True)  # the control files are read before any calls land
    write_rejects(lake, source, min(offsets), max(offsets), dead)


def _units(decoded: Decoded) -> list[Unit]:
    """Input units in order: a record (container files: its index) or a line with its events."""
    records: dict[int, list[dict[str, Any]]] = {}
    for rec, lin in zip(decoded.records, decoded.lineage, strict=True):
        unit = lin.offset if lin.offset >= 0 else lin.index
        found = records.get(unit)
        if found is None:
            records[unit] = [rec]
        else:
            found.append(rec)
    rejections: dict[int, list[Rejection]] = {}
    for rej in decoded.rejections:
        rejections.setdefault(rej.offset if rej.offset >= 0 else (rej.index or 0), []).append(rej)
    return [
        (unit, records.get(unit, []), rejections.get(unit, ()))
        for unit in sorted(records.keys() | rejections)
    ]


@dataclass
class _Open:
    """An input file whose writer is open (its source locked) and whose rows may be staged."""

    runner: PartitionRunner
    done: bool = False  # every record handed to the chain
    counts: Counter[str] = field(default_factory=Counter)  # of its landed ranges
    dead: list[Rejection] = field(default_factory=list)  # of its range not yet landed


def ingest_file(
    path: Path, settings: Settings, key: PseudonymKey, states: Mapping[str, AccountState], now_ms: int
) -> IngestResult:
    return ingest_files([path], settings, key, states, now_ms)[0]


def ingest_files(
    paths: Sequence[Path],
    settings: Settings,
    key: PseudonymKey,
    states: Mapping[str, AccountState],
    now_ms: int,
    *,
    hook: Hook | None = None,
    jobs: int = 1,
) -> list[IngestResult]:
    """Ingest `paths`, landing many files' rows per flush; one result per path, in order. `hook`
    is called after each durable step of a flush (tests raise in it to simulate a crash).

    With `jobs` > 1 the distinct files are shared among that many processes (`_in_processes`),
    the chain being CPU-bound Python: one process uses one core."""
    if jobs > 1 and hook is None and len(paths) > 1 and "fork" in mp.get_all_start_methods():
        return _in_processes(paths, settings, key, states, now_ms, jobs)
    return _ingest(paths, settings, key, states, now_ms, hook)


# What forked ingest processes inherit (set just before the fork, cleared after): the consent
# history may hold millions of accounts, which a fork shares and pickling would copy per process.
_INHERITED: tuple[Settings, PseudonymKey, Mapping[str, AccountState], int] | None = None


def _in_processes(
    paths: Sequence[Path],
    settings: Settings,
    key: PseudonymKey,
    states: Mapping[str, AccountState],
    now_ms: int,
    jobs: int,
) -> list[IngestResult]:
    """Each process takes a share of the distinct files (balanced by size, largest first) and
    ingests it as one run would: its own memo, flush groups and locks. Exactly once stays per
    file (its source, manifests and lock), so shares need no coordination; a file given twice
    is ingested once, as in one process. The flush budget is shared out: `jobs` processes hold
    no more staged rows together than one would. A failing share does not stop the others (what
    they land is landed whole); the first failure is raised once all have ended."""
    global _INHERITED
    sources = [file_source(path) for path in paths]
    distinct = list(dict(zip(sources, paths, strict=True)).items())
    shares: list[list[tuple[str, Path]]] = [[] for _ in range(min(jobs, len(distinct)))]
    loads = [0] * len(shares)
    for source, path in sorted(distinct, key=lambda sp: -sp[1].stat().st_size):
        least = loads.index(min(loads))
        shares[least].append((source, path))
        loads[least] += path.stat().st_size
    share_settings = dataclasses.replace(
        settings, ingest_flush_rows=max(1, settings.ingest_flush_rows // len(shares))
    )
    _INHERITED = (share_settings, key, states, now_ms)
    try:
        # an executor, not a Pool: a share killed outright breaks the run (BrokenProcessPool)
        # instead of leaving the parent waiting for its answer
        with ProcessPoolExecutor(len(shares), mp_context=mp.get_context("fork")) as pool:
            outcomes = list(pool.map(_share, [[path for _s, path in share] for share in shares]))
    finally:
        _INHERITED = None
    found: dict[str, IngestResult] = {}
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        found.update((result.source, result) for result in outcome)
    first: set[str] = set()
    results = []
    for source in sources:  # a file given again is reported as one process would: nothing new
        results.append(found[source] if source not in first else IngestResult(source, Counter(), 0))
        first.add(source)
    return results


def _share(paths: list[Path]) -> list[IngestResult] | Exception:
    """One forked process's share. What the command reports as a clean error comes back as a
    value (its message names files and partitions, never contents): such exceptions do not all
    survive pickling."""
    assert _INHERITED is not None, "a share runs in a process forked by _in_processes"
    settings, key, states, now_ms = _INHERITED
    try:
        return _ingest(paths, settings, key, states, now_ms, None)
    except (IngestError, SourceBusy, Tripped) as exc:
        return IngestError(str(exc))


def _ingest(
    paths: Sequence[Path],
    settings: Settings,
    key: PseudonymKey,
    states: Mapping[str, AccountState],
    now_ms: int,
    hook: Hook | None,
) -> list[IngestResult]:
    memo = Memo()
    open_files: list[_Open] = []
    results: dict[str, _Open] = {}
    order: list[tuple[str, _Open | None]] = []
    try:
        for path in paths:
            source = file_source(path)
            if source in results:  # the same content twice in one run lands once
                order.append((source, None))
                continue
            decoded = _read(path, "CallEvent")
            runner = PartitionRunner(
                lake=settings.lake,
                source=source,
                partition=-1,
                settings=settings,
                key=key,
                states_for=lambda accounts: {a: states[a] for a in accounts if a in states},
                now_ms=now_ms,
                memo=memo,
            )
            item = _Open(runner)
            open_files.append(item)
            results[source] = item
            order.append((source, item))
            units = _units(decoded)
            del decoded
            for start in range(0, len(units), CHUNK):
                item.dead.extend(runner.take_units(units[start : start + CHUNK], now_ms, time.monotonic()))
                runner.writer.stage()
                if sum(o.runner.writer.pending_rows for o in open_files) >= settings.ingest_flush_rows:
                    open_files = _flush(settings.lake, open_files, hook)
            item.done = True
        open_files = _flush(settings.lake, open_files, hook)
    finally:
        for item in open_files:
            item.runner.close()
    return [
        IngestResult(source, item.counts, item.runner.skipped)
        if item is not None
        else IngestResult(source, Counter(), 0)
        for source, item in order
    ]


def _flush(lake: Path, open_files: list[_Open], hook: Hook | None) -> list[_Open]:
    """Land what every open file has staged as one group; returns the files still open (those
    not done yet). Rejects and stats of each range are written first, under its range name."""
    landing = []
    for item in open_files:
        runner = item.runner
        first, through = runner.next_offset, runner.writer.through
        if through < first:
            continue
        if item.dead:
            write_rejects(lake, runner.source, first, through, item.dead)
            item.dead = []
        write_stats(lake, runner.source, first, through, runner.counts)
        landing.append(item)
    land_together([item.runner.writer for item in landing], hook=hook)
    for item in landing:
        item.counts.update(item.runner.counts)
        item.runner.counts = Counter()
    still_open = []
    for item in open_files:
        if item.done:
            item.runner.close()
        else:
            still_open.append(item)
    return still_open
