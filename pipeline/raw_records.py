"""What the raw bytes of a dead letter hold, read as far as they go: whose they are and how old.

A dead letter keeps the bytes that failed (`sinks.rejects`), so they cannot be trusted to parse.
Erasure and access must still find a subject's dead letters, and retention must still date them.
`read` takes them apart with every framing the codec accepts (the same sniffing order as
`pipeline.codec`):
- Confluent: the body with the writer schema its id names (one record or a batch);
- an Avro object container file, block by block: a block that decodes gives its records; one
  that does not (a damaged or cut tail) is decompressed as far as it goes (null and deflate
  codecs) and searched as bytes; a compressed block that does not even decompress is opaque;
- JSON (one object, an array, or lines, each line on its own);
- else a bare Avro body of one record or a batch, of any record a topic carries.
Whatever is not compressed is also kept as bytes to search (`plain`): decoding only adds to a
search, never replaces it, so a body that decodes by accident under the wrong schema still has
its bytes searched.

`holds_subject` says whether a dead letter is a subject's: True when a decoded record's
`account_id` is the id, or any plain part spells it as JSON or Avro does (`spellings`: orjson's
and Python json's escapes, ASCII-escaped, an escaped slash, the Avro length-prefixed string, and
any other escaping a JSON string literal can have); False when neither, with nothing opaque; None
when it cannot be told (an opaque part, and no match elsewhere), for the caller to count as
unattributed rather than report as searched. A quoted spelling is required, so `A1` does not
match `A10` and an id mentioned inside a longer text does not match.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import fastavro
import orjson

import schemas
from schemas import clock

CONTAINER_MAGIC = b"Obj\x01"
SYNC_SIZE = 16
RECORD_NAMES = ("CallEvent", "ConsentEvent", "PrivacyRequest")
TIME_FIELDS = ("started_at", "answered_at", "ended_at", "at")
_WS = b" \t\r\n"
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


# ---------------------------------------------------------------- Avro primitives


def read_long(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    """The zigzag varint at `pos` and the position after it; ValueError if cut or too long."""
    shift = n = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("cut varint")
        byte = buf[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7


def write_long(value: int) -> bytes:
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def avro_string(value: bytes) -> bytes:
    """An Avro string as written: its zigzag-varint length, then its bytes."""
    return write_long(len(value)) + value


# ---------------------------------------------------------------- container files


@dataclass(frozen=True)
class Block:
    """One data block of a container file, as stored: `data` compressed with the file's codec."""

    start: int  # offset in the file of the block's count
    end: int  # offset after its sync marker (or after what there is, for a cut block)
    count: int
    data: bytes
    whole: bool  # its size and sync marker are intact


@dataclass(frozen=True)
class Container:
    header: bytes  # magic, metadata and sync marker: what a one-block file needs before its block
    codec: str
    sync: bytes
    blocks: list[Block]


def parse_container(raw: bytes) -> Container | None:
    """The blocks of a container file, up to where they stop making sense; None when the header
    (magic, metadata, sync marker) cannot be read."""
    try:
        pos, meta = len(CONTAINER_MAGIC), {}
        while True:
            count, pos = read_long(raw, pos)
            if count == 0:
                break
            if count < 0:
                count = -count
                _, pos = read_long(raw, pos)  # the byte size of the entries
            for _ in range(count):
                klen, pos = read_long(raw, pos)
                key = raw[pos : pos + klen]
                vlen, pos = read_long(raw, pos + klen)
                meta[key] = raw[pos : pos + vlen]
                pos += vlen
        sync = raw[pos : pos + SYNC_SIZE]
        pos += SYNC_SIZE
        if len(sync) != SYNC_SIZE or pos > len(raw) or b"avro.schema" not in meta:
            return None
        codec = meta.get(b"avro.codec", b"null").decode()
    except (ValueError, UnicodeDecodeError):
        return None
    header, blocks = raw[:pos], []
    while pos < len(raw):
        start = pos
        try:
            count, pos = read_long(raw, pos)
            size, pos = read_long(raw, pos)
        except ValueError:
            blocks.append(Block(start, len(raw), 0, raw[pos:], False))
            break
        data = raw[pos : pos + max(size, 0)]
        end = pos + len(data)
        whole = size >= 0 and len(data) == size and raw[end : end + SYNC_SIZE] == sync
        blocks.append(Block(start, end + SYNC_SIZE if whole else len(raw), count, data, whole))
        if not whole:
            break
        pos = end + SYNC_SIZE
    return Container(header, codec, sync, blocks)


