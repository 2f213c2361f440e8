"""The policy file (TOML): retention per zone and category, k and noise for aggregates, consent defaults,
secret attribute names, and where the pseudonymization key comes from.

Validated at start-up; a bad policy is one clear error naming the key and line, before any data
is touched. `DEFAULT_POLICY` is what applies when no file is given (docs/ARCHITECTURE.md "Policy").
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PolicyError(ValueError):
    """A policy file that cannot be used. The message names the file, key and line."""


@dataclass(frozen=True)
class Retention:
    """Days to keep, per zone and data category, and for what waits in the outbox (access exports
    to be handed over). None means kept until erased."""

    vault_days: int = 90
    analytics_days: int = 400
    aggregates_days: int | None = None
    recording_days: int = 30  # recording_uri, in every zone that holds it
    transcript_days: int = 30  # transcript (vault) and redacted transcript (analytics)
    outbox_days: int = 30  # <lake>/_outbox/ but breach lists; access exports from their fulfilment


@dataclass(frozen=True)
class ConsentDefaults:
    """What applies to a purpose when an account has no consent history for it."""

    recording: bool = False
    transcription: bool = False
    analytics: bool = True  # legitimate interest; stops when the account objects


DEFAULT_SECRET_NAMES = (
    "password",
    "passwd",
    "pwd",
    "pin",
    "secret",
    "token",
    "api_key",
    "apikey",
    "auth",
    "credential",
    "private_key",
    "session",
    "otp",
)


@dataclass(frozen=True)
class KeySource:
    """Where the pseudonymization key comes from: a key file (mode 0600) or an environment variable."""

    file: str | None = None
    env: str | None = None
    version: str = "v1"


@dataclass(frozen=True)
class RequestDeadlines:
    """Days a data-subject request may stay open, counted from when it was made (30 by default,
    overridable per kind), and how many days before its deadline an open request is flagged."""

    days: int = 30
    warn_days: int = 7
    per_kind: tuple[tuple[str, int], ...] = ()

    def days_for(self, kind: str) -> int:
        return dict(self.per_kind).get(kind, self.days)


@dataclass(frozen=True)
class AggregateNoise:
    """Calibrated noise on the aggregates' published values (jobs/anonymize_noise.py), so that two
    builds cannot be subtracted to show one subject's calls. On by default. `epsilon` is the
    privacy loss of one published row per build (its three values share it). The default, 1,
    keeps what one row can add to anyone's odds on a subject's part in it within a factor of
    e (2.7), at error bars (95%) of about 18 calls on an hourly row and 90 on a daily one
    (README "Noise on the aggregates")."""

    enabled: bool = True
    epsilon: float = 1.0


@dataclass(frozen=True)
class Policy:
    retention: Retention = field(default_factory=Retention)
    k: int = 5
    noise: AggregateNoise = field(default_factory=AggregateNoise)
    consent: ConsentDefaults = field(default_factory=ConsentDefaults)
    secret_names: tuple[str, ...] = DEFAULT_SECRET_NAMES
    key: KeySource = field(default_factory=KeySource)
    requests: RequestDeadlines = field(default_factory=RequestDeadlines)
    source: str = "<defaults>"


DEFAULT_POLICY = Policy()
