"""The shipped example policy is valid and states the defaults of docs/ARCHITECTURE.md "Policy"."""

from __future__ import annotations

from pipeline.policy import DEFAULT_POLICY
from pipeline.policy_check import load_policy
from tests.support.streamkit import ROOT


def test_example_policy_is_valid_and_matches_the_defaults() -> None:
    policy = load_policy(ROOT / "infra" / "policy.example.toml")
    assert policy.retention == DEFAULT_POLICY.retention
    assert policy.k == DEFAULT_POLICY.k
    assert policy.noise == DEFAULT_POLICY.noise
    assert (policy.noise.enabled, policy.noise.epsilon) == (True, 1.0)
    assert policy.consent == DEFAULT_POLICY.consent
    assert policy.secret_names == DEFAULT_POLICY.secret_names
    assert policy.key.file == "/etc/callpipe/pseudonymization.key"