def block_records(c: Container, raw: bytes, block: Block) -> list[dict[str, Any]] | None:
    """The records of a whole block, decoded with the file's writer schema (fastavro, so every
    codec it knows); None when the block does not decode."""
    if not block.whole:
        return None
    try:
        records = list(fastavro.reader(io.BytesIO(c.header + raw[block.start : block.end])))
    except Exception:  # fastavro raises many types on bad bytes; the bytes are then searched
        return None
    dicts = [r for r in records if isinstance(r, dict)]
    return dicts if len(dicts) == len(records) == block.count else None


def writer_schema(c: Container) -> Any | None:
    """The file's writer schema, parsed; None when fastavro does not take the header."""
    try:
        return fastavro.parse_schema(fastavro.reader(io.BytesIO(c.header)).writer_schema)
    except Exception:  # a damaged schema: nothing decodes with it
        return None


def leading_records(data: bytes, writer: Any, count: int) -> list[dict[str, Any]]:
    """The records of a damaged block's uncompressed `data` that decode before the damage."""
    bio, out = io.BytesIO(data), []
    for _ in range(count):
        try:
            record = fastavro.schemaless_reader(bio, writer, None)
        except Exception:  # the damage: what follows it cannot be framed
            break
        if type(record) is dict:
            out.append(record)
    return out


def decompressed(c: Container, block: Block) -> bytes | None:
    """A block's bytes uncompressed, as far as they go (a cut deflate stream gives what it holds);
    None for a codec this cannot undo by hand or a stream that is damaged."""
    if c.codec == "null":
        return block.data
    if c.codec == "deflate":
        try:
            return zlib.decompressobj(-15).decompress(block.data)
        except zlib.error:
            return None
    return None


# ---------------------------------------------------------------- reading a raw dead letter


@dataclass
class Raw:
    records: list[Mapping[str, Any]] = field(default_factory=list)  # what decoded
    plain: list[bytes] = field(default_factory=list)  # bytes to search: not compressed
    opaque: int = 0  # parts that neither decode nor can be searched (compressed and damaged)


def read(raw: bytes) -> Raw:
    """Everything `raw` yields (the module's docstring)."""
    out = Raw()
    head = raw.lstrip(_WS)[:1]
    if raw.startswith(CONTAINER_MAGIC):
        _read_container(raw, out)
    elif raw[:1] == b"\x00":
        out.plain.append(raw)
        out.records += _confluent(raw)
    elif head in (b"{", b"["):
        out.plain.append(raw)
        out.records += _json(raw)
    else:
        out.plain.append(raw)
        out.records += _bare(raw)
    return out


def _read_container(raw: bytes, out: Raw) -> None:
    c = parse_container(raw)
    if c is None:  # no codec known: the bytes may be compressed
        out.plain.append(raw)
        out.opaque += 1
        return
    if c.codec == "null":
        out.plain.append(raw)
    writer: Any = False  # parsed once, when a block needs it
    for block in c.blocks:
        records = block_records(c, raw, block)
        if records is not None:
            out.records += records
            continue
        data = decompressed(c, block)
        if data is None:
            out.opaque += 1
            continue
        if c.codec != "null":
            out.plain.append(data)
        writer = writer_schema(c) if writer is False else writer
        if writer is not None:
            out.records += leading_records(data, writer, max(block.count, 0))


