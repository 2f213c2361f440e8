"""Why a record was rejected or dropped. Reason codes are what dead letters, counters and logs carry.

They never carry field values: a reason says what was wrong, not what the input said.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Rejections: the input goes to calls.dlq with its original bytes."""

    # decoding (stage "decode")
    MALFORMED = "malformed"  # not parseable at all as the declared format (truncated Avro, broken JSON)
    UNKNOWN_SCHEMA_ID = "unknown_schema_id"  # Confluent wire format with an id we do not know
    WRONG_TYPE = "wrong_type"  # a field has the wrong type (string where a long belongs, ...)
    MISSING_FIELD = "missing_field"  # a required field is absent or null
    UNKNOWN_ENUM = "unknown_enum"  # kind/direction/status/purpose outside the schema's symbols
    EMPTY = "empty"  # an empty message or a batch with no events
    TOO_LARGE = "too_large"  # a message or event over the configured size limit
    # validation (stage "validate")
    BAD_TIME = "bad_time"  # timestamps out of order, in the far future or before the epoch of service
    BAD_DURATION = "bad_duration"  # negative or implausibly long duration
    BAD_ID = "bad_id"  # empty or oversized identifiers
    DUPLICATE = "duplicate"  # same event_id twice in one batch
    # anything unexpected (stage names the place)
    INTERNAL = "internal_error"


class Drop(StrEnum):
    """Normal, counted outcomes that store nothing (or less) for an event; not dead letters."""

    ERASED = "erased"  # the account was erased before the event's time
    RECORDING_NO_CONSENT = "recording_no_consent"  # recording_uri removed
    TRANSCRIPTION_NO_CONSENT = "transcription_no_consent"  # transcript removed
    ANALYTICS_OBJECTED = "analytics_objected"  # not written to analytics: the account objected
    RESTRICTED = "restricted"  # vault only: processing restricted
    SECRET_ATTRIBUTE = "secret_attribute"  # a secret-named attribute was stripped
    # past the policy's retention limits when it lands (pipeline/expiry.py)
    EXPIRED = "expired"  # nothing stored: past the limit of every zone it would go to
    VAULT_EXPIRED = "vault_expired"  # analytics only: its vault row is past the vault's limit
    ANALYTICS_EXPIRED = "analytics_expired"  # vault only: its analytics row is past analytics' limit
    RECORDING_EXPIRED = "recording_expired"  # recording_uri removed: past the recordings' limit
    TRANSCRIPT_EXPIRED = "transcript_expired"  # transcript removed: past the transcripts' limit


# The outcomes of retention's limits applied at landing (pipeline/expiry.py), for their readers.
PAST_RETENTION = frozenset(
    {
        Drop.EXPIRED,
        Drop.VAULT_EXPIRED,
        Drop.ANALYTICS_EXPIRED,
        Drop.RECORDING_EXPIRED,
        Drop.TRANSCRIPT_EXPIRED,
    }
)


class Stage(StrEnum):
    DECODE = "decode"
    VALIDATE = "validate"
    CONSENT = "consent"
    ROUTE = "route"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A rejected message (index None) or one event of a batch message (index i): the one type of
    every stage that rejects (decode, validate, the guards), and what goes to calls.dlq.

    `partition`/`offset` are the source message's (-1 where there is none, e.g. a file); `raw` is
    the original bytes (for a bad JSON line that line alone; for an event rejected after decoding,
    the event as JSON), with secret-named attributes masked where the format allows it. `field`
    is the schema field the rejection is about (a dotted name from the schema, never a value),
    where the rejecting code knows it; it travels as the `callpipe.field` header."""

    reason: Reason
    stage: Stage
    partition: int
    offset: int
    index: int | None
    raw: bytes
    field: str | None = None

    def headers(self, topic: str) -> list[tuple[str, bytes]]:
        """The dead letter's headers: why, where, and from which source message."""
        out = [
            ("callpipe.reason", self.reason.value.encode()),
            ("callpipe.stage", self.stage.value.encode()),
            ("callpipe.source.topic", topic.encode()),
            ("callpipe.source.partition", str(self.partition).encode()),
            ("callpipe.source.offset", str(self.offset).encode()),
        ]
        if self.index is not None:
            out.append(("callpipe.source.index", str(self.index).encode()))
        if self.field is not None:
            out.append(("callpipe.field", self.field.encode()))
        return out


@dataclass(frozen=True, slots=True)
class Withheld(Rejection):
    """A dead letter whose bytes are not kept: they may hold a credential that could not be
    taken out of them (`pipeline.secrets_raw`). `raw` is empty; the size and SHA-256 of the
    original bytes say what it was, in calls.dlq's headers and in `_rejects/`. It cannot be
    replayed: the carrier must send the message again."""

    size: int = 0
    sha256: str = ""

    def headers(self, topic: str) -> list[tuple[str, bytes]]:
        return [
            *Rejection.headers(self, topic),
            ("callpipe.withheld", WITHHELD_SECRETS.encode()),
            ("callpipe.size", str(self.size).encode()),
            ("callpipe.sha256", self.sha256.encode()),
        ]


WITHHELD_SECRETS = "secrets"  # why a dead letter's bytes were withheld
