"""A sketch, not the chain: what the chain's per-value work costs when done per column and once per
distinct value, the design docs/BENCHMARKS.md weighs for the stream ratios (issue 8).

    python -m pipeline.bench.bench_columnar_sketch [EVENTS]

Single-event Avro messages of the bench's seeded traffic, 2,000 at a time: decoded as the
passthrough decodes them (fastavro, one Arrow conversion), identifier, enum and time checks as
Arrow compute, then account, org and phone tokens, number facts, cell areas, IP prefixes and
attribute values computed once per distinct value of the batch and spread back with `take`,
and detection on the transcripts. Prints CPU microseconds per event for each step (the second of
two runs). Left out, so the total is a lower bound: consent decisions, routing, building the two
zone tables, partitioning and Parquet. Phone numbers are read in one region ("US") rather than
by the chain's rules, and nothing here is checked against the chain's output: it sizes a design,
it lands nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import codec, collector
from pipeline.bench.canary import KEY, seeded
from pipeline.bench.passthrough import RAW_SCHEMA
from pipeline.detect import redact_text, redact_value
from pipeline.identifiers import MAX_ID_LEN, MAX_PHONE_LEN
from pipeline.keys import Domain
from pipeline.memo import Memo
from pipeline.phones import number_info
from pipeline.pseudonymize import cell_area, ip_prefix, phone_facts, token_of

BATCH = 2_000
IDS: tuple[tuple[str, int], ...] = (
    ("event_id", MAX_ID_LEN),
    ("account_id", MAX_ID_LEN),
    ("org_id", MAX_ID_LEN),
    ("carrier_id", MAX_ID_LEN),
    ("caller", MAX_PHONE_LEN),
    ("callee", MAX_PHONE_LEN),
)


def _per_distinct(column: pa.ChunkedArray, fn: Callable[[Any], Any]) -> pa.Array:
    encoded = column.combine_chunks().dictionary_encode()
    values = pa.array([fn(v) for v in encoded.dictionary.to_pylist()])  # a dictionary holds no null
    taken: pa.Array = values.take(encoded.indices)
    return taken


def _checks(table: pa.Table) -> pa.Array:
    ok: Any = None
    for name, limit in IDS:
        column = table[name]
        fits = pc.and_(pc.utf8_is_printable(column), pc.less_equal(pc.utf8_length(column), limit))
        ok = fits if ok is None else pc.and_(ok, fits)
    for name, values in (("kind", ["voice", "video", "sms", "mms"]), ("direction", ["inbound", "outbound"])):
        ok = pc.and_(ok, pc.is_in(table[name], value_set=pa.array(values)))
    started = table["started_at"]
    result: pa.Array = pc.and_(ok, pc.less_equal(started, pc.coalesce(table["ended_at"], started)))
    return result


def _phone_token(memo: Memo) -> Callable[[str], str]:
    def token(number: str) -> str:
        found = memo.peek(("sketch-phone", number))
        if found is None:
            info = number_info(number, "US")
            e164 = info.e164 if info is not None else number
            found = memo.put(
                ("sketch-phone", number), (token_of(KEY, Domain.PHONE, e164, memo), phone_facts(e164))
            )
        return str(found[0])

    return token


def _tokens(domain: Domain, memo: Memo) -> Callable[[str], str]:
    return lambda value: token_of(KEY, domain, value, memo)


def _attributes(table: pa.Table) -> pa.Array:
    maps = table["attributes"].combine_chunks()
    encoded = maps.items.dictionary_encode()
    redacted = pa.array([redact_value(v) for v in encoded.dictionary.to_pylist()]).take(encoded.indices)
    result: pa.Array = pa.MapArray.from_arrays(maps.offsets, maps.keys, redacted)
    return result


Step = Callable[[str, Callable[[], Any]], Any]


def _batch(chunk: list[bytes], memo: Memo, step: Step) -> None:
    records = step("decode (plain_record)", lambda: [codec.plain_record(m, None, "CallEvent") for m in chunk])
    table = step("one Arrow conversion", lambda: pa.Table.from_pylist(records, schema=RAW_SCHEMA))
    step("checks as Arrow compute", lambda: _checks(table))
    phone = _phone_token(memo)
    step("phone numbers per distinct", lambda: [_per_distinct(table[c], phone) for c in ("caller", "callee")])
    step(
        "account tokens per distinct",
        lambda: _per_distinct(table["account_id"], _tokens(Domain.ACCOUNT, memo)),
    )
    step("org tokens per distinct", lambda: _per_distinct(table["org_id"], _tokens(Domain.ORG, memo)))
    step("cell areas per distinct", lambda: _per_distinct(table["cell_id"], lambda v: cell_area(v, KEY)))
    step("IP prefixes per distinct", lambda: _per_distinct(table["caller_ip"], ip_prefix))
    step("attribute values per distinct", lambda: _attributes(table))
    step(
        "detection on transcripts",
        lambda: [None if t is None else redact_text(t) for t in table["transcript"].to_pylist()],
    )


def run(messages: list[bytes], spent: dict[str, float]) -> None:
    memo = Memo()

    def step(name: str, work: Callable[[], Any]) -> Any:
        started = time.process_time()
        result = work()
        spent[name] = spent.get(name, 0.0) + time.process_time() - started
        return result

    for i in range(0, len(messages), BATCH):
        _batch(messages[i : i + BATCH], memo, step)


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    messages = codec.encode(seeded(events).traffic.calls, "CallEvent", "avro", 1)
    collector.tune()
    spent: dict[str, float] = {}
    run(messages, spent)  # warm-up
    spent.clear()
    run(messages, spent)
    for name, seconds in spent.items():
        print(f"{name:34s} {seconds / events * 1e6:6.2f} us/event")
    print(f"{'total (a lower bound)':34s} {sum(spent.values()) / events * 1e6:6.2f} us/event")


if __name__ == "__main__":
    main()
