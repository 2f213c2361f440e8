"""Regenerate the known-bad inputs in this folder: `python tests/bad_inputs/make_bad_inputs.py`.

Each file lives in a folder named after the reason code decoding it as a calls.raw value must give.
The files are committed; this script only documents how they were made.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import fastavro
import orjson

from pipeline import codec
from pipeline.carrier import generate

HERE = Path(__file__).resolve().parent
START = 1_767_225_600_000


def main() -> None:
    calls = generate.generate_calls(1, 3, START, generate.HOUR_MS)
    call = next(c for c in generate.generate_calls(1, 50, START) if c["device"] and c["attributes"])
    good = codec.to_json(call, "CallEvent")
    avro = codec.encode([call], "CallEvent", "avro")[0]
    batch = codec.encode(calls, "CallEvent", "avro", 3)[0]

    def js(**change: object) -> bytes:
        rec = dict(call)
        for key, value in change.items():
            if value is ...:
                rec.pop(key)
            else:
                rec[key] = value
        return orjson.dumps(rec)

    consents = generate.generate_consents(1, generate.generate_accounts(1, 20), START)
    device = {k: v for k, v in call["device"].items() if k != "device_id"}
    big = {**calls[1], "transcript": "blah " * 1000}  # over the 4 KiB event limit of the test
    files: dict[str, bytes] = {
        "malformed/truncated_json.json": good[:-7],
        "malformed/unclosed_array.json": b"[" + good + b"," + good,
        "malformed/truncated_avro_confluent.bin": avro[: len(avro) // 2],
        "malformed/truncated_avro_batch.bin": batch[:-3],
        "malformed/avro_trailing_bytes.bin": avro + b"\x00\x01",
        "malformed/avro_bad_utf8.bin": avro[:5] + b"\x04\xff\xfe" + avro[8:],
        "malformed/corrupt_container.avro": codec.encode_container(calls, "CallEvent", "null")[:-20],
        "malformed/jsonl_one_broken_line.jsonl": b"\n".join([good, b'{"event_id": "e-2", ', good]),
        "unknown_schema_id/id_99.bin": b"\x00" + struct.pack(">I", 99) + avro[5:],
        "unknown_schema_id/id_9.bin": b"\x00" + struct.pack(">I", 9) + avro[5:],
        "wrong_type/duration_as_string.json": js(duration_s="61"),
        "wrong_type/started_at_not_a_time.json": js(started_at="the 3rd of May"),
        "wrong_type/attribute_value_number.json": js(attributes={"retries": 3}),
        "wrong_type/caller_as_number.json": js(caller=442079460958),
        "wrong_type/consent_schema_id_on_calls.bin": codec.encode(consents[:1], "ConsentEvent", "avro")[0],
        "wrong_type/container_of_consents.avro": codec.encode_container(consents, "ConsentEvent"),
        "wrong_type/array_of_numbers.json": b"[1, 2]",
        "missing_field/no_account_id.json": js(account_id=...),
        "missing_field/null_event_id.json": js(event_id=None),
        "missing_field/device_without_id.json": js(device=device),
        "missing_field/jsonl_line_without_status.jsonl": b"\n".join([good, js(status=...)]),
        "unknown_enum/status_dropped.json": js(status="dropped"),
        "unknown_enum/kind_fax.json": js(kind="fax"),
        "unknown_enum/direction_upper_case.json": js(direction="INBOUND"),
        "empty/zero_bytes.bin": b"",
        "empty/whitespace.json": b"  \n\n ",
        "empty/empty_array.json": b"[]",
        "empty/avro_batch_of_none.bin": b"\x00" + struct.pack(">I", 11) + _empty_array(),
        "empty/container_without_records.avro": codec.encode_container([], "CallEvent"),
        "too_large/big_transcript.json": js(transcript="blah " * 1000),
        # One oversized event among good ones, in every batch framing: only it is rejected.
        "too_large/big_transcript_in_batch.json": orjson.dumps([calls[0], big, calls[2]]),
        "too_large/big_transcript_in_batch.jsonl": b"\n".join(
            orjson.dumps(c) for c in (calls[0], big, calls[2])
        ),
        "too_large/big_transcript_in_batch.bin": codec.encode(
            [calls[0], big, calls[2]], "CallEvent", "avro", 3
        )[0],
        "too_large/big_transcript_in_batch.avro": codec.encode_container(
            [calls[0], big, calls[2]], "CallEvent"
        ),
        "too_large/big_transcript_avro.bin": codec.encode([big], "CallEvent", "avro")[0],
        # Identifiers no command could name (control and other unprintable characters).
        "bad_id/nul_in_account_id.json": js(account_id="acct\x00-1"),
        "bad_id/escape_in_event_id.json": js(event_id="e\x1b[2J-1"),
        "bad_id/newline_in_org_id.json": js(org_id="org\n-1"),
        "bad_id/zero_width_in_carrier_id.json": js(carrier_id="carrier\u200b-gb"),
        "bad_id/tab_in_caller.json": js(caller="+44\t20 7946 0958"),
        "bad_id/nul_in_device_id.json": js(device={**call["device"], "device_id": "d\x00"}),
        "bad_id/nul_in_account_id_avro.bin": codec.encode(
            [{**call, "account_id": "a\x00"}], "CallEvent", "avro"
        )[0],
        "bad_id/nul_in_account_id_in_batch.json": orjson.dumps(
            [calls[0], {**calls[1], "account_id": "a\x00"}]
        ),
        "bad_id/nul_in_account_id_in_batch.bin": codec.encode(
            [calls[0], {**calls[1], "account_id": "a\x00"}], "CallEvent", "avro", 2
        )[0],
    }
    for name, value in files.items():
        path = HERE / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(value)


def _empty_array() -> bytes:
    bio = io.BytesIO()
    fastavro.schemaless_writer(bio, {"type": "array", "items": "int"}, [])
    return bio.getvalue()


if __name__ == "__main__":
    main()
