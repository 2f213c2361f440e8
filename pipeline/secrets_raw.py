"""Credentials out of a dead letter's raw bytes, whatever their format, before anything keeps them.

The dead-letter path keeps the original bytes (calls.dlq, sealed; `<lake>/_rejects/`), so a
secret-named attribute (`password`, `pin`, ... the policy's `secret_names`) must be taken out of
them first, as `pipeline.secret_names.strip_secrets` takes it out of a record:
- JSON (text starting with `{` or `[`): `pipeline.secret_names.strip_secrets_json` (keys dropped, or
  their values masked where the text does not parse);
- Avro that decodes (Confluent, a bare body, every block of a container file): the records
  without secret-named map entries, encoded again with the same writer schema, framing and codec.
  Unchanged bytes when nothing is secret, so a dead letter without one replays byte for byte;
- Avro that does not decode (a cut or damaged message, a damaged block once decompressed): every
  map entry whose key names a secret is masked in place. An Avro map entry is a string key (its
  zigzag-varint length, then its bytes) followed by the value (a string the same way), so the
  value's bytes become `*`, the same length: the framing of the rest is untouched, and a repaired
  message can still be replayed (`callpipe dlq replay`), where validation drops the key anyway;
- what can be neither (a compressed block that does not decompress, a container whose header
  does not read, a codec this cannot write): None. The caller then keeps only the size and digest
  of the bytes (`pipeline.reasons.Withheld`), never the bytes.
"""

from __future__ import annotations

import hashlib
import io
import re
import zlib
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import fastavro

import schemas
from pipeline import raw_records
from pipeline.raw_records import CONTAINER_MAGIC, Block, Container, read_long, write_long
from pipeline.reasons import Rejection, Withheld
from pipeline.secret_names import is_secret_name, strip_secrets, strip_secrets_json

MAX_KEY_BYTES = 256
_WS = b" \t\r\n"
_NOT_ALNUM = re.compile(rb"[^a-z0-9]")


def strip_secrets_raw(raw: bytes, names: Iterable[str]) -> bytes | None:
    """`raw` without secrets (the module's docstring); None when that cannot be done reliably."""
    names = tuple(names)
    if raw.lstrip(_WS)[:1] in (b"{", b"["):
        return strip_secrets_json(raw, names)
    if not _may_name_secret(raw, names) and not raw.startswith(CONTAINER_MAGIC):
        return raw
    if raw.startswith(CONTAINER_MAGIC):
        out = _container(raw, names)
    elif raw[:1] == b"\x00" and len(raw) >= 5:
        out = _confluent(raw, names)
    else:
        out = _bare(raw, names)
    return None if out is None else strip_secrets_json(out, names)  # text garbage: its JSON pairs


def _may_name_secret(buf: bytes, names: tuple[str, ...]) -> bool:
    """False when no secret name can be in `buf`: a key that names one holds the name's letters
    and digits in a row, whatever its case and separators."""
    squeezed = _NOT_ALNUM.sub(b"", buf.lower())
    return any(_NOT_ALNUM.sub(b"", n.lower().encode()) in squeezed for n in names)


def mask_in_place(buf: bytes, names: tuple[str, ...]) -> bytes:
    """Every Avro string that names a secret, followed by a string value: that value's bytes as
    `*` (to the end of `buf` when it is cut). Same length as `buf`."""
    if not _may_name_secret(buf, names):
        return buf
    out = bytearray(buf)
    pos = 0
    while pos < len(out):
        try:
            klen, key_at = read_long(out, pos)
        except ValueError:
            break
        end = key_at + klen
        if 0 < klen <= MAX_KEY_BYTES and end <= len(out) and _names_secret(bytes(out[key_at:end]), names):
            try:
                vlen, value_at = read_long(out, end)
            except ValueError:  # the value's length is cut: mask what follows the key
                vlen, value_at = len(out), end
            stop = min(value_at + max(vlen, 0), len(out))
            out[value_at:stop] = b"*" * (stop - value_at)
            pos = max(stop, pos + 1)
            continue
        pos += 1
    return bytes(out)


