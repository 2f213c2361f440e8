"""What the lake holds, by source and offset range: manifests (the source of truth) and the
Parquet key-value metadata that travels with the rows.

Source of truth. `<lake>/_manifest/<source>/<first>-<last>.json` exists exactly when every row
of that source's offsets first..last (inclusive) is in the lake (or was there and has since been
compacted or erased). The stream sink commits a range by writing its manifest; recovery reads
only manifest names. Jobs that replace files (compact, erase, retention) never touch
`_manifest/`: a range stays held even when erasure empties or deletes its files, which is what
keeps a replay from resurrecting erased rows.

Key-value metadata. Every lake file also carries `callpipe.lineage`: JSON
`{"<source>": [[first, last], ...]}`, the ranges whose rows it holds. It is a copy for audit and
for rebuilding `_manifest/` if it is lost (`rebuild_manifests`); a job that replaces files keeps it with
`carry_lineage` (pyarrow) or `lineage_json` (DuckDB `COPY ... (KV_METADATA {...})`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa

from sinks import crypt, files
from sinks.layout import MANIFESTS

MANIFEST_DIR = MANIFESTS
MANIFEST_DIR_MODE = 0o700
MANIFEST_FILE_MODE = 0o600
LINEAGE_KEY = b"callpipe.lineage"
SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")
MANIFEST_RE = re.compile(r"^(\d{12,})-(\d{12,})\.json$")

Range = tuple[int, int]


def check_source(source: str) -> str:
    if not SOURCE_RE.match(source) or len(source) > 200:
        raise ValueError("a source name is letters, digits, '.', '_', '=', '-' (at most 200)")
    return source


@dataclass(frozen=True)
class ManifestFile:
    zone: str
    path: str  # relative to the lake root, final name
    rows: int


@dataclass(frozen=True)
class Manifest:
    """One committed offset range of one source and the files its flush wrote."""

    source: str
    first: int
    last: int
    files: tuple[ManifestFile, ...]

    def to_json(self) -> bytes:
        body = {
            "version": 1,
            "source": self.source,
            "first": self.first,
            "last": self.last,
            "files": [{"zone": f.zone, "path": f.path, "rows": f.rows} for f in self.files],
        }
        # orjson: the json module's indenting encoder is pure Python, and a backfill's group
        # flush writes manifests listing thousands of files
        return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        body = json.loads(data)
        entries = tuple(ManifestFile(f["zone"], f["path"], int(f["rows"])) for f in body["files"])
        return cls(body["source"], int(body["first"]), int(body["last"]), entries)


def manifest_dir(lake: Path, source: str) -> Path:
    return lake / MANIFEST_DIR / check_source(source)


def manifest_path(lake: Path, source: str, first: int, last: int) -> Path:
    return manifest_dir(lake, source) / f"{first:012d}-{last:012d}.json"


def write_manifest(lake: Path, manifest: Manifest) -> Path:
    """Commit a range: after this returns, the range is held (durably)."""
    path = manifest_path(lake, manifest.source, manifest.first, manifest.last)
    return files.write_bytes(
        manifest.to_json(), path, mode=MANIFEST_FILE_MODE, root=lake, dir_mode=MANIFEST_DIR_MODE
    )


def read_manifest(lake: Path, source: str, first: int, last: int) -> Manifest:
    return Manifest.from_json(manifest_path(lake, source, first, last).read_bytes())


def held_ranges(lake: Path, source: str) -> list[Range]:
    """The committed ranges of a source, ascending (from manifest names; temp manifests ignored)."""
    folder = manifest_dir(lake, source)
    if not folder.is_dir():
        return []
    found = (MANIFEST_RE.match(name) for name in (p.name for p in folder.iterdir()))
    return sorted((int(m.group(1)), int(m.group(2))) for m in found if m)


def sources(lake: Path) -> list[str]:
    """Every source with a manifest folder in the lake."""
    root = lake / MANIFEST_DIR
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """Ranges sorted, with overlapping and adjacent ones joined."""
    out: list[list[int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return [(a, b) for a, b in out]


def lineage_json(ranges: Mapping[str, Iterable[Range]]) -> str:
    merged = {check_source(s): [list(r) for r in merge_ranges(rs)] for s, rs in sorted(ranges.items())}
    return json.dumps(merged, separators=(",", ":"))


def lineage_metadata(ranges: Mapping[str, Iterable[Range]]) -> dict[bytes, bytes]:
    """The key-value metadata entry recording which source ranges a file holds."""
    return {LINEAGE_KEY: lineage_json(ranges).encode()}


def parse_lineage(metadata: Mapping[bytes, bytes] | None) -> dict[str, list[Range]]:
    raw = (metadata or {}).get(LINEAGE_KEY)
    if raw is None:
        return {}
    return {s: [(int(a), int(b)) for a, b in rs] for s, rs in json.loads(raw).items()}


def read_lineage(path: Path) -> dict[str, list[Range]]:
    """The ranges a lake file says it holds (from its footer only; no data is read)."""
    return parse_lineage(crypt.read_metadata(path).metadata)


def combined_lineage(paths: Sequence[Path]) -> dict[str, list[Range]]:
    """The union of the ranges of several files (what a file replacing them all holds)."""
    union: dict[str, list[Range]] = {}
    for path in paths:
        for source, ranges in read_lineage(path).items():
            union.setdefault(source, []).extend(ranges)
    return {source: merge_ranges(ranges) for source, ranges in union.items()}


def carry_lineage(table: pa.Table, replaced: Sequence[Path]) -> pa.Table:
    """`table`, ready to be written as the replacement of `replaced`, with their lineage.

    Use it in compaction and erasure: `files.write_parquet(carry_lineage(t, olds), new, zone, ...)`.
    """
    return files.table_metadata(table, lineage_metadata(combined_lineage(replaced)))


def recorded_ranges(lineages: Iterable[Mapping[str, Sequence[Range]]]) -> dict[str, list[Range]]:
    """The ranges files record (`read_lineage` of each), per source, as they record them (not
    merged), leaving out those inside another: a file written by a flush records the flush's own
    range, so these are the original manifests' ranges wherever no compaction merged them."""
    found: dict[str, set[Range]] = {}
    for recorded in lineages:
        for source, ranges in recorded.items():
            found.setdefault(source, set()).update(ranges)
    return {source: _outermost(ranges) for source, ranges in found.items()}


