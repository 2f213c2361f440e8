"""`callpipe produce` without a broker: argument errors, job building, keying and batching plans."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from pipeline import cli, codec
from pipeline.carrier import generate
from pipeline.carrier.cli import build_shipments
from pipeline.carrier.produce import Outgoing, load_file, mix_in_bad, partition_for, plan_messages

START = 1_767_225_600_000
TRAFFIC = generate.generate_traffic(9, 2000, START, accounts=100)


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["produce", *argv])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--format", "xml"], "invalid choice"),
        (["--count", "-5"], "must not be negative"),
        (["--count", "many"], "not a whole number"),
        (["--batch-size", "0"], "at least 1"),
        (["--rate", "-1"], "events per second"),
        (["--bad-share", "1.5"], "fraction below 1"),
        (["--start", "next tuesday"], "ISO-8601"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["produce", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "cannot read"),
        (b"", "not a file of"),
        (b"hello world\n", "not a file of"),
        (b'{"event_id": "e1", "account_id": 5}\n', "invalid CallEvent record(s); first: record 1: "),
    ],
)
def test_unusable_files_give_one_line_and_exit_2(
    tmp_path: Path, content: bytes | None, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.jsonl"
    if content is not None:
        path.write_bytes(content)
    assert cli.main(["produce", "--from", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert "account_id" not in err and "e1" not in err  # no field values in errors


def test_file_of_the_wrong_record_for_the_topic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "consents.jsonl"
    path.write_bytes(b"\n".join(codec.to_json(c, "ConsentEvent") for c in TRAFFIC.consents))
    assert cli.main(["produce", "--from", str(path), "--topic", "calls.raw"]) == 2
    assert "ConsentEvent records, which do not belong on calls.raw" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "topic"),
    [("CallEvent", "calls.raw"), ("ConsentEvent", "consent.events"), ("PrivacyRequest", "privacy.requests")],
)
@pytest.mark.parametrize("form", ["jsonl", "array", "container"])
def test_files_are_recognised_by_content(tmp_path: Path, name: str, topic: str, form: str) -> None:
    records = {"CallEvent": TRAFFIC.calls, "ConsentEvent": TRAFFIC.consents}.get(name) or [
        {"request_id": "r-1", "account_id": "acc-1", "kind": "erase", "at": START, "corrections": None}
    ]
    path = tmp_path / f"in.{form}"
    if form == "jsonl":
        path.write_bytes(b"\n".join(codec.to_json(r, name, iso_times=True) for r in records) + b"\n")
    elif form == "array":
        path.write_bytes(orjson.dumps(records))
    else:
        path.write_bytes(codec.encode_container(records, name))
    assert load_file(path, None) == (name, records)
    jobs = build_shipments(parse("--from", str(path), "--format", "json"), datetime.now(UTC))
    assert [(j.topic, j.record_name, list(j.records), j.fmt) for j in jobs] == [
        (topic, name, records, "json")
    ]


def test_generated_jobs_default_window_is_yesterday_and_options_add_topics() -> None:
    now = datetime(2026, 3, 10, 15, 30, tzinfo=UTC)
    args = parse("--count", "300", "--seed", "4", "--consent", "--requests", "--bad-share", "0.1")
    jobs = build_shipments(args, now)
    assert [j.topic for j in jobs] == ["consent.events", "privacy.requests", "calls.raw"]
    calls = jobs[-1]
    assert len(calls.records) == 300 and len(calls.bad) == 30
    day = int(datetime(2026, 3, 9, tzinfo=UTC).timestamp() * 1000)
    assert all(day <= c["started_at"] < day + generate.DAY_MS for c in calls.records)
    assert build_shipments(args, now)[-1].records == calls.records  # same seed, same events
    explicit = build_shipments(parse("--count", "10", "--start", "2026-01-01T06:00", "--hours", "2"), now)[0]
    assert all(
        START + 6 * generate.HOUR_MS <= c["started_at"] < START + 8 * generate.HOUR_MS
        for c in explicit.records
    )


@pytest.mark.parametrize(
    ("key", "java_murmur2"),
    [
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_partition_for_matches_kafkas_default_partitioner(key: bytes, java_murmur2: int) -> None:
    for partitions in (1, 4, 12):
        assert partition_for(key, partitions) == (java_murmur2 & 0x7FFFFFFF) % partitions
        assert partition_for(key, partitions) == DefaultPartitioner()(key, list(range(partitions)), [])


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_single_event_messages_are_keyed_by_account(fmt: str) -> None:
    msgs = plan_messages(TRAFFIC.calls, "CallEvent", fmt, 1, 4)
    assert len(msgs) == len(TRAFFIC.calls)
    for msg, call in zip(msgs, TRAFFIC.calls, strict=True):
        assert msg.key == call["account_id"].encode() and msg.partition is None and msg.events == 1
        assert codec.decode_value(msg.value, "CallEvent", headers=msg.headers).records == [call]


@pytest.mark.parametrize("fmt", ["avro", "json"])
@pytest.mark.parametrize("batch_size", [2, 50, 500])
def test_batch_messages_hold_one_partition_in_event_order(fmt: str, batch_size: int) -> None:
    msgs = plan_messages(TRAFFIC.calls, "CallEvent", fmt, batch_size, 4)
    seen: dict[int, list[dict]] = {}
    for msg in msgs:
        assert msg.key is None and msg.partition is not None and 1 <= msg.events <= batch_size
        records = codec.decode_value(msg.value, "CallEvent", headers=msg.headers).records
        assert len(records) == msg.events
        assert {partition_for(r["account_id"].encode(), 4) for r in records} == {msg.partition}
        seen.setdefault(msg.partition, []).extend(records)
    for p, records in seen.items():
        expected = [c for c in TRAFFIC.calls if partition_for(c["account_id"].encode(), 4) == p]
        assert records == expected  # nothing lost, nothing reordered within a partition


def test_bad_messages_are_spread_through_the_good_ones() -> None:
    good = [Outgoing(b"g", b"k", None, (), 1)] * 100
    bad = generate.generate_bad_messages(1, 4)
    mixed = mix_in_bad(good, bad)
    positions = [i for i, m in enumerate(mixed) if m.events == 0]
    assert len(mixed) == 104 and len(positions) == 4
    assert positions[0] > 10 and positions[-1] < 95


@pytest.mark.parametrize(("fmt", "suffix"), [("json", "jsonl"), ("avro", "avro")])
def test_out_writes_files_that_from_reads_back(
    tmp_path: Path, fmt: str, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--count",
        "200",
        "--seed",
        "3",
        "--start",
        "2026-01-01",
        "--consent",
        "--requests",
        "--format",
        fmt,
    ]
    assert cli.main(["produce", *argv, "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("wrote ")
    jobs = build_shipments(parse(*argv), datetime.now(UTC))
    for job in jobs:
        path = tmp_path / f"{job.topic}.{suffix}"
        assert load_file(path, None) == (job.record_name, list(job.records))


def test_out_refuses_bad_share(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["produce", "--count", "10", "--bad-share", "0.1", "--out", str(tmp_path)]) == 2
    assert "--bad-share needs a broker" in capsys.readouterr().err
