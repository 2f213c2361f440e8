"""`callpipe query SQL`: DuckDB over the lake's zones as named views, read-only.

Views: `analytics_calls` (the analytics zone, with hive columns `dt` and `bucket`), one view per
aggregate under its own name (`calls_hourly`, `calls_daily`, ...), and `vault_calls` only when the
caller passes `vault=True` (the CLI's explicit `--vault`).

Read-only is enforced twice: the text must be one SELECT-like statement (SELECT, WITH, FROM,
DESCRIBE, SUMMARIZE, EXPLAIN; never COPY, ATTACH, SET, INSTALL, ...), and the connection may touch
only the zones it exposes: DuckDB's `enable_external_access` is off with `allowed_directories` set
to those zones, and the configuration is locked before the query runs. So without `--vault` even
`read_parquet('<lake>/vault/...')` fails. Every query with the vault exposed is audited, its text
by a keyed digest under the pseudonymization key (`jobs.audit.query_ref`), which the caller passes.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from jobs import audit
from pipeline.keys import PseudonymKey
from sinks import layout
from sinks.read import duckdb_view

READ_ONLY = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


class QueryError(ValueError):
    """A query that callpipe refuses or DuckDB rejects; the message is safe to print."""


@dataclass(frozen=True)
class Result:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def views(lake: Path, *, vault: bool = False) -> dict[str, str]:
    """View name -> what it reads: the zone name or an aggregate's parquet glob."""
    out: dict[str, str] = {"analytics_calls": layout.ANALYTICS}
    if vault:
        out["vault_calls"] = layout.VAULT
    aggregates = lake / layout.AGGREGATES
    if aggregates.is_dir():
        for folder in sorted(aggregates.iterdir()):
            if folder.is_dir() and folder.name.isidentifier() and any(folder.glob("*.parquet")):
                out[folder.name] = str(folder / "*.parquet")
    return out


def connect(lake: Path, *, vault: bool = False) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """An in-memory connection with the views defined and file access fenced to their zones.

    The zone views (`sinks.read.duckdb_view`) carry the hive columns dt (DATE) and bucket, and
    exist even when the zone has no files yet (empty, same columns)."""
    con = duckdb.connect()
    names = []
    for name, source in views(lake, vault=vault).items():
        if source in layout.ZONES:
            duckdb_view(con, lake, source, name)
        else:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{_quote(source)}')")
        names.append(name)
    allowed = [layout.table_dir(lake, layout.ANALYTICS), lake / layout.AGGREGATES]
    if vault:
        allowed.append(layout.table_dir(lake, layout.VAULT))
    listed = ", ".join(f"'{_quote(str(p.resolve()))}/'" for p in allowed)
    con.execute(f"SET allowed_directories = [{listed}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con, names


# Errors about the query's text (syntax, names, types), never about the data it read.
SQL_ERRORS = (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException)
_QUOTED = re.compile(r"'(?:[^']|'')*'")


def masked(message: str) -> str:
    """DuckDB's first message line with every single-quoted literal shown as '…': a conversion
    error quotes the value it could not convert (a phone number of the vault), a parser error the
    query's own literals; names (double-quoted), positions and types stay."""
    return _QUOTED.sub("'…'", message.splitlines()[0] if message else "")


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"cannot parse the query: {masked(str(exc))}") from None
    if len(statements) != 1:
        raise QueryError("give exactly one statement")
    if statements[0].type not in READ_ONLY:
        raise QueryError(f"only SELECT queries are allowed, not {statements[0].type.name}")


def run(lake: Path, sql: str, *, vault: bool = False, key: PseudonymKey | None = None) -> Result:
    """Run one read-only query over the lake's views.

    A query with the vault exposed is an access to restricted data: it is recorded in the audit
    trail (rows returned, outcome, and the SQL as its keyed digest under `key`, never its text
    nor a plain digest: either would let a reader of the trail find the subject it names), so a
    vault query needs `key`, the pseudonymization key."""
    if vault and key is None:
        raise ValueError("a vault query is audited under the pseudonymization key: pass key")
    started = time.monotonic()
    con, _ = connect(lake, vault=vault)
    outcome, rows = "failed", []
    try:
        check_read_only(con, sql)
        try:
            rel = con.execute(sql)
            rows = rel.fetchall()
        except duckdb.Error as exc:
            # DuckDB's messages name tables, columns and paths; a cast error quotes the value it
            # could not convert: masked, as the line may end up in a log or a cron mail.
            message = masked(str(exc))
            if vault and not isinstance(exc, SQL_ERRORS):
                # Over the vault, an error about the data (a cast, a function's input, error())
                # may print a value in any form, quoted or not: only its kind is shown.
                message = (
                    f"{type(exc).__name__}: the query failed on vault data (the detail may hold a value)"
                )
            if isinstance(exc, duckdb.CatalogException) and not (lake / layout.AGGREGATES).is_dir():
                message += (
                    " (the aggregates, calls_daily and the others, exist once `callpipe jobs anonymize` ran)"
                )
            raise QueryError(message) from None
        columns = tuple(d[0] for d in rel.description or ())
        outcome = "ok"
        return Result(columns, rows)
    finally:
        con.close()
        if vault and key is not None:
            audit.record(
                lake,
                job="query",
                params={"vault": True, "sql_hmac": audit.query_ref(key, sql), "key_version": key.version},
                counts={"rows": len(rows)},
                files=[],
                duration_s=time.monotonic() - started,
                outcome=outcome,
            )


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_json(result: Result) -> str:
    return json.dumps([dict(zip(result.columns, map(_plain, row), strict=True)) for row in result.rows])


def to_csv(result: Result) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow(["" if v is None else _plain(v) for v in row])
    return buf.getvalue()


def to_table(result: Result, *, max_width: int = 40) -> str:
    """An aligned text table; long cells are cut with an ellipsis."""

    def cell(value: Any) -> str:
        text = "NULL" if value is None else str(_plain(value))
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    body: Sequence[Sequence[str]] = [[cell(v) for v in row] for row in result.rows]
    widths = [len(c) for c in result.columns]
    for row in body:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(result.columns, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    lines.append(f"({len(body)} row{'s' if len(body) != 1 else ''})")
    return "\n".join(lines)


def _quote(text: str) -> str:
    return text.replace("'", "''")
