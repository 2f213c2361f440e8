"""Dead letters sealed for the operator: envelope encryption of what calls.dlq holds.

A dead letter is the original bytes of a rejected message, phone numbers and transcripts
included. Anyone who may read calls.dlq must not read those; the operator who repairs messages
must. So the value of a dead letter is sealed to the operator key (docs/ARCHITECTURE.md "Faults"):

    operator key    an X25519 key pair, versioned. The private half (`CALLPIPE_DLQ_KEY_FILE`,
                    mode 0600) is the operator's, held apart from the pseudonymization key; the
                    worker holds only the public half (`CALLPIPE_DLQ_PUBLIC_KEY`) and cannot read
                    what it sealed. `callpipe dlq keygen` creates it and, run again, adds a new
                    version (rotation: new dead letters use the newest, older ones still open).
    data key        a fresh 256-bit AES-GCM key per batch of dead letters (at most `ROTATE_EVERY`
                    messages or `ROTATE_S` seconds), wrapped for the operator: an ephemeral X25519
                    exchange with the operator's public key, HKDF-SHA256, AES-GCM. The wrapped key
                    travels in every dead letter's `callpipe.dek` header.
    value           nonce || AES-GCM(data key, original bytes), its associated data binding it
                    to the source topic, partition, offset, event index and key version: a value
                    moved to another dead letter's headers does not open.
    message key     the original Kafka key (an account id) sealed the same way, in
                    `callpipe.source.key`; the dead letter's own key is empty.

What an operator needs to triage stays in plaintext headers, none of it personal data: the
reason, stage, source coordinates, the format, size and SHA-256 of the original bytes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SCHEME = "x25519-hkdf-aesgcm/1"
ROTATE_EVERY = 1024  # dead letters per data key
ROTATE_S = 60.0  # ...or seconds
NONCE = 12
_INFO = b"callpipe dlq data key/1"


class SealError(ValueError):
    """A key that cannot be used or a dead letter that does not open; never holds a secret."""


# ---------------------------------------------------------------- key files


def _write_new(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _read_lines(path: Path, *, secret: bool) -> list[tuple[str, bytes]]:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except FileNotFoundError:
        raise SealError(f"{path}: no operator key (create one with `callpipe dlq keygen`)") from None
    except OSError as exc:
        raise SealError(f"{path}: cannot read operator key file ({exc.strerror})") from None
    if secret and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SealError(f"{path}: operator key file must not be readable by group or others (chmod 600)")
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            version, hexed = line.split()
            raw = bytes.fromhex(hexed)
        except ValueError:
            raise SealError(f"{path}:{number}: expected `<version> <hex key>`") from None
        if len(raw) != 32:
            raise SealError(f"{path}:{number}: an operator key is 32 bytes")
        out.append((version, raw))
    if not out:
        raise SealError(f"{path}: holds no operator key")
    return out


@dataclass(frozen=True)
class OperatorPublicKey:
    """What a worker seals with: the newest version of the operator's public key."""

    version: str
    public: X25519PublicKey

    @classmethod
    def load(cls, path: Path) -> OperatorPublicKey:
        version, raw = _read_lines(path, secret=False)[-1]
        return cls(version, X25519PublicKey.from_public_bytes(raw))


@dataclass(frozen=True)
class OperatorKeys:
    """What an operator opens with: every version of the private key."""

    private: Mapping[str, X25519PrivateKey] = field(repr=False)

    def __repr__(self) -> str:
        return f"OperatorKeys(versions={sorted(self.private)!r}, private=***)"

    @classmethod
    def load(cls, path: Path) -> OperatorKeys:
        return cls({v: X25519PrivateKey.from_private_bytes(raw) for v, raw in _read_lines(path, secret=True)})


def keygen(private_path: Path, public_path: Path) -> str:
    """Create the operator key, or add a new version to it (rotation); returns the new version.
    Older versions stay in the private file so older dead letters still open."""
    lines: list[tuple[str, bytes]] = []
    if private_path.exists():
        lines = _read_lines(private_path, secret=True)
    numbers = [int(v) for v, _ in lines if v.isdigit()]
    version = str(max(numbers, default=0) + 1)
    key = X25519PrivateKey.generate()
    lines.append((version, key.private_bytes_raw()))
    header = "# callpipe dead-letter operator key: <version> <hex>; the last line is the newest\n"
    _write_new(private_path, header + "".join(f"{v} {raw.hex()}\n" for v, raw in lines))
    publics = [(v, X25519PrivateKey.from_private_bytes(raw).public_key()) for v, raw in lines]
    _write_new(
        public_path,
        header.replace("key:", "public key:")
        + "".join(f"{v} {p.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()}\n" for v, p in publics),
    )
    return version


def ensure_keys(private_path: Path, public_path: Path) -> str | None:
    """A development set-up's operator key (`callpipe kafka up`, the demo): created when there is
    none, left alone otherwise. Returns the version created, or None."""
    if public_path.exists():
        return None
    return keygen(private_path, public_path)


# ---------------------------------------------------------------- sealing


