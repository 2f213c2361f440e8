"""The synthetic traffic: seeded, schema-valid, and realistic in the ways the pipeline relies on."""

from __future__ import annotations

import ipaddress
import random
import re
from collections import Counter

import phonenumbers
import pytest

from pipeline import codec
from pipeline.carrier import generate
from pipeline.reasons import Reason

START = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a Thursday
TRAFFIC = generate.generate_traffic(5, 4000, START, accounts=200)
CALLS = TRAFFIC.calls
ACCOUNTS = {a.account_id: a for a in TRAFFIC.accounts}


def test_same_seed_same_events_other_seed_other_events() -> None:
    again = generate.generate_traffic(5, 4000, START, accounts=200)
    assert again.calls == CALLS and again.consents == TRAFFIC.consents and again.requests == TRAFFIC.requests
    other = generate.generate_calls(6, 4000, START)
    assert {c["event_id"] for c in other}.isdisjoint(c["event_id"] for c in CALLS)


@pytest.mark.parametrize(
    ("name", "records"),
    [("CallEvent", CALLS), ("ConsentEvent", TRAFFIC.consents), ("PrivacyRequest", TRAFFIC.requests)],
)
def test_records_are_schema_valid_and_round_trip_avro(name: str, records: list[dict]) -> None:
    assert records
    assert [codec.from_json(r, name) for r in records] == records
    values = codec.encode(records, name, "avro", 100)
    assert codec.decode_batch([_Msg(v) for v in values], name).records == records


class _Msg:
    partition = 0
    offset = 0
    headers = None

    def __init__(self, value: bytes) -> None:
        self.value = value


def test_counts_window_order_and_unique_ids() -> None:
    assert len(CALLS) == 4000
    assert all(START <= c["started_at"] < START + generate.DAY_MS for c in CALLS)
    assert [c["started_at"] for c in CALLS] == sorted(c["started_at"] for c in CALLS)
    assert len({c["event_id"] for c in CALLS}) == len(CALLS)
    assert {c["account_id"] for c in CALLS} <= set(ACCOUNTS)


def test_accounts_belong_to_orgs_with_several_countries_and_carriers() -> None:
    orgs = Counter(a.org_id for a in TRAFFIC.accounts)
    assert len(orgs) > 10 and max(orgs.values()) > 1
    assert len({a.region for a in TRAFFIC.accounts}) >= 8
    assert len({c["carrier_id"] for c in CALLS}) >= 8
    for acc in TRAFFIC.accounts:
        assert generate.CARRIERS[acc.carrier_id][0] == acc.region


def test_every_number_is_a_valid_phone_number_in_its_written_form() -> None:
    formats = Counter()
    for call in CALLS:
        region = ACCOUNTS[call["account_id"]].region
        for number in (call["caller"], call["callee"]):
            parsed = phonenumbers.parse(number, region)
            assert phonenumbers.is_valid_number(parsed), number
            formats[
                "e164" if re.fullmatch(r"\+\d+", number) else "intl" if number[0] == "+" else "national"
            ] += 1
    assert min(formats.values()) > 100, formats


def test_daily_rhythm_busier_in_business_hours() -> None:
    local_hours = Counter()
    for call in CALLS:
        offset = generate.COUNTRIES[ACCOUNTS[call["account_id"]].region].utc_offset_h
        local_hours[int(call["started_at"] / generate.HOUR_MS + offset) % 24] += 1
    business = sum(local_hours[h] for h in range(9, 18))
    night = sum(local_hours[h] for h in range(0, 6))
    assert business > 5 * night


