"""The vault encrypted at rest: Parquet modular encryption (docs/ARCHITECTURE.md "Vault encryption").

Every vault file is written with `pyarrow.parquet.encryption`: an encrypted footer (schema, row
counts, statistics and lineage are unreadable without the footer key) and the personal columns
(every CallEvent field whose PII class is not `none`) encrypted with a separate column key. Each
file gets fresh data keys (AES-GCM); they are wrapped by key-encryption keys, which are wrapped by
the master keys of a KMS (pyarrow's double wrapping). A reader without the keys gets an error from
pyarrow and DuckDB alike (an encrypted file ends in `PARE`, not `PAR1`).

The KMS is an interface, `MasterKeys`: `wrap(key, master_key_id) -> str` and
`unwrap(wrapped, master_key_id) -> bytes`. callpipe ships `KeyFile`, a local KMS over a JSON file
of mode 0600 holding versioned master keys (`callpipe vault init|rotate`); a cloud KMS or
HashiCorp Vault's transit engine implements the same two calls (its `encrypt`/`decrypt` of a
named key) and is handed to `VaultCrypto` instead. The master keys are kept apart from the
pseudonymization key (another file; settings refuse the same path).

Rotation: a new key version wraps the keys of every file written after it; older files keep
naming the version that wrapped them, which the key file keeps, so they stay readable.
`callpipe vault rewrap` rewrites old files under the current version a few days at a time.

DuckDB cannot unwrap pyarrow's KMS key material, so readers decrypt through pyarrow: single files
with `read_table`/`read_metadata`, many files as a `pyarrow.dataset` (`dataset`) that DuckDB scans
lazily with projection and filter pushdown (`sinks.read`). Plaintext files (a lake written before
a key file was configured) stay readable through the same path. Which vault writer uses the keys
is set once per process (`configure`, called by the CLI from settings; tests call it too).

Encryption is the default: a process that configured nothing refuses to write a vault file
(`VaultKeyError`) rather than write it in plaintext; a plaintext vault is only ever written after an
explicit `configure(None)` (the CLI does so for CALLPIPE_VAULT_ENCRYPTION=off).
"""

from __future__ import annotations

import atexit
import base64
import binascii
import gc
import io
import os
import secrets
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import schemas
from schemas.zones import vault_schema

FOOTER_KEY = "vault-footer"  # master key of the footer (and of the columns not listed below)
COLUMN_KEY = "vault-columns"  # master key of the personal columns
MASTER_KEYS = (FOOTER_KEY, COLUMN_KEY)
KEY_FILE_FORMAT = "callpipe-vault-keys"
VERSION_KEY = b"callpipe.vault_key_version"  # footer metadata: the master key version a file uses
ENCRYPTED_MAGIC = b"PARE"
CACHE_LIFETIME = timedelta(minutes=10)  # writers: how long one key-encryption key wraps data keys
# Readers keep unwrapped key-encryption keys this long: a scan must never call the KMS (see `warm`).
READ_CACHE_LIFETIME = timedelta(hours=24)
CLOSE_TIMEOUT_S = 10.0  # how long `VaultCrypto.close` waits for Arrow's threads to let go of the keys


# What a missing key file's error says (the settings name the file; docs/ARCHITECTURE.md "Vault encryption")
MISSING_HINT = (
    "create it with `callpipe vault init` (`callpipe kafka up` does for a local set-up), point "
    "CALLPIPE_VAULT_KEY_FILE at it, or set CALLPIPE_VAULT_ENCRYPTION=off for a plaintext vault"
)


class VaultKeyError(RuntimeError):
    """The vault keys cannot be used: the message names the file and the key version, never a key."""


class MasterKeys(Protocol):
    """What a KMS offers callpipe. `wrap` returns a printable string (stored in the Parquet file)
    naming whatever the KMS needs to unwrap it later (e.g. the key version); `unwrap` raises
    `VaultKeyError` when it cannot."""

    def current_version(self) -> int: ...

    def wrap(self, key: bytes, master_key_id: str) -> str: ...

    def unwrap(self, wrapped: str, master_key_id: str) -> bytes: ...


def personal_columns() -> list[str]:
    """Top-level vault columns holding personal data: a CallEvent field of PII class other than
    `none`, or a record with such a field."""
    out: list[str] = []
    for ann in schemas.pii_fields("CallEvent"):
        top = ann.path.split(".", 1)[0]
        if ann.klass != "none" and top not in out:
            out.append(top)
    return out


