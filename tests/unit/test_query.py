"""`callpipe query`: named views, the vault only on request, read-only, three output formats."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from jobs import audit, query
from jobs.anonymize import anonymize
from pipeline.keys import PseudonymKey
from tests.support.analysis_lake import T0, crowd, vault_row, write_zone

KEY = PseudonymKey("v1", bytes(range(32)))


@pytest.fixture
def full_lake(lake: Path) -> Path:
    write_zone(lake, "analytics", crowd(subjects=6, hours=3))
    write_zone(lake, "vault", [vault_row(s, T0) for s in range(3)])
    anonymize(duckdb.connect(), lake, k=5, as_of=datetime(2026, 7, 1, tzinfo=UTC), noise=None)  # exact values
    return lake


def test_views_name_analytics_and_each_aggregate(full_lake: Path) -> None:
    assert set(query.views(full_lake)) == {"analytics_calls", "calls_hourly", "calls_daily"}
    assert set(query.views(full_lake, vault=True)) == {
        "analytics_calls",
        "calls_hourly",
        "calls_daily",
        "vault_calls",
    }


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT count(*) AS n FROM analytics_calls", [(18,)]),
        ("SELECT sum(calls) FROM calls_hourly", [(18,)]),
        ("SELECT count(DISTINCT dt) FROM analytics_calls", [(1,)]),
        ("WITH x AS (SELECT subjects FROM calls_daily) SELECT min(subjects) FROM x", [(6,)]),
        ("FROM calls_daily SELECT calls", [(18,)]),
    ],
)
def test_select_queries(full_lake: Path, sql: str, expected: list[tuple]) -> None:
    assert query.run(full_lake, sql).rows == expected


def test_vault_needs_the_flag_and_every_vault_query_is_audited(full_lake: Path) -> None:
    with pytest.raises(query.QueryError, match="vault_calls"):
        query.run(full_lake, "SELECT count(*) FROM vault_calls")
    assert not [e for e in audit.read(full_lake) if e["job"] == "query"]
    sql = "SELECT account_id FROM vault_calls WHERE account_id = 'acct-1'"
    assert query.run(full_lake, sql, vault=True, key=KEY).rows == [("acct-1",)]
    with pytest.raises(query.QueryError):
        query.run(full_lake, "COPY vault_calls TO 'x.csv'", vault=True, key=KEY)
    entries = [e for e in audit.read(full_lake) if e["job"] == "query"]
    assert [(e["outcome"], e["counts"]["rows"]) for e in entries] == [("ok", 1), ("failed", 0)]
    assert all("acct-1" not in p.read_text() for p in (full_lake / "_audit").iterdir())
    with pytest.raises(ValueError, match="pseudonymization key"):
        query.run(full_lake, sql, vault=True)  # a vault query is never run unaudited


def test_a_vault_query_is_audited_by_a_keyed_digest_that_only_the_key_holder_can_match(
    full_lake: Path,
) -> None:
    # a templated query differs from the next only by a number: a plain digest of its text would
    # let anyone with the audit trail try every number until one matched
    template = "SELECT count(*) FROM vault_calls WHERE caller = '{}'"
    asked = template.format("+14155550123")
    query.run(full_lake, asked, vault=True, key=KEY)
    [entry] = [e for e in audit.read(full_lake) if e["job"] == "query"]
    assert entry["params"]["sql_hmac"] == audit.query_ref(KEY, asked)
    assert entry["params"]["key_version"] == KEY.version
    text = "".join(p.read_text() for p in (full_lake / "_audit").iterdir())
    assert hashlib.sha256(asked.encode()).hexdigest() not in text and "sql_sha256" not in text
    assert "+14155550123" not in text
    # the key holder matches a text to its entries; another text, or another key, matches none
    assert audit.about_query(audit.read(full_lake), KEY, asked) == [entry]
    assert audit.about_query(audit.read(full_lake), KEY, template.format("+14155550124")) == []
    other = PseudonymKey("v1", bytes(32))
    assert audit.about_query(audit.read(full_lake), other, asked) == []


def test_audit_entries_written_with_a_plain_digest_are_still_read_and_matched(full_lake: Path) -> None:
    older = "SELECT count(*) FROM vault_calls"
    audit.record(
        full_lake,
        job="query",
        params={"vault": True, "sql_sha256": hashlib.sha256(older.encode()).hexdigest()},
        counts={"rows": 1},
        files=[],
        duration_s=0.1,
        outcome="ok",
        at=datetime(2026, 6, 1, tzinfo=UTC),
    )
    query.run(full_lake, older, vault=True, key=KEY)
    entries = [e for e in audit.read(full_lake) if e["job"] == "query"]
    assert len(entries) == 2
    assert audit.about_query(entries, KEY, older) == entries


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_parquet('{lake}/vault/calls/*/*/*.parquet')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "COPY (SELECT 1) TO '{lake}/aggregates/x.csv'",
        "CREATE TABLE t AS SELECT 1",
        "SET enable_external_access = true",
        "ATTACH '{lake}/x.duckdb'",
        "INSTALL httpfs",
        "SELECT 1; SELECT 2",
        "PRAGMA version",
    ],
)
def test_writes_and_reads_outside_the_views_are_refused(full_lake: Path, sql: str) -> None:
    before = sorted(p for p in full_lake.rglob("*") if "_audit" not in p.parts)
    with pytest.raises(query.QueryError):
        query.run(full_lake, sql.format(lake=full_lake))
    assert sorted(p for p in full_lake.rglob("*") if "_audit" not in p.parts) == before


def test_output_formats() -> None:
    result = query.Result(("a", "when"), [(1, datetime(2026, 6, 1, tzinfo=UTC)), (None, None)])
    assert json.loads(query.to_json(result)) == [
        {"a": 1, "when": "2026-06-01T00:00:00+00:00"},
        {"a": None, "when": None},
    ]
    assert list(csv.reader(io.StringIO(query.to_csv(result)))) == [
        ["a", "when"],
        ["1", "2026-06-01T00:00:00+00:00"],
        ["", ""],
    ]
    table = query.to_table(result).splitlines()
    assert table[0].split() == ["a", "when"]
    assert table[3].split() == ["NULL", "NULL"]
    assert table[-1] == "(2 rows)"


def test_empty_lake_has_an_empty_analytics_view(lake: Path) -> None:
    assert set(query.views(lake)) == {"analytics_calls"}
    assert query.run(lake, "SELECT count(*), count(DISTINCT dt) FROM analytics_calls").rows == [(0, 0)]


def test_an_aggregate_before_anonymize_says_which_job_makes_it(lake: Path, full_lake: Path) -> None:
    write_zone(lake.parent / "fresh", "analytics", crowd(subjects=6, hours=3))
    with pytest.raises(query.QueryError, match=r"calls_daily.*`callpipe jobs anonymize`"):
        query.run(lake.parent / "fresh", "SELECT * FROM calls_daily")
    with pytest.raises(query.QueryError) as made:  # once it ran, a misspelt name gets no such hint
        query.run(full_lake, "SELECT * FROM calls_dialy")
    assert "anonymize" not in str(made.value)


def test_errors_say_what_failed_but_never_quote_a_value(full_lake: Path) -> None:
    # over the vault, an error about the data shows its kind only, whatever form the value takes
    for sql in (
        "SELECT CAST(account_id AS INTEGER) FROM vault_calls",
        "SELECT CAST(account_id AS DATE) FROM vault_calls",
        "SELECT error(account_id) FROM vault_calls",
    ):
        with pytest.raises(query.QueryError) as failed:
            query.run(full_lake, sql, vault=True, key=KEY)
        assert "acct-" not in str(failed.value) and "failed on vault data" in str(failed.value), sql
    # errors about the query's text still say what is wrong, a quoted literal masked
    with pytest.raises(query.QueryError) as parse:
        query.run(
            full_lake, "SELECT * FORM analytics_calls WHERE caller = '+4915123170828'", vault=True, key=KEY
        )
    assert "syntax error" in str(parse.value) and "+49" not in str(parse.value)
    with pytest.raises(query.QueryError) as bound:
        query.run(full_lake, "SELECT no_such_column FROM vault_calls", vault=True, key=KEY)
    assert "no_such_column" in str(bound.value)
    # over analytics, DuckDB's reason is shown with quoted literals masked
    with pytest.raises(query.QueryError) as cast:
        query.run(full_lake, "SELECT CAST('x' || account_token AS INTEGER) FROM analytics_calls")
    assert "Conversion Error" in str(cast.value) and "'…'" in str(cast.value)
