"""Kafka message values <-> records (plain dicts keyed by Avro field names), batch-wise.

One message carries ONE event or a BATCH of events. How a value is recognized, in this order:

1. Header ``callpipe.format`` (optional; wins when present), one of:
   ``confluent`` (wire format below), ``avro`` (bare Avro body of one record, the known writer
   schema of the topic's record), ``avro-batch`` (bare Avro array of records),
   ``avro-container`` (Avro object container file), ``json`` (one object or an array),
   ``jsonl`` (JSON lines).
2. Otherwise the bytes are sniffed:
   - empty or only whitespace: rejected as ``empty``;
   - first byte 0x00: Confluent wire format, 4-byte big-endian schema id, then the Avro body.
     Ids in ``schemas.SCHEMA_IDS`` carry one record, ids in ``schemas.BATCH_SCHEMA_IDS`` an
     ``array<record>`` (11 = array<CallEvent>, ...). Any other id: ``unknown_schema_id``;
   - ``Obj\\x01``: Avro object container file (the batch form files use);
   - ``{`` or ``[`` (after optional whitespace): JSON. A value that parses whole is one object
     or an array of objects; a value that does not, but has several lines, is JSON lines;
   - anything else: a bare Avro body of one record with the known writer schema. (A bare body
     starts with the zigzag length of the record's first field, a string: never ``{`` or ``[``
     (odd, negative lengths), 0x00 only for an empty string, and a whitespace byte only for a
     5- or 16-byte one; send the header when such a body must not be taken for JSON.)

Rejections carry a reason code and the raw bytes, never an input value. An undecodable Avro
message rejects the whole message; a bad line in JSON lines (or a bad element of a JSON array,
or a bad record of an Avro batch) rejects only that event, with its index (a bad line carries
its own bytes, any other bad event itself as JSON, never the whole message), unless more than
10 events of a batch are bad and more than half of them: then the message is rejected whole,
one dead letter, so garbage cannot multiply into thousands of dead letters. Two rules hold per event in every
framing, so a batch cannot smuggle past them: the event size limit (``Limits``:
``too_large``), and identifiers that a command can name (``pipeline.identifiers``: ``bad_id``);
an event of a batch (array element, line, Avro batch or container record) that breaks one is
rejected alone, with its index.

JSON is type-checked against the schema so that JSON and Avro give identical dicts: every field
present, optional fields None when absent, timestamps int epoch milliseconds (JSON may give
ISO-8601 strings, a naive one read as UTC), enums as symbol strings. Unknown JSON fields are
ignored (a v1 reader of v2 data). Avro container files written with another version of the
schema are resolved to the known one, and so are Confluent messages whose id names an earlier
version (`schemas.SCHEMA_IDS`: PrivacyRequest v1 is id 3, v2 id 4) and bare bodies that only an
earlier version reads.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Any, NamedTuple, Protocol, TypeGuard

import fastavro
import fastavro.schema
import orjson

import schemas
from pipeline import codec_avro
from pipeline.codec_json import Invalid, converter, from_json, time_fields, to_json
from pipeline.identifiers import bad_identifier, bad_identifier_field, identifier_paths
from pipeline.reasons import Reason, Rejection, Stage
from schemas import clock

try:
    from pipeline import _native
except ImportError:  # built from pipeline/native/ on install where cargo is found; else fastavro alone
    _native = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_LIMITS",
    "FORMAT_HEADER",
    "Decoded",
    "Format",
    "Limits",
    "Lineage",
    "MessageLike",
    "Rejection",
    "decode_batch",
    "decode_value",
    "encode",
    "encode_container",
    "format_header",
    "from_json",
    "time_fields",
    "to_json",
]

FORMAT_HEADER = "callpipe.format"
_JSON_START = frozenset(b"{[")
_WS = b" \t\r\n"
_MISSING = object()


class Format(StrEnum):
    """Values of the ``callpipe.format`` header; ``encode`` produces CONFLUENT or JSON/JSONL."""

    CONFLUENT = "confluent"
    AVRO = "avro"
    AVRO_BATCH = "avro-batch"
    AVRO_CONTAINER = "avro-container"
    JSON = "json"
    JSONL = "jsonl"


@dataclass(frozen=True)
class Limits:
    """Size limits: a larger message, or a larger event in any framing, is rejected as too_large.

    The default message limit suits Kafka messages; a caller decoding a whole file passes more.
    The event limit holds per event whatever carries it: a JSON object, an element of a JSON
    array (measured as compact JSON), a JSON line, a single Avro record, a record of an Avro
    batch or container file (measured as its Avro encoding). An oversized event of a batch is
    rejected alone; the others are kept.
    """

    max_message_bytes: int = 16 * 1024 * 1024
    max_event_bytes: int = 1024 * 1024


DEFAULT_LIMITS = Limits()


class Lineage(NamedTuple):
    """Where a decoded record came from: Kafka partition, offset, and index inside its message."""

    partition: int
    offset: int
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose: the event's place


@dataclass(slots=True)
class Decoded:
    """The outcome of decoding messages: records[i] came from lineage[i]."""

    records: list[dict[str, Any]] = field(default_factory=list)
    lineage: list[Lineage] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


class MessageLike(Protocol):
    """What decode needs of a Kafka message (aiokafka ConsumerRecord fits)."""

    @property
    def value(self) -> bytes | None: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def headers(self) -> Any: ...


# ---------------------------------------------------------------- JSON, type-checked by schema

# ---------------------------------------------------------------- decoding one message value


def _reject(
    out: Decoded,
    reason: Reason,
    index: int | None,
    raw: bytes,
    partition: int,
    offset: int,
    field: str | None = None,
) -> None:
    out.rejections.append(Rejection(reason, Stage.DECODE, partition, offset, index, raw, field))


def _header_format(headers: Any) -> Format | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if key in (FORMAT_HEADER, _FORMAT_HEADER_BYTES):
            if type(value) is not bytes:
                try:
                    value = bytes(value)
                except (TypeError, ValueError):
                    return None
            return _HEADER_VALUES.get(value)  # unknown values: sniff the bytes instead
    return None


_HEADER_VALUES: dict[bytes, Format] = {f.value.encode(): f for f in Format}
_FORMAT_HEADER_BYTES = FORMAT_HEADER.encode()


def _read_avro(body: bytes, schema: Any, reader: Any = None) -> Any:
    bio = io.BytesIO(body)
    try:
        result = fastavro.schemaless_reader(bio, schema, reader)
    except Exception:  # fastavro raises EOFError, IndexError, UnicodeDecodeError, ... on bad bytes
        raise Invalid(Reason.MALFORMED) from None
    if bio.tell() != len(body):
        raise Invalid(Reason.MALFORMED)
    return result


def _ms(v: Any) -> Any:
    if isinstance(v, datetime):
        return clock.to_ms(v)
    return v


@cache
def _canonical(record_name: str) -> str:
    return str(fastavro.schema.to_parsing_canonical_form(schemas.parsed(record_name)))


def _read_container(value: bytes, record_name: str, limit: int) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of a container file, and the positions of those that must be measured against
    the event limit `limit`: the records of a block whose decompressed bytes exceed it (a record
    is a slice of its block, so a block within the limit holds no larger record)."""
    records: list[dict[str, Any]] = []
    measure: list[int] = []
    try:
        blocks = fastavro.block_reader(io.BytesIO(value))
        writer = orjson.dumps(blocks.writer_schema)
        if fastavro.schema.to_parsing_canonical_form(blocks.writer_schema) != _canonical(record_name):
            # written with another schema: resolve every record against ours (about 3x slower)
            blocks = fastavro.block_reader(io.BytesIO(value), reader_schema=schemas.parsed(record_name))
        for block in blocks:
            first = len(records)
            records.extend(block)  # type: ignore[arg-type]
            data = getattr(block, "bytes_", None)  # the decompressed block (fastavro's Block)
            if not isinstance(data, io.BytesIO) or len(data.getbuffer()) > limit:
                measure.extend(range(first, len(records)))
    except fastavro.read.SchemaResolutionError:
        raise Invalid(Reason.WRONG_TYPE) from None
    except Exception:
        raise Invalid(Reason.MALFORMED) from None
    if b"logicalType" in writer:  # a writer schema with timestamp logical types yields datetimes
        for rec in records:
            for key, v in rec.items():
                if isinstance(v, datetime):
                    rec[key] = _ms(v)
    return records, measure