@cache
def personal_leaves() -> tuple[str, ...]:
    """The Parquet leaf paths (`device.device_id`, `attributes.key_value.key`, ...) of the
    personal columns, as the column keys of pyarrow's EncryptionConfiguration name them."""
    buf = io.BytesIO()
    pq.write_table(vault_schema().empty_table(), buf)
    buf.seek(0)
    tops = set(personal_columns())
    return tuple(c.path for c in pq.ParquetFile(buf).schema if c.path.split(".", 1)[0] in tops)


# --- the local key-file KMS ------------------------------------------------------------------


def ensure_key_file(path: Path) -> bool:
    """A local set-up's key file (`callpipe kafka up`, the demo, benchmarks): created when there is
    none, left alone otherwise. Returns whether it was created."""
    try:
        create_key_file(path)
    except FileExistsError:
        return False
    return True


def create_key_file(path: Path) -> None:
    """A new key file (mode 0600) with version 1 of every master key; refuses to overwrite."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new folder: private, like the key
    doc = {"format": KEY_FILE_FORMAT, "current": 1, "versions": {"1": _new_version()}}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        out.flush()
        os.fsync(out.fileno())


def _new_version() -> dict[str, str]:
    return {name: base64.b64encode(secrets.token_bytes(32)).decode() for name in MASTER_KEYS}


class KeyFile:
    """Versioned master keys in a JSON file of mode 0600:
    `{"format": "callpipe-vault-keys", "current": 2, "versions": {"1": {"vault-footer": b64, ...}}}`.

    A wrapped key is `<version>:<base64 of nonce | AES-256-GCM ciphertext>`, authenticated with
    the master key id and version. The file is read again when it changes, so a running worker
    wraps with a version added by `rotate` in another process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._current = 0
        self._keys: dict[int, dict[str, bytes]] = {}
        self._load()

    def _load(self) -> None:
        try:
            st = self.path.stat()
            data = self.path.read_bytes()
        except OSError as exc:
            hint = f" ({MISSING_HINT})" if isinstance(exc, FileNotFoundError) else ""
            raise VaultKeyError(
                f"{self.path}: cannot read the vault key file ({exc.strerror}){hint}"
            ) from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise VaultKeyError(
                f"{self.path}: vault key file must not be readable by group or others (chmod 600)"
            )
        try:
            doc = orjson.loads(data)
            if doc.get("format") != KEY_FILE_FORMAT:
                raise ValueError
            keys = {
                int(v): {name: base64.b64decode(k[name], validate=True) for name in MASTER_KEYS}
                for v, k in doc["versions"].items()
            }
            current = int(doc["current"])
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise VaultKeyError(f"{self.path}: not a callpipe vault key file") from None
        if current not in keys or any(len(k) != 32 for ks in keys.values() for k in ks.values()):
            raise VaultKeyError(f"{self.path}: vault key file is damaged (current version or key size)")
        self._keys, self._current = keys, current
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self) -> None:
        """Read the file again if it changed since it was loaded."""
        try:
            st = self.path.stat()
        except OSError:
            return  # keep the keys in memory; the next read reports a missing file
        if (st.st_mtime_ns, st.st_size, st.st_ino) != self._stamp:
            with self._lock:
                self._load()

    def current_version(self) -> int:
        return self._current

    def versions(self) -> list[int]:
        return sorted(self._keys)

    def wrap(self, key: bytes, master_key_id: str) -> str:
        version = self._current
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self._keys[version][master_key_id]).encrypt(nonce, key, _aad(master_key_id, version))
        return f"{version}:{base64.b64encode(nonce + sealed).decode()}"

    def unwrap(self, wrapped: str, master_key_id: str) -> bytes:
        try:
            head, body = wrapped.split(":", 1)
            version = int(head)
            raw = base64.b64decode(body, validate=True)
        except (ValueError, binascii.Error):
            raise VaultKeyError(f"{self.path}: a file's wrapped key is malformed") from None
        if version not in self._keys:
            self.refresh()
        if version not in self._keys:
            raise VaultKeyError(f"{self.path}: no version {version} of the vault master keys in the key file")
        try:
            return AESGCM(self._keys[version][master_key_id]).decrypt(
                raw[:12], raw[12:], _aad(master_key_id, version)
            )
        except (InvalidTag, KeyError, ValueError):
            raise VaultKeyError(
                f"{self.path}: version {version} of {master_key_id} does not open this file's keys "
                "(another lake's or a damaged key file)"
            ) from None

    def rotate(self) -> int:
        """Add a new version of every master key and make it current; returns it. Old versions
        stay (files wrapped with them remain readable)."""
        with self._lock:
            self._load()
            version = max(self._keys) + 1
            versions = {
                str(v): {n: base64.b64encode(k).decode() for n, k in ks.items()}
                for v, ks in self._keys.items()
            }
            versions[str(version)] = _new_version()
            self._replace({"format": KEY_FILE_FORMAT, "current": version, "versions": versions})
        return version

    def retire(self, version: int) -> None:
        """Remove an old version of the master keys from the file (after `rewrap` moved every file
        off it: files still wrapped with it could never be read again). The current version
        cannot be retired."""
        with self._lock:
            self._load()
            if version not in self._keys:
                raise VaultKeyError(f"{self.path}: no version {version} of the vault master keys")
            if version == self._current:
                raise VaultKeyError(
                    f"{self.path}: version {version} is current (`callpipe vault rotate` first)"
                )
            versions = {
                str(v): {n: base64.b64encode(k).decode() for n, k in ks.items()}
                for v, ks in self._keys.items()
                if v != version
            }
            self._replace({"format": KEY_FILE_FORMAT, "current": self._current, "versions": versions})

    def _replace(self, doc: dict[str, Any]) -> None:
        """Write the key file anew (0600, a temp renamed over it, durably) and load it."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        dirfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        self._load()


def _aad(master_key_id: str, version: int) -> bytes:
    return f"{master_key_id}:{version}".encode()


# --- pyarrow's KMS bridge --------------------------------------------------------------------

_opened: weakref.WeakSet[VaultCrypto] = weakref.WeakSet()  # closed at exit if nobody did (`VaultCrypto`)
_failure = threading.local()  # the last VaultKeyError raised inside pyarrow's callback, per thread


class _Kms(pe.KmsClient):
    def __init__(self, keys: MasterKeys) -> None:
        super().__init__()
        self.keys = keys

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        return self.keys.wrap(key_bytes, master_key_identifier)

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        try:
            return self.keys.unwrap(wrapped_key, master_key_identifier)
        except VaultKeyError as exc:
            _failure.error = exc
            raise


class VaultCrypto:
    """Encryption and decryption properties for vault files, from one `MasterKeys`.

    pyarrow keeps the KMS, a Python object, inside C++ objects (each factory's key toolkit) that
    every file read or written with these keys holds, and they may outlive the reads: a scan
    DuckDB stopped early (a LIMIT) leaves decoding tasks on Arrow's thread pool, and the task that
    drops the last reference destroys the KMS there, which takes the GIL. If the interpreter is
    already shutting down, CPython ends a thread that takes the GIL, and that exit unwinding
    through a C++ destructor aborts the process (SIGABRT at exit, after the work was done). So
    whoever made the keys `close`s them before the interpreter shuts down: it lets go of them and
    waits until Arrow's threads have too. Processes that never do are covered at exit (`atexit`,
    which runs before the shutdown)."""

    def __init__(self, keys: MasterKeys) -> None:
        self.keys = keys
        self._version = -1
        self._writer: pe.CryptoFactory | None = None
        self._lock = threading.Lock()
        # each factory's KMS callable, held by pyarrow alone: gone once nothing of pyarrow holds the factory
        self._held_by_pyarrow: list[weakref.ref[Callable[[Any], _Kms]]] = []
        self._factory: pe.CryptoFactory | None = self._new_factory()
        self._kms = pe.KmsConnectionConfig()
        self._decryption: Any = self._factory.file_decryption_properties(
            self._kms, pe.DecryptionConfiguration(cache_lifetime=READ_CACHE_LIFETIME)
        )
        _opened.add(self)

    def _new_factory(self) -> pe.CryptoFactory:
        keys = self.keys

        def kms_client(_config: Any) -> _Kms:
            return _Kms(keys)

        self._held_by_pyarrow.append(weakref.ref(kms_client))
        return pe.CryptoFactory(kms_client)

    def _reader_factory(self) -> pe.CryptoFactory:
        if self._factory is None:
            raise VaultKeyError("the vault keys of this process were closed")
        return self._factory

    def _writer_factory(self) -> tuple[pe.CryptoFactory, int]:
        """The factory new files are encrypted with; a fresh one (no cached key-encryption keys)
        when the current master key version changed."""
        self._reader_factory()  # not after close
        refresh = getattr(self.keys, "refresh", None)
        if refresh is not None:
            refresh()
        version = self.keys.current_version()
        with self._lock:
            if version != self._version or self._writer is None:
                self._writer = self._new_factory()
                self._version = version
            return self._writer, version

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> bool:
        """Let go of the keys and wait until nothing of pyarrow holds them (Arrow's threads
        finish what a stopped scan left them), at most `timeout` seconds; returns whether they
        were released. Call it from a thread that can wait, while the interpreter still runs; the
        keys are unusable afterwards. Closing again returns at once."""
        with self._lock:
            self._factory = self._writer = None
            self._decryption = None
        deadline = time.monotonic() + timeout
        collected = False
        while any(ref() is not None for ref in self._held_by_pyarrow):
            if not collected:  # a reference cycle (an exception's frames) may hold a dataset
                gc.collect()
                collected = True
                continue
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)  # without the GIL: the thread holding the last reference needs it
        return True

    def encryption(self) -> tuple[Any, int]:
        """(FileEncryptionProperties for one new file, the master key version it uses): fresh data
        keys every call."""
        factory, version = self._writer_factory()
        config = pe.EncryptionConfiguration(
            footer_key=FOOTER_KEY,
            column_keys={COLUMN_KEY: list(personal_leaves())},
            plaintext_footer=False,
            double_wrapping=True,
            cache_lifetime=CACHE_LIFETIME,
        )
        return factory.file_encryption_properties(self._kms, config), version

    @property
    def decryption(self) -> Any:
        self._reader_factory()  # not after close
        return self._decryption

    def file_format(self) -> ds.ParquetFileFormat:
        config = ds.ParquetDecryptionConfig(
            self._reader_factory(), self._kms, pe.DecryptionConfiguration(cache_lifetime=READ_CACHE_LIFETIME)
        )
        return ds.ParquetFileFormat(
            default_fragment_scan_options=ds.ParquetFragmentScanOptions(decryption_config=config)
        )


@atexit.register
def _close_at_exit() -> None:
    """Close the keys a process left open (spawned workers, scripts), before the interpreter
    shuts down: `atexit` runs while other threads may still take the GIL."""
    for crypto in list(_opened):
        crypto.close()


class _Unset:
    """No `configure` yet: vault files are not written at all (never silently in plaintext)."""


UNSET = _Unset()
_active: VaultCrypto | _Unset | None = UNSET


def configure(crypto: VaultCrypto | _Unset | None) -> None:
    """Set the vault keys of this process. None is the explicit opt-out: vault files are written
    in plaintext. `UNSET` (the start state) refuses to write vault files."""
    global _active
    _active = crypto


def active() -> VaultCrypto | None:
    """The configured keys; None when vault files are plaintext or nothing is configured."""
    return _active if isinstance(_active, VaultCrypto) else None


@contextmanager
def configured(crypto: VaultCrypto | _Unset | None) -> Iterator[VaultCrypto | _Unset | None]:
    """`configure` for a block (tests, benchmarks); the previous setting is restored after it."""
    before = _active
    configure(crypto)
    try:
        yield crypto
    finally:
        configure(before)


def configure_temporary(*, encrypted: bool) -> None:
    """For a script without the CLI (benchmarks): `configure` a fresh key file in a temporary
    folder removed at exit, or the plaintext opt-out when not `encrypted`."""
    import shutil
    import tempfile

    if not encrypted:
        configure(None)
        return
    keys = Path(tempfile.mkdtemp(prefix="callpipe-keys-")) / "vault.keys"
    atexit.register(shutil.rmtree, keys.parent, True)
    create_key_file(keys)
    configure(from_key_file(keys))


def for_subprocess() -> tuple[str, str | None]:
    """What a spawned worker process needs to set up this process's vault keys (picklable:
    `configure_from` it there): the key file's path, the plaintext opt-out, or nothing."""
    if _active is None:
        return ("plaintext", None)
    if isinstance(_active, VaultCrypto) and isinstance(_active.keys, KeyFile):
        return ("key_file", str(_active.keys.path))
    return ("unset", None)  # another KMS or nothing configured: the child refuses vault writes