def decode_body(body: bytes, writer: Any) -> list[dict[str, Any]]:
    """The records of a bare Avro body (one record or an array of them) read whole with the
    parsed `writer` schema; [] when the body does not decode to its last byte."""
    bio = io.BytesIO(body)
    try:
        value = fastavro.schemaless_reader(bio, writer, None)
    except Exception:  # bad bytes: nothing decoded
        return []
    if bio.tell() != len(body):
        return []
    items = value if isinstance(value, list) else [value]
    return [r for r in items if type(r) is dict]


def _confluent(raw: bytes) -> list[dict[str, Any]]:
    if len(raw) < 5:
        return []
    sid = int.from_bytes(raw[1:5], "big")
    for ids, batch in ((schemas.SCHEMA_IDS, False), (schemas.BATCH_SCHEMA_IDS, True)):
        if sid in ids:
            name, version = ids[sid]
            return decode_body(raw[5:], schemas.parsed_writer(name, version, batch=batch))
    return []


def _writers() -> Iterator[Any]:
    for name in RECORD_NAMES:
        for batch in (False, True):
            yield schemas.parsed_writer(name, schemas.CURRENT[name], batch=batch)
    for name, version in schemas.OLD_FILES:
        yield schemas.parsed_writer(name, version)


def _bare(raw: bytes) -> list[dict[str, Any]]:
    for writer in _writers():
        records = decode_body(raw, writer)
        if records:
            return records
    return []


def _json(raw: bytes) -> list[Mapping[str, Any]]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        out = []
        for line in raw.splitlines():
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            out += _objects(doc)
        return out
    return _objects(doc)


def _objects(doc: Any) -> list[Mapping[str, Any]]:
    items = doc if isinstance(doc, list) else [doc]
    return [d for d in items if isinstance(d, dict)]


# ---------------------------------------------------------------- whose, and how old


@lru_cache(maxsize=64)
def spellings(account_id: str) -> tuple[bytes, ...]:
    """The quoted JSON spellings of the id that common writers produce, and its Avro string."""
    forms = {
        orjson.dumps(account_id),
        json.dumps(account_id).encode(),  # non-ASCII as \\u escapes (lowercase hex)
        json.dumps(account_id, ensure_ascii=False).encode(),
    }
    forms |= {re.sub(rb"\\u([0-9a-f]{4})", lambda m: b"\\u" + m.group(1).upper(), f) for f in forms}
    forms |= {f.replace(b"/", b"\\/") for f in forms}
    return (*sorted(forms), avro_string(account_id.encode()))


def could_hold(raw: bytes, account_id: str) -> bool:
    """False only when `raw` cannot hold the id in any spelling: not a container file (which may
    be compressed), no escape at all (so every spelling is the id's own UTF-8 bytes), and those
    bytes absent. Most dead letters of other subjects stop here, undecoded."""
    return raw.startswith(CONTAINER_MAGIC) or b"\\" in raw or account_id.encode() in raw


def _mentions(part: bytes, account_id: str) -> bool:
    if any(s in part for s in spellings(account_id)):
        return True
    if b"\\" not in part:
        return False
    for m in _JSON_STRING.finditer(part):  # any other escaping: decode each escaped literal
        literal = m.group()
        if b"\\" in literal:
            try:
                if json.loads(literal) == account_id:
                    return True
            except ValueError:
                continue
    return False


def holds_subject(raw: bytes, account_id: str) -> bool | None:
    """Whether the dead letter `raw` is the subject's; None when it cannot be told (module doc)."""
    if not could_hold(raw, account_id):
        return False
    return subject_in(read(raw), account_id)


def subject_in(found: Raw, account_id: str) -> bool | None:
    """`holds_subject` over what `read` gave, for callers that go on to look at the records."""
    if any(r.get("account_id") == account_id for r in found.records):
        return True
    if any(_mentions(part, account_id) for part in found.plain):
        return True
    return None if found.opaque else False


