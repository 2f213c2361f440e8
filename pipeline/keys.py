"""The pseudonymization key and the keyed tokens made with it.

A token is HMAC-SHA256(secret, domain NUL value), hex, truncated to 128 bits. The same input
under the same key version gives the same token, so analysts can join; the domain keeps an
account id and a phone number that happen to be equal from sharing a token. The secret never
leaves this object: its repr prints ***.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

TOKEN_HEX = 32


class KeyError_(ValueError):
    """The key cannot be loaded; the message names the file, never the key."""


class Domain(StrEnum):
    """The pseudonym token domains: one home for their names (a token is an HMAC of domain and
    value, so a misspelt domain is a different, silently wrong token)."""

    ACCOUNT = "account"
    ORG = "org"
    PHONE = "phone"
    DEVICE = "device"
    CELL = "cell"
    QUERY = "query"  # the text of a vault query, as the audit trail names it (`jobs.audit.query_ref`)


@dataclass(frozen=True)
class PseudonymKey:
    version: str
    secret: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"PseudonymKey(version={self.version!r}, secret=***)"

    def token(self, domain: Domain, value: str) -> str:
        """The keyed token of `value` in `domain`. Only a `Domain` is accepted: the stream, erase,
        export, rectify and the audit trail must derive a subject's token the same way, or erase
        would look for a token the stream never wrote and its verification, using the same wrong
        token, would still pass."""
        if not isinstance(domain, Domain):
            raise TypeError("a token domain must be a pipeline.keys.Domain")
        mac = hmac.new(self.secret, domain_prefix(domain) + value.encode(), hashlib.sha256)
        return mac.hexdigest()[:TOKEN_HEX]

    def account_token(self, account_id: str) -> str:
        """The token of a subject: analytics rows, buckets, erase, export, audit all use this."""
        return self.token(Domain.ACCOUNT, account_id)

    def derive(self, purpose: str) -> bytes:
        """A secret for another use of this key (the aggregates' noise: jobs/noise.py), so that no
        second key has to be stored, rotated and guarded: HMAC-SHA256(secret, NUL purpose). It can
        never equal a token's HMAC, whose input starts with a domain name (never NUL), and knowing
        it tells nothing about the key or its tokens."""
        if not purpose:
            raise ValueError("a derived secret needs a purpose")
        return hmac.new(self.secret, b"\x00" + purpose.encode(), hashlib.sha256).digest()


def domain_prefix(domain: Domain) -> bytes:
    """What a token's HMAC reads before the value: the domain's name and a NUL (every form of
    the token, row, column and native, starts from it)."""
    return domain.value.encode() + b"\x00"


def create_key_file(path: Path) -> None:
    """Write a new random 256-bit key, hex, with mode 0600 (the file is never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")


def load_key(path: Path, version: str) -> PseudonymKey:
    """Load a hex key file. Refuses files readable by group or others."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise KeyError_(f"{path}: cannot read key file ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyError_(f"{path}: key file must not be readable by group or others (chmod 600)")
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise KeyError_(f"{path}: key file must hold hex") from None
    if len(secret) < 16:
        raise KeyError_(f"{path}: key must be at least 128 bits")
    return PseudonymKey(version, secret)


def key_from_hex(text: str, version: str, origin: str) -> PseudonymKey:
    """A key given as hex in a setting (origin names the setting in errors)."""
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        raise KeyError_(f"{origin}: key must be hex") from None
    if len(secret) < 16:
        raise KeyError_(f"{origin}: key must be at least 128 bits")
    return PseudonymKey(version, secret)