def configure_from(setup: tuple[str, str | None]) -> None:
    """`configure` in a spawned process from what `for_subprocess` returned in its parent."""
    kind, path = setup
    if kind == "key_file" and path is not None:
        configure(from_key_file(Path(path)))
    else:
        configure(None if kind == "plaintext" else UNSET)


def from_key_file(path: Path) -> VaultCrypto:
    return VaultCrypto(KeyFile(path))


# --- writing and reading ---------------------------------------------------------------------


def write_options(zone: str) -> tuple[dict[str, Any], dict[bytes, bytes]]:
    """(extra `pq.write_table` options, extra footer metadata) for a new file of `zone`: the
    encryption properties and key version for the vault when keys are configured, else nothing."""
    from sinks.layout import VAULT

    if zone != VAULT or _active is None:
        return {}, {}
    if not isinstance(_active, VaultCrypto):
        raise VaultKeyError(
            "no vault keys configured in this process: vault files are written encrypted "
            "(CALLPIPE_VAULT_KEY_FILE) or, by explicit opt-out, in plaintext (CALLPIPE_VAULT_ENCRYPTION=off)"
        )
    properties, version = _active.encryption()
    return {"encryption_properties": properties}, {VERSION_KEY: str(version).encode()}


def is_encrypted(path: Path | str) -> bool:
    """Whether a Parquet file has an encrypted footer (it ends in `PARE`)."""
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        return handle.read(4) == ENCRYPTED_MAGIC


