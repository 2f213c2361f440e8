"""Dead letters sealed to the operator key (pipeline/sealed.py): what a reader of calls.dlq sees,
what the operator opens, what binds a value to its place, rotation, and the key files' modes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.sealed import OperatorKeys, OperatorPublicKey, Sealer, SealError, ensure_keys, keygen, unseal

RAW = b'{"caller": "+4915112345678", "email": "ann@example.com", "transcript": "my card is 4111..."}'


def _keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys" / "op.key", tmp_path / "keys" / "op.pub"
    keygen(private, public)
    return private, public


def _seal(sealer: Sealer, raw: bytes = RAW, offset: int = 7) -> tuple[bytes, list[tuple[str, bytes]]]:
    value, sealed = sealer.seal(raw, b"A17", topic="calls.raw", partition=2, offset=offset, index=None)
    coords = [
        ("callpipe.source.topic", b"calls.raw"),
        ("callpipe.source.partition", b"2"),
        ("callpipe.source.offset", str(offset).encode()),
    ]
    return value, coords + sealed


def test_a_sealed_dead_letter_shows_no_content_and_opens_only_for_the_operator(tmp_path: Path) -> None:
    private, public = _keys(tmp_path)
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    value, headers = _seal(Sealer(OperatorPublicKey.load(public)))
    seen = value + b"".join(v for _k, v in headers)
    for planted in (b"+4915112345678", b"ann@example.com", b"my card", b"A17"):
        assert planted not in seen
    h = dict(headers)
    assert h["callpipe.format"] == b"json" and h["callpipe.size"] == str(len(RAW)).encode()
    opened = unseal(OperatorKeys.load(private), value, headers)
    assert opened.raw == RAW and opened.key == b"A17"


def test_a_value_moved_to_other_coordinates_or_another_key_does_not_open(tmp_path: Path) -> None:
    private, public = _keys(tmp_path)
    value, headers = _seal(Sealer(OperatorPublicKey.load(public)))
    moved = [(k, b"8" if k == "callpipe.source.offset" else v) for k, v in headers]
    with pytest.raises(SealError, match="does not open"):
        unseal(OperatorKeys.load(private), value, moved)
    other_private, _ = _keys(tmp_path / "other")
    with pytest.raises(SealError, match="does not open"):
        unseal(OperatorKeys.load(other_private), value, headers)


def test_rotation_seals_with_the_new_version_and_older_letters_still_open(tmp_path: Path) -> None:
    private, public = _keys(tmp_path)
    old = _seal(Sealer(OperatorPublicKey.load(public)))
    assert keygen(private, public) == "2"
    new = _seal(Sealer(OperatorPublicKey.load(public)))
    assert dict(new[1])["callpipe.key.version"] == b"2"
    keys = OperatorKeys.load(private)
    assert unseal(keys, *old).raw == RAW and unseal(keys, *new).raw == RAW
    assert ensure_keys(private, public) is None  # an existing key is left alone


def test_a_data_key_serves_a_batch_then_a_fresh_one_is_made(tmp_path: Path) -> None:
    private, public = _keys(tmp_path)
    sealer = Sealer(OperatorPublicKey.load(public), rotate_every=3)
    letters = [_seal(sealer, offset=i) for i in range(7)]
    assert sealer.data_keys == 3
    keys = OperatorKeys.load(private)
    assert all(unseal(keys, *letter).raw == RAW for letter in letters)


def test_key_files_readable_by_others_or_missing_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    private, _public = _keys(tmp_path)
    os.chmod(private, 0o644)
    with pytest.raises(SealError, match="chmod 600"):
        OperatorKeys.load(private)
    with pytest.raises(SealError, match="callpipe dlq keygen"):
        OperatorPublicKey.load(tmp_path / "none.pub")


def test_the_stub_of_a_dead_letter_kept_in_the_lake_stays_empty_and_its_key_sealed(tmp_path: Path) -> None:
    private, public = _keys(tmp_path)
    value, headers = _seal(Sealer(OperatorPublicKey.load(public)), raw=b"")
    assert value == b"" and b"A17" not in b"".join(v for _k, v in headers)
    opened = unseal(OperatorKeys.load(private), value, headers)
    assert opened.raw == b"" and opened.key == b"A17"
