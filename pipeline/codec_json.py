"""JSON values -> records, type-checked against the Avro schema, so JSON and Avro give identical dicts.

Every field present, optional fields None when absent, timestamps int epoch milliseconds (JSON may
give ISO-8601 strings, a naive one read as UTC, or epoch ms), enums as symbol strings, ints within
the Avro int/long range, maps of strings. Unknown fields are ignored (a v1 reader of v2 data).
A value that does not fit raises `Invalid(reason)`; the reason never quotes the input.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

import schemas
from pipeline.reasons import Reason
from schemas import clock

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


class Invalid(Exception):
    """A JSON value that does not fit the schema; carries a reason code and the (dotted) name of
    the schema field it failed on where known, never an input value."""

    def __init__(self, reason: Reason, field: str | None = None) -> None:
        self.reason = reason
        self.field = field


Conv = Callable[[Any], Any]


def _check_str(v: Any) -> Any:
    if type(v) is not str:
        raise Invalid(Reason.WRONG_TYPE)
    return v


def _int_conv(lo: int, hi: int) -> Conv:
    def conv(v: Any) -> Any:
        if type(v) is not int or not lo <= v <= hi:
            raise Invalid(Reason.WRONG_TYPE)
        return v

    return conv


def _time_ms(v: Any) -> Any:
    if type(v) is int:
        if not _INT64[0] <= v <= _INT64[1]:
            raise Invalid(Reason.WRONG_TYPE)
        return v
    if type(v) is str:
        try:
            when = datetime.fromisoformat(v)
        except ValueError:
            raise Invalid(Reason.WRONG_TYPE) from None
        return clock.to_ms(when)
    raise Invalid(Reason.WRONG_TYPE)


def _compile(node: Any) -> Conv:
    """A converter from a JSON value to the value fastavro would decode, for one schema node."""
    if isinstance(node, str):
        node = {"type": node}
    if isinstance(node, list):
        return _union(node)
    kind = node["type"]
    if isinstance(kind, (dict, list)):
        return _compile(kind)
    if kind == "string":
        return _check_str
    if kind == "long":
        if node.get("logicalType") in ("timestamp-millis", "timestamp-micros"):
            return _time_ms
        return _int_conv(*_INT64)
    if kind == "int":
        return _int_conv(*_INT32)
    if kind == "boolean":
        return _check_bool
    if kind in ("float", "double"):
        return _check_number
    if kind == "enum":
        return _enum(frozenset(node["symbols"]))
    if kind == "map":
        return _map(_compile(node["values"]))
    if kind == "array":
        return _array(_compile(node["items"]))
    if kind == "record":
        return _record(node)
    raise ValueError(f"unsupported schema type {kind!r}")


def _check_bool(v: Any) -> Any:
    if type(v) is not bool:
        raise Invalid(Reason.WRONG_TYPE)
    return v


def _check_number(v: Any) -> Any:
    if type(v) not in (int, float):
        raise Invalid(Reason.WRONG_TYPE)
    return float(v)


def _enum(symbols: frozenset[str]) -> Conv:
    def conv(v: Any) -> Any:
        if type(v) is not str:
            raise Invalid(Reason.WRONG_TYPE)
        if v not in symbols:
            raise Invalid(Reason.UNKNOWN_ENUM)
        return v

    return conv


def _map(values: Conv) -> Conv:
    def conv(v: Any) -> Any:
        if type(v) is not dict:
            raise Invalid(Reason.WRONG_TYPE)
        return {k: values(x) for k, x in v.items()}

    return conv


def _array(items: Conv) -> Conv:
    def conv(v: Any) -> Any:
        if type(v) is not list:
            raise Invalid(Reason.WRONG_TYPE)
        return [items(x) for x in v]

    return conv


def _union(branches: list[Any]) -> Conv:
    others = [_compile(b) for b in branches if b != "null"]
    nullable = len(others) < len(branches)

    def conv(v: Any) -> Any:
        if v is None:
            if nullable:
                return None
            raise Invalid(Reason.MISSING_FIELD)
        first: Invalid | None = None
        for branch in others:
            try:
                return branch(v)
            except Invalid as bad:
                first = first or bad
        raise first or Invalid(Reason.WRONG_TYPE)

    return conv


def _field(f: dict[str, Any]) -> tuple[str, Conv | None, bool, Any]:
    """(name, converter or None for a plain string, required, default). None is handled by the
    record itself, so an optional field's converter is that of its non-null branch."""
    kind = f["type"]
    if isinstance(kind, list) and len(kind) == 2 and "null" in kind:
        kind = kind[1 - kind.index("null")]
    if isinstance(kind, dict) and kind.get("type") == "string" and "logicalType" not in kind:
        kind = "string"
    return f["name"], None if kind == "string" else _compile(kind), "default" not in f, f.get("default")


def _record(node: dict[str, Any]) -> Conv:
    fields = tuple(_field(f) for f in node["fields"])

    def conv(obj: Any) -> Any:
        if type(obj) is not dict:
            raise Invalid(Reason.WRONG_TYPE)
        out = {}
        get = obj.get
        try:  # free when nothing raises (zero-cost exceptions): the field is named on rejection only
            for name, convert, required, default in fields:
                v = get(name)
                if v is None:
                    if required:
                        raise Invalid(Reason.MISSING_FIELD)
                    out[name] = default
                elif convert is None:  # plain strings, checked inline: most fields, the hot path
                    if type(v) is not str:
                        raise Invalid(Reason.WRONG_TYPE)
                    out[name] = v
                else:
                    out[name] = convert(v)
        except Invalid as bad:  # a nested record named its own field first: prefix ours
            bad.field = name if bad.field is None else f"{name}.{bad.field}"
            raise
        return out

    return conv


_CONVERTERS: dict[str, Conv] = {}


def from_json(obj: Any, record_name: str) -> dict[str, Any]:
    """One parsed JSON object -> the record dict Avro would give. Raises ValueError(reason code)."""
    try:
        result: dict[str, Any] = converter(record_name)(obj)
    except Invalid as bad:
        raise ValueError(bad.reason.value) from None
    return result


def converter(record_name: str) -> Conv:
    conv = _CONVERTERS.get(record_name)
    if conv is None:
        conv = _CONVERTERS[record_name] = _compile(schemas.raw(record_name))
    return conv


def time_fields(record_name: str) -> tuple[str, ...]:
    """Top-level fields holding timestamps (epoch ms inside callpipe)."""
    out = []
    for f in schemas.raw(record_name)["fields"]:
        types = f["type"] if isinstance(f["type"], list) else [f["type"]]
        if any(isinstance(t, dict) and t.get("logicalType") == "timestamp-millis" for t in types):
            out.append(f["name"])
    return tuple(out)


def to_json(record: dict[str, Any], record_name: str, *, iso_times: bool = False) -> bytes:
    """One record as a JSON object (timestamps epoch ms, or ISO-8601 UTC with iso_times)."""
    if iso_times:
        record = dict(record)
        for name in time_fields(record_name):
            if record.get(name) is not None:
                record[name] = clock.iso_of_ms(record[name])
    return orjson.dumps(record)