def _kek(shared: bytes, ephemeral: bytes, public: bytes) -> bytes:
    return HKDF(SHA256(), 32, salt=None, info=_INFO + ephemeral + public).derive(shared)


def associated(topic: str, partition: int, offset: int, index: int | None, version: str) -> bytes:
    """What a sealed value is bound to: its source coordinates and the key version."""
    idx = "" if index is None else str(index)
    return f"callpipe.dlq/1\0{topic}\0{partition}\0{offset}\0{idx}\0{version}".encode()


def sniff_format(raw: bytes) -> str:
    """The wire format of the original bytes, as far as its first bytes tell (for triage)."""
    if raw.startswith(b"Obj\x01"):
        return "avro-container"
    if len(raw) >= 5 and raw[0] == 0:
        return "confluent-avro"
    head = raw.lstrip()[:1]
    if head in (b"{", b"["):
        return "json"
    return "binary" if raw else "empty"


class Sealer:
    """Seals dead letters for the operator; one per worker process."""

    def __init__(
        self,
        key: OperatorPublicKey,
        *,
        rotate_every: int = ROTATE_EVERY,
        rotate_s: float = ROTATE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self._public = key.public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.rotate_every = rotate_every
        self.rotate_s = rotate_s
        self._clock = clock
        self._aead: AESGCM | None = None
        self._wrapped = b""
        self._uses = 0
        self._born = 0.0
        self.data_keys = 0  # data keys made so far

    def _data_key(self) -> AESGCM:
        now = self._clock()
        if self._aead is None or self._uses >= self.rotate_every or now - self._born >= self.rotate_s:
            data_key = AESGCM.generate_key(256)
            ephemeral = X25519PrivateKey.generate()
            eph_public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            kek = _kek(ephemeral.exchange(self.key.public), eph_public, self._public)
            nonce = secrets.token_bytes(NONCE)
            wrapped = AESGCM(kek).encrypt(nonce, data_key, self.key.version.encode())
            self._aead, self._wrapped = AESGCM(data_key), eph_public + nonce + wrapped
            self._uses, self._born = 0, now
            self.data_keys += 1
        self._uses += 1
        return self._aead

    def seal(
        self,
        raw: bytes,
        key: bytes | None,
        *,
        topic: str,
        partition: int,
        offset: int,
        index: int | None,
    ) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The sealed value and the headers that open it (with the plaintext triage headers)."""
        headers: list[tuple[str, bytes]] = []
        if raw:  # no bytes (the stub of one kept in the lake carries its own size and digest)
            headers += [
                ("callpipe.format", sniff_format(raw).encode()),
                ("callpipe.size", str(len(raw)).encode()),
                ("callpipe.sha256", hashlib.sha256(raw).hexdigest().encode()),
            ]
        if not raw and not key:
            return b"", headers
        aead = self._data_key()
        aad = associated(topic, partition, offset, index, self.key.version)
        nonce = secrets.token_bytes(NONCE)
        value = nonce + aead.encrypt(nonce, raw, aad) if raw else b""  # a stub stays empty
        headers += [
            ("callpipe.enc", SCHEME.encode()),
            ("callpipe.key.version", self.key.version.encode()),
            ("callpipe.dek", self._wrapped),
        ]
        if key:
            knonce = secrets.token_bytes(NONCE)
            headers.append(("callpipe.source.key", knonce + aead.encrypt(knonce, key, aad + b"\0key")))
        return value, headers


@dataclass(frozen=True)
class Opened:
    raw: bytes
    key: bytes | None


def unseal(keys: OperatorKeys, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Opened:
    """The original bytes and key of a sealed dead letter (one without `callpipe.enc` was never
    sealed: it had no bytes, like the stub of one kept in the lake)."""
    h = {k: v for k, v in headers}
    if "callpipe.enc" not in h:
        return Opened(value, None)
    if h["callpipe.enc"].decode() != SCHEME:
        raise SealError("dead letter sealed with an unknown scheme")
    version = h["callpipe.key.version"].decode()
    private = keys.private.get(version)
    if private is None:
        raise SealError(f"dead letter sealed with operator key version {version}, which the key file lacks")
    dek = h["callpipe.dek"]
    eph_public, nonce, wrapped = dek[:32], dek[32 : 32 + NONCE], dek[32 + NONCE :]
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        kek = _kek(private.exchange(X25519PublicKey.from_public_bytes(eph_public)), eph_public, public)
        aead = AESGCM(AESGCM(kek).decrypt(nonce, wrapped, version.encode()))
        index = h.get("callpipe.source.index")
        aad = associated(
            h["callpipe.source.topic"].decode(),
            int(h["callpipe.source.partition"]),
            int(h["callpipe.source.offset"]),
            int(index) if index is not None else None,
            version,
        )
        raw = aead.decrypt(value[:NONCE], value[NONCE:], aad) if value else b""
        sealed_key = h.get("callpipe.source.key")
        key = aead.decrypt(sealed_key[:NONCE], sealed_key[NONCE:], aad + b"\0key") if sealed_key else None
    except (InvalidTag, ValueError, KeyError):
        raise SealError(f"dead letter does not open with operator key version {version}") from None
    return Opened(raw, key)
