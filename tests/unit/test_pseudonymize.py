"""Analytics rows: tokens, generalized values and redacted text, driven by the annotations."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from pipeline.keys import Domain, PseudonymKey
from pipeline.pseudonymize import RULES, cell_area, ip_prefix, phone_facts, plan, pseudonymize
from schemas.zones import ANALYTICS_COLUMNS, analytics_schema

KEY = PseudonymKey("v7", b"s" * 32)
LINEAGE = {"source_partition": 3, "source_offset": 41, "source_index": 2}


def record(**overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_id": "ev-1",
        "account_id": "acct-1",
        "org_id": "org-1",
        "carrier_id": "gb-carrier",
        "kind": "voice",
        "direction": "inbound",
        "caller": "+447911123456",
        "callee": "+442079460958",
        "started_at": 1_710_000_000_000,
        "answered_at": 1_710_000_001_000,
        "ended_at": 1_710_000_061_000,
        "duration_s": 60,
        "status": "answered",
        "cell_id": "234-15-1234-56789",
        "caller_ip": "203.0.113.45",
        "device": {"device_id": "dev-1", "device_type": "phone", "os": "iOS 17", "app_version": "2.4.1"},
        "recording_uri": "s3://rec/1.wav",
        "transcript": "call me on 020 7946 0958 or jane@example.com about order 4821937 at 10:30",
        "attributes": {"note": "from 198.51.100.7", "plan": "gold"},
    }
    out.update(overrides)
    return out


def test_rules_cover_the_schema_contract() -> None:
    assert set(RULES) == set(ANALYTICS_COLUMNS)
    columns = [c for step in plan() for c in step.columns]
    assert [*columns, "key_version", "source_partition", "source_offset", "source_index"] == list(
        analytics_schema().names
    )


def test_row_has_exactly_the_analytics_columns() -> None:
    row = pseudonymize(record(), KEY, ("GB",), LINEAGE)
    assert list(row) == list(analytics_schema().names)


def test_row_values() -> None:
    row = pseudonymize(record(), KEY, ("GB",), LINEAGE)
    assert row["account_token"] == KEY.token(Domain.ACCOUNT, "acct-1")
    assert row["org_token"] == KEY.token(Domain.ORG, "org-1")
    assert row["caller_token"] == KEY.token(Domain.PHONE, "+447911123456")
    assert (row["caller_country"], row["caller_type"]) == (44, "mobile")
    assert (row["callee_country"], row["callee_type"]) == (44, "fixed_line")
    assert row["device_token"] == KEY.token(Domain.DEVICE, "dev-1")
    assert (row["device_type"], row["device_os"], row["device_app_version"]) == ("phone", "iOS 17", "2.4.1")
    assert row["cell_area"] == "234-15-1234"
    assert row["caller_ip_prefix"] == "203.0.113.0/24"
    assert row["has_recording"] is True
    assert row["transcript"] == "call me on [PHONE] or [EMAIL] about order 4821937 at 10:30"
    assert row["attributes"] == {"note": "from [IP]", "plan": "gold"}
    assert row["key_version"] == "v7"
    assert {k: row[k] for k in LINEAGE} == LINEAGE
    for name in ("event_id", "carrier_id", "kind", "direction", "started_at", "duration_s", "status"):
        assert row[name] == record()[name]


def test_no_raw_identifier_reaches_the_row() -> None:
    source = record()
    row = pseudonymize(source, KEY, ("GB",), LINEAGE)
    text = repr(row)
    for raw in (
        "acct-1",
        "org-1",
        "+447911123456",
        "+442079460958",
        "203.0.113.45",
        "dev-1",
        "s3://rec/1.wav",
    ):
        assert raw not in text, raw
    assert "56789" not in text  # the cell itself


def test_nulls_stay_null() -> None:
    row = pseudonymize(
        record(
            cell_id=None, caller_ip=None, device=None, recording_uri=None, transcript=None, attributes=None
        ),
        KEY,
        (),
        LINEAGE,
    )
    for name in ("cell_area", "caller_ip_prefix", "device_token", "device_type", "device_os", "transcript"):
        assert row[name] is None, name
    assert row["has_recording"] is False
    assert row["attributes"] is None


def test_tokens_are_keyed_and_domain_separated() -> None:
    same = record(account_id="x", org_id="x")
    row = pseudonymize(same, KEY, (), LINEAGE)
    assert row["account_token"] != row["org_token"]
    other = pseudonymize(same, PseudonymKey("v8", b"t" * 32), (), LINEAGE)
    assert other["account_token"] != row["account_token"]
    assert pseudonymize(same, KEY, (), LINEAGE)["account_token"] == row["account_token"]


@pytest.mark.parametrize(
    ("number", "facts"),
    [
        ("+447911123456", (44, "mobile")),
        ("+442079460958", (44, "fixed_line")),
        ("+14155552671", (1, "fixed_line_or_mobile")),
        ("+18005550199", (1, "toll_free")),
        ("+4930901820", (49, "fixed_line")),
        ("0207946 0958", (None, "unknown")),  # not normalized: nothing to say
        ("+999123", (None, "unknown")),
    ],
)
def test_phone_facts(number: str, facts: tuple[int | None, str]) -> None:
    assert phone_facts(number) == facts


@pytest.mark.parametrize(
    ("ip", "prefix"),
    [
        ("203.0.113.45", "203.0.113.0/24"),
        (" 10.1.2.3 ", "10.1.2.0/24"),
        ("2001:db8:85a3:1:2:3:4:5", "2001:db8:85a3::/48"),
        ("::ffff:198.51.100.7", "198.51.100.0/24"),
        ("not-an-ip", None),
        # IPv6 forms that carry an IPv4 address: that address's /24, as if it came over IPv4.
        # 6to4 (2002::/16): bits 16-47 are the IPv4, so its /48 would be the whole of it
        ("2002:c000:0204::1", "192.0.2.0/24"),
        ("2002:5db8:d822:7::42", "93.184.216.0/24"),
        # Teredo (2001::/32): the client's IPv4, obfuscated in the last 32 bits (the server's
        # is in bits 32-63)
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.0/24"),
        # NAT64's well-known prefix (64:ff9b::/96) and ISATAP (interface id 0:5efe or 200:5efe)
        # carry it in the last 32 bits: taken when it is a public address
        ("64:ff9b::5db8:d822", "93.184.216.0/24"),
        ("64:ff9b::c000:204", "64:ff9b::/48"),  # a documentation address: no public IPv4
        ("2001:db8:1:2:0:5efe:5db8:d822", "93.184.216.0/24"),
        ("2001:db8:1:2:200:5efe:5db8:d822", "93.184.216.0/24"),
        ("2001:db8:1:2:0:5efe:a00:1", "2001:db8:1::/48"),  # a private IPv4 inside the site
    ],
)
def test_ip_prefix(ip: str, prefix: str | None) -> None:
    assert ip_prefix(ip) == prefix


@pytest.mark.parametrize("ip", ["2002:c000:0204::1", "2002:5db8:d822::1", "2002:0a00:0001:ffff::"])
def test_no_6to4_prefix_holds_the_whole_ipv4_address(ip: str) -> None:
    prefix = ipaddress.ip_network(ip_prefix(ip) or "")
    embedded = ipaddress.IPv6Address(ip).sixtofour
    assert embedded is not None
    assert prefix.version == 4 and prefix.prefixlen == 24 and embedded in prefix


@pytest.mark.parametrize(
    ("cell", "area"),
    [
        ("234-15-1234-56789", "234-15-1234"),
        ("310-260-7F3A-1B2C", "310-260-7F3A"),
        ("weird cell 42", "cell:" + KEY.token(Domain.CELL, "weird cell 42")),
        ("234-15-1234", "cell:" + KEY.token(Domain.CELL, "234-15-1234")),
    ],
)
def test_cell_area(cell: str, area: str) -> None:
    assert cell_area(cell, KEY) == area


def test_a_token_domain_is_a_domain_never_a_loose_string() -> None:
    """One home for the domains (pipeline.keys.Domain): a misspelt domain would be a different,
    silently wrong token that erase could never find."""
    from pipeline.keys import Domain, PseudonymKey

    key = PseudonymKey("v1", b"d" * 32)
    with pytest.raises(TypeError):
        key.token("acount", "acct-1")  # type: ignore[arg-type]
    assert key.account_token("acct-1") == key.token(Domain.ACCOUNT, "acct-1")
    assert len({key.token(d, "same") for d in Domain}) == len(Domain)


def test_the_generated_pseudonymizer_gives_what_the_plan_says_step_by_step() -> None:
    """`pseudonymize` runs code written from the plan; `interpret` walks the plan itself."""
    from pipeline.carrier.generate import generate_traffic
    from pipeline.memo import Memo
    from pipeline.pseudonymize import interpret

    calls = generate_traffic(3, 300, 1_710_000_000_000).calls
    variants = [record(), record(caller=None, device=None, attributes=None, transcript=None), *calls]
    for rec in variants:
        regions = ("GB", "US")
        assert pseudonymize(rec, KEY, regions, LINEAGE) == interpret(rec, KEY, regions, LINEAGE, Memo())


def test_a_vault_rows_values_give_what_its_fields_give() -> None:
    """`row_pseudonymizer` unpacks a vault row (the zone's columns, in order) instead of
    looking each field up: the same row as `pseudonymize` of the same dict."""
    from pipeline.carrier.generate import generate_traffic
    from pipeline.memo import Memo
    from pipeline.pseudonymize import row_pseudonymizer
    from schemas.zones import vault_schema

    calls = generate_traffic(4, 300, 1_710_000_000_000).calls
    variants = [record(), record(caller=None, device=None, attributes=None, transcript=None), *calls]
    memo = Memo()
    for n, rec in enumerate(variants):
        row = {name: rec.get(name) for name in vault_schema().names[:-3]}
        row.update(source_partition=2, source_offset=n, source_index=1)
        assert list(row) == vault_schema().names
        want = pseudonymize(row, KEY, ("GB", "US"), row)
        assert row_pseudonymizer()(row, KEY, ("GB", "US"), memo) == want


@pytest.mark.parametrize(
    ("attributes", "regions", "analytics"),
    [
        # the review's reproduction: keys are free text too
        (
            {"callback:+14155550123": "yes", "bob@example.com": "vip", "note": "ring +14155550123"},
            (),
            {"callback:[PHONE]": "yes", "[EMAIL]": "vip", "note": "ring [PHONE]"},
        ),
        ({"from 198.51.100.7": "x", "plan": "gold"}, (), {"from [IP]": "x", "plan": "gold"}),
        # a national number in a key is read in the call's regions, as in a value
        ({"cb 07911 123456": "yes"}, ("GB",), {"cb [PHONE]": "yes"}),
        # two keys that redact to one text: both entries kept, in their order, the later one
        # numbered with the first free "#n"; a key already so written is not overwritten
        (
            {"a@example.com": "1", "b@example.org": "2", "plan": "gold", "c@example.net": "3"},
            (),
            {"[EMAIL]": "1", "[EMAIL]#2": "2", "plan": "gold", "[EMAIL]#3": "3"},
        ),
        (
            {"[EMAIL]": "literal", "[EMAIL]#2": "also", "bob@example.com": "vip"},
            (),
            {"[EMAIL]": "literal", "[EMAIL]#2": "also", "[EMAIL]#3": "vip"},
        ),
    ],
)
def test_attribute_keys_are_redacted_like_values(
    attributes: dict[str, str], regions: tuple[str, ...], analytics: dict[str, str]
) -> None:
    from pipeline.memo import Memo
    from pipeline.pseudonymize import interpret, row_pseudonymizer
    from schemas.zones import vault_schema

    rec = record(attributes=attributes)
    row = pseudonymize(rec, KEY, regions, LINEAGE)
    assert row["attributes"] == analytics
    assert list(row["attributes"].items()) == list(analytics.items())  # in the map's order
    assert interpret(rec, KEY, regions, LINEAGE, Memo()) == row
    vault = {name: rec.get(name) for name in vault_schema().names[:-3]} | LINEAGE
    memo = Memo()
    for _ in range(2):  # the second time from the memo
        assert row_pseudonymizer()(vault, KEY, regions, memo) == row
