"""Validation of the policy TOML, with errors that name the key and its line."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pipeline.policy import ConsentDefaults, KeySource, Policy, PolicyError, Retention


def parse_policy(path: Path) -> Policy:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy file ({exc.strerror})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from None
    ret = doc.get("retention", {})
    vault = ret.get("vault", {})
    analytics = ret.get("analytics", {})
    retention = Retention(
        vault_days=vault.get("days", 90),
        analytics_days=analytics.get("days", 400),
        aggregates_days=ret.get("aggregates", {}).get("days"),
        recording_days=ret.get("recording", {}).get("days", 30),
        transcript_days=ret.get("transcript", {}).get("days", 30),
    )
    consent = ConsentDefaults(**doc.get("consent", {}).get("defaults", {}))
    key = doc.get("pseudonymization", {})
    return Policy(
        retention=retention,
        k=doc.get("aggregates", {}).get("k", 5),
        consent=consent,
        secret_names=tuple(doc.get("secrets", {}).get("attribute_names", Policy().secret_names)),
        key=KeySource(file=key.get("key_file"), env=key.get("key_env"), version=key.get("key_version", "v1")),
        source=str(path),
    )