def _outermost(ranges: Iterable[Range]) -> list[Range]:
    """The ranges not inside another one, ascending."""
    out: list[Range] = []
    reach = -1  # the furthest last of the ranges kept (each starts at or before this one)
    for first, last in sorted(ranges, key=lambda r: (r[0], -r[1])):
        if out and last <= reach:
            continue
        out.append((first, last))
        reach = max(reach, last)
    return out


def missing_ranges(lake: Path, found: Mapping[str, Sequence[Range]]) -> dict[str, list[Range]]:
    """The ranges of `found` (per source) that no manifest of `lake` covers, per source (sources
    with none left out)."""
    missing: dict[str, list[Range]] = {}
    for source, ranges in sorted(found.items()):
        covered = merge_ranges(held_ranges(lake, source))
        for first, last in ranges:
            if not any(a <= first and last <= b for a, b in covered):
                missing.setdefault(source, []).append((first, last))
    return missing


def write_ranges(lake: Path, ranges: Mapping[str, Sequence[Range]]) -> None:
    """Commit each range with a manifest listing no files (durably, as a flush commits it)."""
    for source, rs in sorted(ranges.items()):
        for first, last in rs:
            write_manifest(lake, Manifest(source, first, last, ()))


def rebuild_manifests(lake: Path, lake_files: Sequence[Path]) -> dict[str, list[Range]]:
    """Write manifests for the ranges the files' metadata records and no manifest covers (after
    `_manifest/` was lost), as the files record them (`recorded_ranges`: a flush's own range
    unless compaction merged it, so its `_stats/` record, matched by range, counts again).
    Ranges that landed no row, or whose files were all erased, cannot be seen in files and stay
    missing: a replay of them lands only rows the chain lets through. Returns the ranges
    written, per source. `callpipe jobs rebuild-manifests` (jobs/manifests.py) does this under
    the writers' and the jobs' locks."""
    written = missing_ranges(lake, recorded_ranges(map(read_lineage, lake_files)))
    write_ranges(lake, written)
    return written