def _avro_confluent(value: bytes, record_name: str, limits: Limits) -> tuple[Any, bool]:
    if len(value) < 5:
        raise Invalid(Reason.MALFORMED)
    sid = int.from_bytes(value[1:5], "big")
    for ids, is_batch in ((schemas.SCHEMA_IDS, False), (schemas.BATCH_SCHEMA_IDS, True)):
        known = ids.get(sid)
        if known is None:
            continue
        name, version = known
        if name != record_name:
            raise Invalid(Reason.WRONG_TYPE)
        if not is_batch and len(value) - 5 > limits.max_event_bytes:
            raise Invalid(Reason.TOO_LARGE)
        reader = schemas.parsed_batch(record_name) if is_batch else schemas.parsed(record_name)
        if version == schemas.CURRENT[record_name]:
            found = _body_reader(record_name, is_batch)(value, 5)
            if found is not None:
                return found, is_batch
            # declined: fastavro names the reason, or reads what only it reads
            return _read_avro(value[5:], reader), is_batch
        writer = schemas.parsed_writer(record_name, version, batch=is_batch)
        return _read_avro(value[5:], writer, reader), is_batch
    raise Invalid(Reason.UNKNOWN_SCHEMA_ID)


def _admit(
    out: Decoded, record: Any, record_name: str, index: int | None, raw: bytes, p: int, o: int
) -> None:
    """Keep one decoded record, or reject it if an identifier could not be named by any command
    (`pipeline.identifiers`): with `raw`, the whole message, if it is the message's only event
    (index None), else with the event alone (`event_json`)."""
    reason = bad_identifier(record, record_name)
    if reason is None and record_name in _CONTROL_RECORDS:
        reason = bad_control_time(record)
    if reason is not None:
        name = bad_identifier_field(record, record_name) if reason is Reason.BAD_ID else None
        if reason is Reason.BAD_TIME:
            name = "at"  # bad_control_time's field
        _reject(out, reason, index, raw if index is None else event_json(record), p, o, name)
        return
    out.records.append(record)
    out.lineage.append(Lineage(p, o, 0 if index is None else index))