def any_encrypted(paths: Sequence[Path | str]) -> bool:
    return any(is_encrypted(p) for p in paths)


def _decryption_for(paths: Sequence[Path | str]) -> Any:
    crypto = active()
    if crypto is not None:
        return crypto.decryption
    if any_encrypted(paths):
        raise VaultKeyError(
            "vault files are encrypted: they need the vault key file (CALLPIPE_VAULT_KEY_FILE, by "
            "default <CALLPIPE_HOME>/keys/vault.keys), and CALLPIPE_VAULT_ENCRYPTION=off does not open them"
        )
    return None


@contextmanager
def _reading(path: Path | str) -> Iterator[None]:
    """Turn pyarrow's error about a key that would not unwrap into the KMS's clear one."""
    _failure.error = None
    try:
        yield
    except (OSError, pa.ArrowException) as exc:
        failure = getattr(_failure, "error", None)
        if failure is not None:
            raise VaultKeyError(f"{Path(path).name}: {failure}") from None
        if active() is not None and is_encrypted(path):
            raise VaultKeyError(f"{Path(path).name}: cannot decrypt ({type(exc).__name__})") from None
        raise


def read_table(path: Path | str, columns: list[str] | None = None) -> pa.Table:
    """One lake file as a table (as `pq.read_table` reads it), decrypted when it is encrypted."""
    with _reading(path):
        return pq.ParquetFile(path, decryption_properties=_decryption_for([path])).read(columns=columns)