def _names_secret(key: bytes, names: tuple[str, ...]) -> bool:
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return False
    return text.isprintable() and is_secret_name(text, names)


def _stripped(records: list[Any], names: tuple[str, ...]) -> tuple[list[Any], bool]:
    out = [strip_secrets(r, names) for r in records]
    return out, out != records


def _encode(writer: Any, value: Any) -> bytes:
    bio = io.BytesIO()
    fastavro.schemaless_writer(bio, writer, value)
    return bio.getvalue()


def _body(body: bytes, writer: Any, batch: bool, names: tuple[str, ...]) -> bytes | None:
    """A decoded body re-encoded without secrets (None if it does not decode whole)."""
    records = raw_records.decode_body(body, writer)
    if not records:
        return None
    kept, changed = _stripped(records, names)
    if not changed:
        return body
    return _encode(writer, kept if batch else kept[0])


def _confluent(raw: bytes, names: tuple[str, ...]) -> bytes:
    sid = int.from_bytes(raw[1:5], "big")
    for ids, batch in ((schemas.SCHEMA_IDS, False), (schemas.BATCH_SCHEMA_IDS, True)):
        if sid in ids:
            name, version = ids[sid]
            body = _body(raw[5:], schemas.parsed_writer(name, version, batch=batch), batch, names)
            if body is not None:
                return raw[:5] + body
    return raw[:5] + mask_in_place(raw[5:], names)


def _bare(raw: bytes, names: tuple[str, ...]) -> bytes:
    for name in raw_records.RECORD_NAMES:
        for batch in (False, True):
            body = _body(raw, schemas.parsed_writer(name, schemas.CURRENT[name], batch=batch), batch, names)
            if body is not None:
                return body
    return mask_in_place(raw, names)


def _container(raw: bytes, names: tuple[str, ...]) -> bytes | None:
    c = raw_records.parse_container(raw)
    if c is None:
        return None
    writer = raw_records.writer_schema(c)
    if writer is None:  # a header fastavro does not take: nothing can be written back
        return None
    parts = [c.header]
    changed = False
    for block in c.blocks:
        new = _block(c, raw, block, writer, names)
        if new is None:
            return None
        changed |= new != raw[block.start : block.end]
        parts.append(new)
    return b"".join(parts) if changed else raw


def _block(c: Container, raw: bytes, block: Block, writer: Any, names: tuple[str, ...]) -> bytes | None:
    """One block without secrets, as stored (None: it cannot be told)."""
    stored = raw[block.start : block.end]
    records = raw_records.block_records(c, raw, block)
    if records is not None:
        kept, changed = _stripped(records, names)
        if not changed:
            return stored
        return _framed(c, block.count, b"".join(_encode(writer, r) for r in kept), whole=True)
    data = raw_records.decompressed(c, block)
    if data is None:
        return None
    masked = mask_in_place(data, names)
    if masked == data:
        return stored
    if c.codec == "null":  # stored as it is read: mask the block itself, framing and all
        return mask_in_place(stored, names)
    return _framed(c, block.count, masked, whole=block.whole)


def _framed(c: Container, count: int, data: bytes, *, whole: bool) -> bytes | None:
    if c.codec == "deflate":
        packer = zlib.compressobj(wbits=-15)
        data = packer.compress(data) + packer.flush()
    elif c.codec != "null":
        return None  # a codec written by hand here only: null and deflate
    return write_long(count) + write_long(len(data)) + data + (c.sync if whole else b"")


def without_secrets(dead: Rejection, names: Iterable[str]) -> Rejection:
    """A dead letter as the dead-letter path may keep it: its bytes without secrets, else
    withheld (size and digest only)."""
    kept = strip_secrets_raw(dead.raw, names)
    if kept is None:
        digest = hashlib.sha256(dead.raw).hexdigest()
        return Withheld(
            dead.reason,
            dead.stage,
            dead.partition,
            dead.offset,
            dead.index,
            b"",
            field=dead.field,
            size=len(dead.raw),
            sha256=digest,
        )
    return dead if kept == dead.raw else replace(dead, raw=kept)