_CONTROL_RECORDS = frozenset({"ConsentEvent", "PrivacyRequest"})


def bad_control_time(record: Mapping[str, Any]) -> Reason | None:
    """BAD_TIME if a consent event's or privacy request's `at` is before the epoch of service or
    past 2100: seconds or microseconds, not milliseconds. Such a time would put a withdrawal
    before every call or after all of them, hold no control partition's watermark, and push a
    request's deadline out of any calendar, so the record is rejected (a dead letter, or a
    refused file line) where every reader decodes it, alike in every worker and job."""
    at = record.get("at")
    if type(at) is int and not clock.EPOCH_OF_SERVICE_MS <= at < clock.LAST_PLAUSIBLE_MS:
        return Reason.BAD_TIME
    return None


def event_json(item: Any) -> bytes:
    """One event rejected alone, as a dead letter carries it: the event as JSON (b"" if it does
    not serialize). A bad event of a batch message is so, not the whole message: a dead letter
    per bad event then holds that event only, not its neighbours' data once per bad one, and it is
    what an operator can edit and replay (`callpipe dlq replay`) without landing the message's
    good events twice. Events rejected after decoding are too (`pipeline.validate.rejected_bytes`)."""
    try:
        return orjson.dumps(item, default=str)
    except TypeError:
        return b""