def parquet_file(path: Path | str) -> pq.ParquetFile:
    with _reading(path):
        return pq.ParquetFile(path, decryption_properties=_decryption_for([path]))


def read_metadata(path: Path | str) -> pq.FileMetaData:
    """The footer of one lake file (row counts, statistics, key-value metadata), decrypted."""
    with _reading(path):
        return pq.read_metadata(path, decryption_properties=_decryption_for([path]))


def read_schema(path: Path | str) -> pa.Schema:
    with _reading(path):
        return pq.read_schema(path, decryption_properties=_decryption_for([path]))


def key_version(path: Path | str) -> int | None:
    """The master key version a vault file is encrypted under; None for a plaintext file."""
    if not is_encrypted(path):
        return None
    raw = (read_metadata(path).metadata or {}).get(VERSION_KEY)
    return int(raw) if raw is not None else None


WARM_COLUMNS = ("duration_s", "started_at", "account_id")  # small personal columns of the vault


def warm(paths: Sequence[Path | str]) -> None:
    """Unwrap, in this thread, every key-encryption key the encrypted files among `paths` use (a
    footer and one personal column of each), so pyarrow holds them in its cache.

    A pyarrow dataset scanned by DuckDB decrypts on pyarrow's threads, and a KMS call from there
    runs Python, which needs the GIL; DuckDB holds the GIL while it starts the scan, and pyarrow
    holds its key cache's lock while it calls the KMS: the two wait for each other. With every key
    cached (for `READ_CACHE_LIFETIME`) a scan calls no Python at all."""
    for path in paths:
        if not is_encrypted(path):
            continue
        handle = parquet_file(path)
        names = set(handle.schema_arrow.names)
        column = next((c for c in WARM_COLUMNS if c in names), None)
        if column is not None and handle.metadata.num_row_groups:
            with _reading(path):
                handle.read_row_group(0, columns=[column])


def file_format(paths: Sequence[Path | str]) -> ds.ParquetFileFormat | str:
    """The pyarrow dataset format reading `paths` (decrypting when keys are configured); the
    files' keys are unwrapped first, here (`warm`)."""
    if _decryption_for(paths) is None:
        return "parquet"
    crypto = active()
    assert crypto is not None
    warm(paths)
    return crypto.file_format()