def newest_event_ms(raw: bytes) -> int | None:
    """The latest event time (epoch ms) of the records `raw` decodes to; None when none has one."""
    times = [t for r in read(raw).records for f in TIME_FIELDS if (t := event_ms(r.get(f))) is not None]
    return max(times) if times else None


def event_ms(value: Any) -> int | None:
    """A record's time field as epoch ms (Avro's datetime, JSON's ms or ISO text); None if not one."""
    if type(value) is int:
        return value
    if isinstance(value, datetime):
        return clock.to_ms(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return None
        return clock.to_ms(when if when.tzinfo else when.replace(tzinfo=UTC))
    return None


def subject_match(account_id: str) -> Callable[[bytes], bool | None]:
    """`holds_subject` for one id, as `sinks.rejects.find` takes it."""
    return lambda raw: holds_subject(raw, account_id)


def _escaped_literals(part: bytes) -> frozenset[str]:
    """What `_mentions` decodes the escaped JSON string literals of `part` to (any id's compare)."""
    out = set()
    for m in _JSON_STRING.finditer(part):
        literal = m.group()
        if b"\\" in literal:
            try:
                value = json.loads(literal)
            except ValueError:
                continue
            if isinstance(value, str):
                out.add(value)
    return frozenset(out)


WINDOW = 8  # bytes of an id's end that `Subjects` indexes it by (ids share prefixes, `acct-`)


class Subjects:
    """`holds_subject` for many ids at once, each raw record read once: what one scan of
    `_rejects/` for every erased subject asks (`jobs.requests` enforcement). `verdicts(raw)` gives,
    for each id whose `holds_subject(raw, id)` is not False, that verdict (True, or None when it
    cannot be told), and what `read` made of the bytes (None when no id could be there).

    An id whose every spelling contains its own bytes (most: no quote, backslash, slash or
    non-ASCII character) is looked up by its last WINDOW bytes in the windows of the bytes
    searched, then confirmed by a substring test, so the work per dead letter grows with its
    size, not with the number of ids; any other id is tested as `holds_subject` tests it."""

    def __init__(self, account_ids: Iterable[str]) -> None:
        self._ids = list(dict.fromkeys(account_ids))
        self._known = set(self._ids)
        self._plain = {a: a.encode() for a in self._ids}
        self._forms = {a: spellings(a) for a in self._ids}
        self._index: dict[int, dict[bytes, list[str]]] = {}  # window size -> id end -> ids
        self._other: list[str] = []
        for a in self._ids:
            plain = self._plain[a]
            if plain and all(plain in s for s in self._forms[a]):
                size = min(WINDOW, len(plain))
                self._index.setdefault(size, {}).setdefault(plain[-size:], []).append(a)
            else:
                self._other.append(a)

    def _containing(self, data: bytes) -> set[str]:
        """The indexed ids whose bytes are in `data`."""
        out: set[str] = set()
        for size, index in self._index.items():
            for at in range(len(data) - size + 1):
                ids = index.get(data[at : at + size])
                if ids:
                    out.update(a for a in ids if self._plain[a] in data)
        return out

    def verdicts(self, raw: bytes) -> tuple[Raw | None, dict[str, bool | None]]:
        if raw.startswith(CONTAINER_MAGIC) or b"\\" in raw:  # `could_hold` is True for every id
            scope: Iterable[str] = self._ids
        else:
            scope = self._containing(raw) | {a for a in self._other if self._plain[a] in raw}
            if not scope:
                return None, {}
        found = read(raw)
        mine = {a for r in found.records if isinstance(a := r.get("account_id"), str)} & self._known
        for part in found.plain:
            if b"\\" in part:
                mine |= _escaped_literals(part) & self._known
            for a in [*self._containing(part), *self._other]:
                if a not in mine and any(s in part for s in self._forms[a]):
                    mine.add(a)
        out: dict[str, bool | None] = {}
        for a in scope:
            if a in mine:
                out[a] = True
            elif found.opaque:
                out[a] = None
        return found, out