def _admit_batch(
    out: Decoded,
    records: list[Any],
    record_name: str,
    size_of: Callable[[Any], int] | None,
    limits: Limits,
    raw: bytes,
    p: int,
    o: int,
    only: Container[int] | None = None,
) -> None:
    """Keep the events of a batch message; an oversized event (`size_of` it over the event limit;
    with `only`, just the events at those positions are measured) or one with a bad identifier
    is rejected alone, with its index, as JSON (`event_json`). Most events bad: the message
    is rejected whole (`_settle`)."""
    one = Decoded()
    for i, record in enumerate(records):
        if size_of is not None and (only is None or i in only) and size_of(record) > limits.max_event_bytes:
            _reject(one, Reason.TOO_LARGE, i, event_json(record), p, o)
        else:
            _admit(one, record, record_name, i, raw, p, o)
    _settle(out, one)


def _json_size(item: Any) -> int:
    return len(orjson.dumps(item))


def _avro_size(record_name: str) -> Callable[[Any], int]:
    def size(record: Any) -> int:
        try:
            return codec_avro.encoded_size(record_name, record)
        except ValueError:  # the reader gave something the schema does not hold: measure it as JSON
            return len(orjson.dumps(record, default=str))

    return size


def _read_bare(body: bytes, record_name: str, batch: bool) -> Any:
    """A bare Avro body: the current writer schema, else an earlier version still accepted."""
    reader = schemas.parsed_batch(record_name) if batch else schemas.parsed(record_name)
    try:
        return _read_avro(body, reader)
    except Invalid:
        for name, version in schemas.OLD_FILES:
            if name == record_name:
                writer = schemas.parsed_writer(name, version, batch=batch)
                try:
                    return _read_avro(body, writer, reader)
                except Invalid:
                    continue
        raise


def _decode_json(
    value: bytes, record_name: str, fmt: Format | None, limits: Limits, out: Decoded, p: int, o: int
) -> None:
    conv = converter(record_name)
    if fmt is not Format.JSONL:
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            parsed = _MISSING
        if parsed is not _MISSING:
            items = parsed if type(parsed) is list else None
            if items is None:
                if len(value) > limits.max_event_bytes:
                    raise Invalid(Reason.TOO_LARGE)
                _admit(out, conv(parsed), record_name, None, value, p, o)
                return
            if not items:
                raise Invalid(Reason.EMPTY)
            # Each element is one event under the event limit, measured as compact JSON; a message
            # within the limit cannot hold a larger event, so only larger ones are measured.
            oversized = len(value) > limits.max_event_bytes
            one = Decoded()
            for i, item in enumerate(items):
                try:
                    if oversized and _json_size(item) > limits.max_event_bytes:
                        raise Invalid(Reason.TOO_LARGE)
                    record = conv(item)
                except Invalid as bad:
                    _reject(one, bad.reason, i, event_json(item), p, o, bad.field)
                    continue
                _admit(one, record, record_name, i, value, p, o)
            _settle(out, one)
            return
    lines = [line for line in value.split(b"\n") if line.strip(_WS)]
    if fmt is not Format.JSONL and len(lines) < 2:
        raise Invalid(Reason.MALFORMED)
    if not lines:
        raise Invalid(Reason.EMPTY)
    loads = orjson.loads
    one = Decoded()
    for i, line in enumerate(lines):
        try:
            if len(line) > limits.max_event_bytes:
                raise Invalid(Reason.TOO_LARGE)
            try:
                obj = loads(line)
            except orjson.JSONDecodeError:
                raise Invalid(Reason.MALFORMED) from None
            record = conv(obj)
        except Invalid as bad:
            _reject(one, bad.reason, i, line, p, o, bad.field)
            continue
        _admit(one, record, record_name, i, line, p, o)
    _settle(out, one)