def test_status_mix_durations_and_times_are_consistent() -> None:
    voice = [c for c in CALLS if c["kind"] == "voice"]
    statuses = Counter(c["status"] for c in voice)
    assert set(statuses) == {"answered", "no_answer", "busy", "cancelled", "failed"}
    assert 0.6 < statuses["answered"] / len(voice) < 0.85
    for c in CALLS:
        if c["kind"] == "sms" or c["status"] != "answered":
            assert c["duration_s"] == 0 and c["answered_at"] is None
        else:
            assert c["duration_s"] >= 1
            assert c["started_at"] < c["answered_at"] < c["ended_at"]
            assert c["ended_at"] - c["answered_at"] >= c["duration_s"] * 1000
    durations = sorted(c["duration_s"] for c in voice if c["status"] == "answered")
    median, p99 = durations[len(durations) // 2], durations[int(len(durations) * 0.99)]
    assert 30 < median < 200 and p99 > 5 * median  # long tail


def test_app_calls_carry_device_and_ip_mobile_calls_carry_cell() -> None:
    app = [c for c in CALLS if c["device"] is not None]
    assert len(app) > 100
    versions = set()
    for c in app:
        assert set(c["device"]) == {"device_id", "device_type", "os", "app_version"}
        versions.add(ipaddress.ip_address(c["caller_ip"]).version)
        assert c["cell_id"] is None
    assert versions == {4, 6}
    cells = [c["cell_id"] for c in CALLS if c["cell_id"]]
    assert len(cells) > 500
    assert all(re.fullmatch(r"\d{3}-\d{2,3}-\d+-\d+", cell) for cell in cells)


def test_recordings_transcripts_and_attributes() -> None:
    recorded = [c for c in CALLS if c["recording_uri"]]
    transcribed = [c for c in CALLS if c["transcript"]]
    assert len(recorded) > 200 and len(transcribed) > 50
    assert all(c["recording_uri"] for c in transcribed)
    attrs = [c["attributes"] for c in CALLS if c["attributes"]]
    assert len(attrs) > 1000
    secret = [a for a in attrs if set(a) & set(generate.SECRET_KEYS)]
    assert 0 < len(secret) < len(attrs) / 10


def _luhn_ok(number: str) -> bool:
    digits = [int(d) for d in number if d.isdigit()]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def _iban_ok(iban: str) -> bool:
    compact = iban.replace(" ", "")
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def test_transcripts_have_ground_truth_of_pii_and_ordinary_numbers() -> None:
    categories: Counter[str] = Counter()
    kept = 0
    for i in range(300):
        t = generate.generate_transcript(random.Random(i), generate.REGIONS[i % len(generate.REGIONS)])
        for category, text in t.pii:
            assert text in t.text
            categories[category] += 1
            if category == "card":
                assert _luhn_ok(text)
            if category == "iban":
                assert _iban_ok(text)
            if category == "ip":
                ipaddress.ip_address(text)
        for text in t.keep:
            assert text in t.text
            kept += 1
    assert set(categories) == {"phone", "email", "ip", "card", "iban"}
    assert kept > 300


def test_consents_grants_before_and_changes_during_the_window() -> None:
    consents = TRAFFIC.consents
    assert [e["at"] for e in consents] == sorted(e["at"] for e in consents)
    assert {e["purpose"] for e in consents} == {"recording", "transcription", "analytics"}
    before = [e for e in consents if e["at"] < START]
    during = [e for e in consents if e["at"] >= START]
    assert before and during
    assert any(not e["granted"] for e in during) and any(e["granted"] for e in during)
    assert {e["account_id"] for e in consents} < set(ACCOUNTS)  # some accounts never decided


def test_privacy_requests() -> None:
    requests = generate.generate_requests(5, TRAFFIC.accounts, START, share=0.5)
    assert {r["kind"] for r in requests} == {"erase", "restrict", "unrestrict", "object", "access"}
    assert all(START <= r["at"] < START + generate.DAY_MS for r in requests)


def test_bad_messages_give_their_reason_codes() -> None:
    bad = generate.generate_bad_messages(3, 21)
    assert {b.reason for b in bad} == {
        Reason.MALFORMED,
        Reason.UNKNOWN_SCHEMA_ID,
        Reason.WRONG_TYPE,
        Reason.MISSING_FIELD,
        Reason.UNKNOWN_ENUM,
        Reason.EMPTY,
    }
    for b in bad:
        out = codec.decode_value(b.value, "CallEvent")
        assert out.records == [] and [r.reason for r in out.rejections] == [b.reason]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate.generate_calls(1, -1, START)
    with pytest.raises(ValueError):
        generate.generate_calls(1, 10, START, 0)
