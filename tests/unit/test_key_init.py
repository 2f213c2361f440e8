"""`callpipe key init`: the pseudonymization key a new operator is told to make, where the
settings then find it (docs: README "Keys")."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.keys import Domain
from pipeline.settings import Settings


@pytest.fixture
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.startswith("CALLPIPE_")]:
        monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("CALLPIPE_HOME", str(home))
    return home


def test_without_a_key_the_error_says_how_to_make_one(
    bare: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CALLPIPE_VAULT_ENCRYPTION", "off")  # only the pseudonymization key is missing
    monkeypatch.setenv("CALLPIPE_LAKE", str(bare.parent / "lake"))
    (bare.parent / "lake").mkdir()
    assert main(["jobs", "erase", "--account", "acc-1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "no pseudonymization key" in err and "callpipe key init" in err
    assert "acc-1" not in err


def test_key_init_makes_the_key_the_settings_read_and_never_replaces_it(
    bare: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["key", "init"]) == 0
    path = bare / "keys" / "pseudonymization.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text().strip()
    assert len(bytes.fromhex(text)) == 32
    assert text not in capsys.readouterr().out  # never printed
    first = Settings.from_env().key()
    assert main(["key", "init"]) == 2
    assert "exists" in capsys.readouterr().err
    assert path.read_text().strip() == text
    assert Settings.from_env().key().token(Domain.ACCOUNT, "acc-1") == first.token(Domain.ACCOUNT, "acc-1")


def test_key_init_writes_where_CALLPIPE_KEY_FILE_points(
    bare: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = tmp_path / "elsewhere" / "p.key"
    monkeypatch.setenv("CALLPIPE_KEY_FILE", str(named))
    assert main(["key", "init"]) == 0
    assert named.exists() and not (bare / "keys" / "pseudonymization.key").exists()
    monkeypatch.setenv("CALLPIPE_VAULT_KEY_FILE", str(named))
    named.unlink()
    assert main(["key", "init"]) == 2  # never the vault's key file
    assert not named.exists()