# A batch message (JSON array or lines, Avro array or container) is rejected whole (one dead
# letter) rather than event by event when more than this many of its events are bad and more than
# half of them: garbage that happens to split into lines (a blob of "{" and newlines) must not turn
# one message into thousands of dead letters, nor a batch from a broken producer into one per event.
MAX_EVENT_REJECTIONS = 10


def _settle(out: Decoded, one: Decoded) -> None:
    """Add one batch message's outcome to `out`, or raise Invalid to reject it whole (above)."""
    bad = len(one.rejections)
    if bad > MAX_EVENT_REJECTIONS and bad * 2 > bad + len(one.records):
        raise Invalid(Counter(r.reason for r in one.rejections).most_common(1)[0][0])
    out.records += one.records
    out.lineage += one.lineage
    out.rejections += one.rejections


def _decode_into(
    value: bytes | None,
    record_name: str,
    fmt: Format | None,
    limits: Limits,
    out: Decoded,
    p: int,
    o: int,
) -> None:
    raw = value if value is not None else b""
    try:
        if not raw or not raw.strip(_WS):
            raise Invalid(Reason.EMPTY)
        if len(raw) > limits.max_message_bytes:
            raise Invalid(Reason.TOO_LARGE)
        if fmt is None:
            first = raw[0]
            if first == 0:
                fmt = Format.CONFLUENT
            elif first in _JSON_START:
                fmt = Format.JSON
            elif raw.startswith(b"Obj\x01"):
                fmt = Format.AVRO_CONTAINER
            elif first in _WS and raw.lstrip(_WS)[:1] in (b"{", b"["):
                fmt = Format.JSON
            else:
                fmt = Format.AVRO
        if fmt is Format.JSON or fmt is Format.JSONL:
            _decode_json(raw, record_name, fmt, limits, out, p, o)
            return
        # Avro: a single record is the whole message (less the Confluent prefix), so the message
        # is checked against the event limit; a batch's records are measured one by one. An
        # uncompressed batch within the limit cannot hold a larger event; a container file's
        # blocks may be compressed, so the records of a block over the limit once decompressed
        # are measured.
        measure: Callable[[Any], int] | None = None
        only: Container[int] | None = None
        if fmt is Format.CONFLUENT:
            result, batch = _avro_confluent(raw, record_name, limits)
        elif fmt is Format.AVRO:
            if len(raw) > limits.max_event_bytes:
                raise Invalid(Reason.TOO_LARGE)
            result, batch = _read_bare(raw, record_name, False), False
        elif fmt is Format.AVRO_BATCH:
            result, batch = _read_bare(raw, record_name, True), True
        else:
            result, in_large_blocks = _read_container(raw, record_name, limits.max_event_bytes)
            batch, measure, only = True, _avro_size(record_name), frozenset(in_large_blocks)
        if not batch:
            _admit(out, result, record_name, None, raw, p, o)
            return
        if not result:
            raise Invalid(Reason.EMPTY)
        if measure is None and len(raw) > limits.max_event_bytes:
            measure = _avro_size(record_name)
        _admit_batch(out, result, record_name, measure, limits, raw, p, o, only)
    except Invalid as bad:
        _reject(out, bad.reason, None, raw, p, o, bad.field)


def decode_value(
    value: bytes | None,
    record_name: str,
    *,
    headers: Any = None,
    partition: int = -1,
    offset: int = -1,
    limits: Limits = DEFAULT_LIMITS,
) -> Decoded:
    """Decode one message value into records of `record_name` and rejections. Never raises on input."""
    out = Decoded()
    _decode_into(value, record_name, _header_format(headers), limits, out, partition, offset)
    return out


