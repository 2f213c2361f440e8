"""History carried over by `jobs anonymize`: the previous build's rows of periods older than the
analytics zone's oldest row, which retention removed and nothing can recompute (jobs/anonymize.py).

A carried row is published as it was (its noise included: it is not drawn again, so carrying
spends no privacy) if it still meets today's k, and suppressed and counted otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import duckdb

from jobs.anonymize_noise import CI95


class CarryOver(NamedTuple):
    sql: str  # SELECT over the previous build's rows older than the analytics zone's oldest, k met
    carried: int  # rows it gives
    params: dict[str, object]
    below_k: int  # rows of the previous build under today's k (a policy that raised k): suppressed now
    below_k_calls: int
    min_exact: int | None  # the fewest subjects of a carried exact row


def carry_over(
    con: duckdb.DuckDBPyConnection,
    final: Path,
    definition: str,
    grain: str,
    columns: list[str],
    oldest: object,
    k: int,
) -> CarryOver | None:
    """The previous build's rows older than `oldest` (no longer in analytics to rebuild them from)
    that meet today's `k`: a group published under a smaller k is suppressed, not carried, when
    the policy's k was raised since. An exact row meets it by its `subjects`; a noisy row's true
    count is not known any more, so it meets it only if its build's k (the file's `callpipe.k`,
    which every row of that file met) does. A file from before the error bars gets 0 for them:
    its values are exact."""
    if not final.exists():
        return None
    path = _quote(str(final))
    meta = dict(
        con.execute(f"SELECT key::VARCHAR, value::VARCHAR FROM parquet_kv_metadata('{path}')").fetchall()
    )
    if meta.get("callpipe.definition") != definition:
        return None  # a changed definition: old rows would mean something else
    present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()}
    cols = ", ".join(c if c in present or c not in CI95 else f"0::BIGINT AS {c}" for c in columns)
    built_k = int(meta.get("callpipe.k", "0") or 0)
    exact = "subjects_ci95 = 0"
    meets = f"(({exact} AND subjects >= $k) OR (NOT {exact} AND {built_k} >= $k))"
    params: dict[str, object] = {"k": k} if oldest is None else {"k": k, "oldest": oldest}
    where = "TRUE" if oldest is None else f"{grain} < $oldest"
    older = f"SELECT * FROM (SELECT {cols} FROM read_parquet('{path}')) WHERE {where}"
    row = con.execute(
        f"""SELECT count(*) FILTER (WHERE {meets}), count(*) FILTER (WHERE NOT {meets}),
                  coalesce(sum(calls) FILTER (WHERE NOT {meets}), 0),
                  min(subjects) FILTER (WHERE {meets} AND {exact})
            FROM ({older})""",
        params,
    ).fetchall()[0]  # fetched whole: the connection serves the next query
    carried, below_k, below_k_calls, min_exact = row
    if not carried and not below_k:
        return None
    return CarryOver(
        f"{older} AND {meets}", int(carried), params, int(below_k), int(below_k_calls), min_exact
    )


def _quote(text: str) -> str:
    return text.replace("'", "''")
