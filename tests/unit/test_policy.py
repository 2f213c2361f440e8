"""The policy file: defaults, full validation with the key and line named, unknown keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.policy import DEFAULT_POLICY, PolicyError
from pipeline.policy_check import key_lines, load_policy, parse_text

FULL = """\
# callpipe policy
[retention.vault]
days = 60

[retention.analytics]
days = 365

[retention.aggregates]
days = 3650

[retention.recording]
days = 14
[retention.transcript]
days = 21
[retention.outbox]
days = 7

[aggregates]
k = 10

[aggregates.noise]
enabled = true
epsilon = 0.5

[consent.defaults]
recording = false
transcription = true
analytics = false

[secrets]
attribute_names = [
  "password",
  "PIN",
]

[pseudonymization]
key_file = "/etc/callpipe/key"
key_version = "v2"
"""


def test_a_full_policy_is_read() -> None:
    policy = parse_text(FULL, "p.toml")
    r = policy.retention
    assert (r.vault_days, r.analytics_days, r.aggregates_days, r.recording_days, r.transcript_days) == (
        60,
        365,
        3650,
        14,
        21,
    )
    assert r.outbox_days == 7
    assert policy.k == 10
    assert (policy.noise.enabled, policy.noise.epsilon) == (True, 0.5)
    assert (policy.consent.recording, policy.consent.transcription, policy.consent.analytics) == (
        False,
        True,
        False,
    )
    assert policy.secret_names == ("password", "pin")
    assert (policy.key.file, policy.key.env, policy.key.version) == ("/etc/callpipe/key", None, "v2")
    assert policy.source == "p.toml"


def test_an_empty_policy_keeps_every_default() -> None:
    policy = parse_text("", "empty.toml")
    assert policy.retention == DEFAULT_POLICY.retention
    assert policy.noise == DEFAULT_POLICY.noise and policy.noise.enabled
    assert (policy.k, policy.consent, policy.secret_names, policy.key) == (
        DEFAULT_POLICY.k,
        DEFAULT_POLICY.consent,
        DEFAULT_POLICY.secret_names,
        DEFAULT_POLICY.key,
    )


def test_dotted_and_inline_keys_are_accepted() -> None:
    text = "retention.vault.days = 30\nconsent = { defaults = { recording = true } }\n"
    policy = parse_text(text, "p.toml")
    assert policy.retention.vault_days == 30 and policy.consent.recording is True
    off = parse_text("aggregates = { k = 7, noise = { enabled = false } }\n", "p.toml")
    assert (off.k, off.noise.enabled) == (7, False)


def test_a_consent_withdrawal_has_a_deadline_of_its_own() -> None:
    policy = parse_text("[requests.withdraw]\ndays = 14\n", "p.toml")
    assert policy.requests.days_for("withdraw") == 14 and policy.requests.days_for("erase") == 30


BAD = [
    # (text, expected message: file:line: key: what)
    (
        "[retention.vault]\ndays = '90'\n",
        "p.toml:2: retention.vault.days: must be an integer from 1 to 36500 (got string)",
    ),
    (
        "[retention.vault]\ndays = 0\n",
        "p.toml:2: retention.vault.days: must be an integer from 1 to 36500 (got 0)",
    ),
    (
        "[retention.vault]\ndays = 9.5\n",
        "p.toml:2: retention.vault.days: must be an integer from 1 to 36500 (got float)",
    ),
    (
        "[retention.vault]\ndays = true\n",
        "p.toml:2: retention.vault.days: must be an integer from 1 to 36500 (got boolean)",
    ),
    (
        "\n\n[retention.vault]\ndayz = 90\n",
        "p.toml:4: retention.vault.dayz: unknown key; did you mean 'days'?",
    ),
    (
        "[retention.archive]\ndays = 9\n",
        "p.toml:1: retention.archive: unknown key"
        " (known: aggregates, analytics, outbox, recording, transcript, vault)",
    ),
    (
        "[aggregates]\nk = 1\n",
        "p.toml:2: aggregates.k: must be an integer from 2 to 10000 (got 1; k = 1 publishes single subjects)",
    ),
    (
        "[aggregates]\nk = 5\n\n[aggregates.noise]\nepsilon = 0\n",
        "p.toml:5: aggregates.noise.epsilon: must be a number from 0.01 to 10"
        " (got 0; to publish exact values, set enabled = false)",
    ),
    (
        "[aggregates.noise]\nepsilon = '1'\n",
        "p.toml:2: aggregates.noise.epsilon: must be a number from 0.01 to 10 (got string)",
    ),
    (
        "[aggregates.noise]\nenabled = 'yes'\n",
        "p.toml:2: aggregates.noise.enabled: must be true or false (got string)",
    ),
    (
        "[aggregates.noise]\nepsilom = 1.0\n",
        "p.toml:2: aggregates.noise.epsilom: unknown key; did you mean 'epsilon'?",
    ),
    (
        "[consent.defaults]\nrecording = 'no'\n",
        "p.toml:2: consent.defaults.recording: must be true or false (got string)",
    ),
    (
        "[secrets]\nattribute_names = []\n",
        "p.toml:2: secrets.attribute_names: must name at least one attribute"
        " (an empty list would let credentials through)",
    ),
    (
        "[secrets]\nattribute_names = ['pin', 3]\n",
        "p.toml:2: secrets.attribute_names: item 2 must be a string (got integer)",
    ),
    (
        "[pseudonymization]\nkey_env = 'MY KEY'\n",
        "p.toml:2: pseudonymization.key_env: must be the name of an environment variable"
        " (letters, digits, _)",
    ),
    (
        "[pseudonymization]\nkey_file = 'k'\nkey_env = 'K'\n",
        "p.toml:3: pseudonymization.key_env: give key_file or key_env, not both",
    ),
    (
        "[pseudonymization]\nkey_version = ''\n",
        'p.toml:2: pseudonymization.key_version: must be a short version label such as "v1"'
        " (letters, digits, . _ -)",
    ),
    (
        "[retention.outbox]\ndays = 0\n",
        "p.toml:2: retention.outbox.days: must be an integer from 1 to 36500 (got 0)",
    ),
    (
        "[retention.outbox]\ndays = '30'\n",
        "p.toml:2: retention.outbox.days: must be an integer from 1 to 36500 (got string)",
    ),
    (
        "[retention.outbox]\ndays = 36501\n",
        "p.toml:2: retention.outbox.days: must be an integer from 1 to 36500 (got 36501)",
    ),
    (
        "[retention.outbox]\nday = 30\n",
        "p.toml:2: retention.outbox.day: unknown key; did you mean 'days'?",
    ),
    ("retention = 5\n", "p.toml:1: retention: must be a table (got integer)"),
    (
        "[retention]\nvault = { days = -1 }\n",
        "p.toml:2: retention.vault.days: must be an integer from 1 to 36500 (got -1)",
    ),
    ("[retentoin.vault]\ndays = 3\n", "p.toml:1: retentoin: unknown key; did you mean 'retention'?"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_values_name_the_key_and_line(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_text(text, "p.toml")
    assert str(exc.value) == message


def test_every_problem_is_reported_in_file_order() -> None:
    text = "[aggregates]\nk = 0\n[retention.vault]\ndays = 'x'\nextra = 1\n"
    with pytest.raises(PolicyError) as exc:
        parse_text(text, "p.toml")
    assert [line.split(":")[1] for line in str(exc.value).splitlines()] == ["2", "4", "5"]


def test_broken_toml_says_where() -> None:
    with pytest.raises(PolicyError) as exc:
        parse_text("[retention.vault\ndays = 1\n", "p.toml")
    assert str(exc.value).startswith("p.toml: not valid TOML:") and "line 1" in str(exc.value)


def test_key_lines_maps_tables_dotted_and_inline_keys() -> None:
    lines = key_lines("[a]\nb.c = 1\nd = { e = 2, f = 3 }\n[[g]]\nh = 1\n")
    assert lines[("a",)] == 1 and lines[("a", "b", "c")] == 2 and lines[("a", "d", "f")] == 3
    assert lines[("g", "h")] == 5


def test_load_policy_reads_a_file_and_reports_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[aggregates]\nk = 7\n")
    assert load_policy(path).k == 7
    assert load_policy(None) is DEFAULT_POLICY
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.toml")