BodyReader = Callable[[bytes, int], Any]


@cache
def _body_reader(record_name: str, batch: bool = False) -> BodyReader:
    """How the Avro body at `value[start:]` of `record_name`'s current schema is read: the record,
    or None unless those bytes are exactly one record whose identifiers are nameable
    (`bad_identifier`); with `batch`, the list of records of an array of them (a batch message's
    body), or None unless the bytes are exactly that (identifiers are then judged per event, by
    `_admit`). The native decoder (pipeline/native/, about 1 us a CallEvent where fastavro takes
    7), where the package was built with it and it compiles the schema, else fastavro
    (`_fastavro_reader`). The native one also declines an identifier that is not printable ASCII
    (the rare rest is left to Python's rules on the fastavro path, which names a rejection)."""
    decoder = native_decoder(record_name)
    if decoder is not None:
        return decoder.decode_array if batch else decoder.decode
    return _fastavro_reader(record_name, batch)


@cache
def native_decoder(record_name: str) -> _native.Decoder | None:
    """The native decoder of `record_name`'s current schema, its identifiers judged; None where
    the package was built without it or it cannot mirror the schema exactly (fixed, logical
    types). `_body_reader` reads with it, and `pipeline.native_rows` builds its columns on it."""
    if _native is None:
        return None
    public = {k: v for k, v in schemas.parsed(record_name).items() if not k.startswith("__")}
    identifiers = [(list(path), limit) for path, limit in identifier_paths(record_name)]
    try:
        return _native.Decoder(orjson.dumps(public).decode(), identifiers)
    except ValueError:
        return None


@cache
def _fastavro_reader(record_name: str, batch: bool = False) -> BodyReader:
    schema = schemas.parsed_batch(record_name) if batch else schemas.parsed(record_name)
    shape = list if batch else dict

    def read(value: bytes, start: int) -> Any:
        bio = io.BytesIO(value)
        bio.seek(start)
        try:
            record = fastavro.schemaless_reader(bio, schema, None)
        except Exception:  # decode_value names the reason
            return None
        if type(record) is not shape or bio.tell() != len(value):
            return None
        if isinstance(record, dict) and bad_identifier(record, record_name) is not None:
            return None  # as the native decoder; a batch's are judged per event (`_admit`)
        return record

    return read


def native_decoding(record_name: str = "CallEvent") -> bool:
    """Whether `record_name`'s Avro bodies are read by the native decoder (else fastavro alone,
    two to three times slower per event: the package was installed without cargo). The worker
    logs it at start and shows it as `callpipe_native_decoder` on /metrics."""
    return _body_reader(record_name) is not _fastavro_reader(record_name)


def plain_record(value: bytes | None, headers: Any, record_name: str) -> dict[str, Any] | None:
    """The record of a message that is one Avro record of `record_name`'s current schema in the
    Confluent wire format (what carriers send most, one event per message), decoded and admitted
    exactly as `decode_value` would; None for anything else: another framing or schema version,
    a format header other than Confluent's, or a message `decode_value` would reject, which the
    caller then hands to `decode_value` for its reason. The shortcut skips what `decode_value`
    does per message to find the framing and to collect lineage and rejections, and reads the
    body with the native decoder where there is one (`_body_reader`, which also judges the
    identifiers): fastavro's dict in a seventh of the time. That decoder also declines (None)
    the few bodies fastavro reads but no Avro writer makes (a negative enum or union index, an
    "int" past 32 bits) and identifiers beyond printable ASCII: `decode_value` then reads them
    with fastavro, so the outcome is the same, only slower."""
    if not plain_framing(value, headers, record_name):
        return None
    return _body_reader(record_name)(value, 5)


def plain_framing(
    value: bytes | None, headers: Any, record_name: str, *, batch: bool = False
) -> TypeGuard[bytes]:
    """Whether `value` is framed as the shortcuts read it (`plain_record`, `pipeline.native_rows`):
    the Confluent wire format (magic byte 0, no format header but Confluent's), the schema id of
    `record_name`'s current version (with `batch`, of an array of it), and no event that
    `decode_value` would measure against the event limit: a single record's body within it, a
    batch message within it whole (a larger one has its events measured one by one). Anything
    else is left to `decode_value`, which finds its framing or names its rejection. The body
    starts at value[5:]."""
    if (
        value is None
        or len(value) <= 5
        or value[0] != 0
        or (len(value) if batch else len(value) - 5) > DEFAULT_LIMITS.max_event_bytes
        or (headers and not plain_headers(headers))
    ):
        return False
    ids = schemas.BATCH_SCHEMA_IDS if batch else schemas.SCHEMA_IDS
    return ids.get(int.from_bytes(value[1:5], "big")) == (record_name, schemas.CURRENT[record_name])


def plain_headers(headers: Any) -> bool:
    """Whether a message's headers let `plain_framing` read it: no format header but Confluent's."""
    return _header_format(headers) in (None, Format.CONFLUENT)


def plain_ids(record_name: str) -> tuple[list[int], list[int]]:
    """The schema ids `plain_framing` takes for `record_name`: of one record, of an array of it
    (its current version's)."""
    current = (record_name, schemas.CURRENT[record_name])
    return (
        [sid for sid, named in schemas.SCHEMA_IDS.items() if named == current],
        [sid for sid, named in schemas.BATCH_SCHEMA_IDS.items() if named == current],
    )


def decode_batch(
    messages: Iterable[MessageLike], record_name: str, *, limits: Limits = DEFAULT_LIMITS
) -> Decoded:
    """Decode a batch of Kafka messages; records keep their (partition, offset, index) lineage."""
    out = Decoded()
    for msg in messages:
        headers = msg.headers
        fmt = _header_format(headers) if headers else None
        _decode_into(msg.value, record_name, fmt, limits, out, msg.partition, msg.offset)
    return out


# ---------------------------------------------------------------- encoding (produce, files, tests)


def encode(
    records: Sequence[dict[str, Any]],
    record_name: str,
    fmt: str,
    batch_size: int = 1,
    *,
    iso_times: bool = False,
) -> list[bytes]:
    """Records -> message values: fmt "avro" (Confluent wire format) or "json".

    batch_size 1 gives one event per message (Confluent id of the record, or one JSON object);
    more gives batches of up to batch_size events (Confluent id of array<record>, or JSON lines).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    chunks = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    if fmt == "avro":
        if batch_size == 1:
            prefix = b"\x00" + schemas.ID_OF[record_name].to_bytes(4, "big")
            return [codec_avro.write_records(prefix, record_name, [r], batch=False) for r in records]
        prefix = b"\x00" + schemas.BATCH_ID_OF[record_name].to_bytes(4, "big")
        return [codec_avro.write_records(prefix, record_name, list(c), batch=True) for c in chunks]
    if fmt == "json":
        if batch_size == 1:
            return [to_json(r, record_name, iso_times=iso_times) for r in records]
        return [b"\n".join(to_json(r, record_name, iso_times=iso_times) for r in c) for c in chunks]
    raise ValueError("format must be avro or json")


def format_header(fmt: str, batch_size: int) -> tuple[str, bytes]:
    """The ``callpipe.format`` header for values made by ``encode``."""
    if fmt == "avro":
        return (FORMAT_HEADER, Format.CONFLUENT.value.encode())
    return (FORMAT_HEADER, (Format.JSON if batch_size == 1 else Format.JSONL).value.encode())


def encode_container(records: Iterable[dict[str, Any]], record_name: str, codec: str = "deflate") -> bytes:
    """Records -> an Avro object container file (the file form of a batch)."""
    bio = io.BytesIO()
    fastavro.writer(bio, schemas.parsed(record_name), records, codec=codec)
    return bio.getvalue()
