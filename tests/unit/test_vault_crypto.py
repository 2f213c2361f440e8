"""The vault encrypted at rest (docs/ARCHITECTURE.md "Vault encryption"): by default, with the key
file in CALLPIPE_HOME; a vault file read with plain pyarrow or DuckDB fails without the key; with
it, the jobs' results equal those on a plaintext lake of the same input (CALLPIPE_VAULT_ENCRYPTION=off,
the explicit opt-out); key rotation keeps old files readable and `vault rewrap` moves them to the
new version; a wrong or missing key file gives a clear error with no secret in it, and nothing is
written in plaintext instead."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from jobs import query
from pipeline import codec
from pipeline.carrier import generate
from pipeline.cli import main
from pipeline.settings import Settings, SettingsError
from schemas.clock import DAY_MS
from sinks import crypt, files
from sinks.layout import ANALYTICS, VAULT, glob
from sinks.read import read_zone, zone_files
from tests.support.ops_lake import keep_all_policy, make_key

START = 1_767_225_600_000  # 2026-01-01
TRAFFIC = generate.generate_traffic(11, 400, START, 4 * DAY_MS, accounts=12)
LATER = generate.generate_traffic(12, 80, START + 5 * DAY_MS, DAY_MS, accounts=12)
SUBJECT = TRAFFIC.calls[0]["account_id"]


def _write_calls(path: Path, calls: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"\n".join(codec.to_json(c, "CallEvent") for c in calls))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The same input ingested twice: encrypted by default (the key file `vault init` creates in
    CALLPIPE_HOME, no CALLPIPE_VAULT_KEY_FILE) and plaintext by opt-out (pristine copies)."""
    folder = tmp_path_factory.mktemp("vault")
    key_file, _key = make_key(folder)
    home = folder / "home"
    vault_keys = home / "keys" / "vault.keys"
    calls = _write_calls(folder / "calls.jsonl", TRAFFIC.calls)
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("CALLPIPE_")]:
            mp.delenv(name)
        mp.setenv("CALLPIPE_KEY_FILE", str(key_file))
        mp.setenv("CALLPIPE_HOME", str(home))
        assert main(["vault", "init"]) == 0
        assert (vault_keys.stat().st_mode & 0o777) == 0o600
        mp.setenv("CALLPIPE_LAKE", str(folder / "encrypted"))
        mp.setenv("CALLPIPE_POLICY", str(keep_all_policy(folder)))  # START is long past
        assert main(["ingest", str(calls)]) == 0
        mp.setenv("CALLPIPE_VAULT_ENCRYPTION", "off")
        mp.setenv("CALLPIPE_LAKE", str(folder / "plain"))
        assert main(["ingest", str(calls)]) == 0
    yield {"folder": folder, "key_file": key_file, "home": home, "vault_keys": vault_keys, "calls": calls}


@pytest.fixture
def lakes(built: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Fresh copies of both lakes for a test that changes them; the environment names the keys."""
    for name in [n for n in os.environ if n.startswith("CALLPIPE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CALLPIPE_KEY_FILE", str(built["key_file"]))
    monkeypatch.setenv("CALLPIPE_HOME", str(built["home"]))
    out = {}
    for kind in ("plain", "encrypted"):
        out[kind] = tmp_path / kind
        shutil.copytree(built["folder"] / kind, out[kind])
    return out


def _use(monkeypatch: pytest.MonkeyPatch, built: dict[str, Any], lake: Path, kind: str) -> None:
    monkeypatch.setenv("CALLPIPE_LAKE", str(lake))
    if kind == "encrypted":  # the default: the key file in CALLPIPE_HOME
        monkeypatch.delenv("CALLPIPE_VAULT_ENCRYPTION", raising=False)
    else:
        monkeypatch.setenv("CALLPIPE_VAULT_ENCRYPTION", "off")


def _zone_rows(lake: Path, zone: str, built: dict[str, Any]) -> list[dict[str, Any]]:
    with crypt.configured(crypt.from_key_file(built["vault_keys"])):
        table = read_zone(lake, zone)
    return sorted(table.replace_schema_metadata(None).to_pylist(), key=lambda r: r["event_id"])


def _json_out(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    return doc


def _comparable(doc: Any) -> Any:
    """A job's JSON result without what differs between any two runs (times, run ids, hashes)."""
    if isinstance(doc, dict):
        return {
            k: _comparable(v)
            for k, v in doc.items()
            if k
            not in (
                "duration_s",
                "run",
                "sha256",
                "previous_sha256",
                "out",
                "outbox",
                "generated_at",
                "erased_at",
            )
        }
    if isinstance(doc, list):
        return [_comparable(v) for v in doc]
    return doc


def test_vault_files_fail_without_the_key(built: dict[str, Any]) -> None:
    lake = built["folder"] / "encrypted"
    files = zone_files(lake, VAULT)
    assert files and all(crypt.is_encrypted(f) for f in files)
    for path in files:
        with pytest.raises(OSError, match="encrypted"):
            pq.read_table(path)
        with pytest.raises(OSError, match="encrypted"):
            pq.read_metadata(path)  # the footer too: no schema, row counts or statistics
        with pytest.raises(duckdb.Error, match="encrypted"):
            duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()
        raw = path.read_bytes()
        assert SUBJECT.encode() not in raw and b"PAR1" not in raw[-4:]
    with pytest.raises(duckdb.Error, match="encrypted"):
        duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob(lake, VAULT)}')").fetchall()
    # Without a key file callpipe's own readers refuse too, saying what to set; the plaintext
    # opt-out does not open an encrypted vault either.
    for unkeyed in (crypt.UNSET, None):
        with crypt.configured(unkeyed), pytest.raises(crypt.VaultKeyError, match="CALLPIPE_VAULT_KEY_FILE"):
            read_zone(lake, VAULT)
    # The analytics zone stays plain Parquet: analysts need no vault key.
    assert not any(crypt.is_encrypted(f) for f in zone_files(lake, ANALYTICS))
    # With the key both lakes hold the same rows.
    plain = built["folder"] / "plain"
    assert _zone_rows(lake, VAULT, built) == _zone_rows(plain, VAULT, built)
    assert len(_zone_rows(plain, VAULT, built)) > 300


def test_jobs_give_the_same_results_on_both_lakes(
    built: dict[str, Any],
    lakes: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    results: dict[str, dict[str, Any]] = {}
    for kind, lake in lakes.items():
        _use(monkeypatch, built, lake, kind)
        out: dict[str, Any] = {}
        sql = (
            "SELECT account_id, count(*) AS n, count(transcript) AS t FROM vault_calls GROUP BY 1 ORDER BY 1"
        )
        settings = Settings.from_env()
        with crypt.configured(settings.vault_crypto()):
            out["query"] = query.run(lake, sql, vault=True, key=settings.key()).rows
            out["query_dt"] = query.run(
                lake,
                "SELECT dt, bucket, count(*) FROM vault_calls GROUP BY ALL ORDER BY ALL",
                vault=True,
                key=settings.key(),
            ).rows
        export = lake.parent / f"{kind}-export.json"
        assert main(["jobs", "export", "--account", SUBJECT, "--out", str(export), "--json"]) == 0
        capsys.readouterr()
        out["export"] = _comparable(orjson.loads(export.read_bytes()))
        assert (
            main(
                [
                    "jobs",
                    "breach",
                    "--zone",
                    "vault",
                    "--since",
                    "2026-01-01",
                    "--until",
                    "2026-01-03",
                    "--json",
                ]
            )
            == 0
        )
        out["breach"] = _comparable(_json_out(capsys))
        assert main(["jobs", "erase", "--no-topic", "--account", SUBJECT, "--json"]) == 0
        out["erase"] = _comparable(_json_out(capsys))
        assert main(["jobs", "retention", "--as-of", "2026-04-02T12:00:00Z", "--json"]) == 0
        out["retention"] = _comparable(_json_out(capsys))
        assert main(["jobs", "compact", "--json"]) == 0
        out["compact"] = _comparable(_json_out(capsys))
        out["vault"] = _zone_rows(lake, VAULT, built)
        out["analytics"] = _zone_rows(lake, ANALYTICS, built)
        results[kind] = out
    plain, encrypted = results["plain"], results["encrypted"]
    assert plain["export"]["counts"]["vault"] > 0 and plain["export"]["vault"]
    assert plain["erase"]["rows_removed"]["vault"] > 0
    assert plain["retention"]["summary"]["rows_removed"]["vault"] > 0
    assert SUBJECT not in {r["account_id"] for r in plain["vault"]}
    for name in plain:
        assert encrypted[name] == plain[name], name
    # Every rewriter wrote the vault encrypted again.
    assert all(crypt.is_encrypted(f) for f in zone_files(lakes["encrypted"], VAULT))


def test_rotation_keeps_old_files_readable_and_rewrap_moves_them(
    built: dict[str, Any],
    lakes: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    lake = lakes["encrypted"]
    keys = lake.parent / "vault.keys"
    shutil.copy2(built["vault_keys"], keys)
    monkeypatch.setenv("CALLPIPE_LAKE", str(lake))
    monkeypatch.setenv("CALLPIPE_VAULT_KEY_FILE", str(keys))
    crypto = crypt.from_key_file(keys)
    old = zone_files(lake, VAULT)
    with crypt.configured(crypto):
        assert {crypt.key_version(f) for f in old} == {1}
        before = read_zone(lake, VAULT).num_rows
    assert main(["vault", "rotate"]) == 0
    assert (keys.stat().st_mode & 0o777) == 0o600
    later = _write_calls(lake.parent / "later.jsonl", LATER.calls)
    monkeypatch.setenv("CALLPIPE_POLICY", str(keep_all_policy(lake.parent)))
    assert main(["ingest", str(later)]) == 0
    monkeypatch.delenv("CALLPIPE_POLICY")
    new = [f for f in zone_files(lake, VAULT) if f not in old]
    assert new
    with crypt.configured(crypto):  # a process holding the old key file in memory reloads it
        assert {crypt.key_version(f) for f in new} == {2}
        assert {crypt.key_version(f) for f in old} == {1}
        assert read_zone(lake, VAULT).num_rows > before  # old and new files read together
    content = _zone_rows(lake, VAULT, built | {"vault_keys": keys})
    assert main(["vault", "retire", "1"]) == 3  # files still use it: they would never open again
    assert "vault files still use key version 1" in capsys.readouterr().err
    assert crypt.KeyFile(keys).versions() == [1, 2]
    assert main(["vault", "rewrap", "--days", "2"]) == 0
    assert "files left" in capsys.readouterr().out
    with crypt.configured(crypto):
        versions = [crypt.key_version(f) for f in zone_files(lake, VAULT)]
    assert 1 in versions and 2 in versions  # gradually: two days moved, the rest still on 1
    assert main(["vault", "rewrap", "--days", "100"]) == 0
    capsys.readouterr()
    assert main(["vault", "status"]) == 0
    status = capsys.readouterr().out
    assert "current key version: 2" in status and "  1:" not in status
    assert _zone_rows(lake, VAULT, built | {"vault_keys": keys}) == content
    # the audit trail records the rewrites
    assert main(["vault", "rewrap"]) == 0
    assert "rewrapped 0 vault files" in capsys.readouterr().out
    # every file moved: version 1 can go; the current one cannot
    assert main(["vault", "retire", "2"]) == 3
    assert "version 2 is current" in capsys.readouterr().err
    assert main(["vault", "retire", "1"]) == 0
    assert "version 1 retired" in capsys.readouterr().out
    assert crypt.KeyFile(keys).versions() == [2] and (keys.stat().st_mode & 0o777) == 0o600
    assert _zone_rows(lake, VAULT, built | {"vault_keys": keys}) == content


def _secrets(path: Path) -> list[str]:
    doc = orjson.loads(path.read_bytes())
    out = []
    for version in doc["versions"].values():
        for b64 in version.values():
            out += [b64, base64.b64decode(b64).hex()]
    return out


def test_wrong_or_missing_key_file_is_a_clear_error(
    built: dict[str, Any],
    lakes: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    lake = lakes["encrypted"]
    monkeypatch.setenv("CALLPIPE_LAKE", str(lake))
    out = lake.parent / "export.json"
    argv = ["jobs", "export", "--account", SUBJECT, "--out", str(out)]

    missing = lake.parent / "nowhere.keys"
    monkeypatch.setenv("CALLPIPE_VAULT_KEY_FILE", str(missing))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot read the vault key file" in err and "callpipe vault init" in err

    monkeypatch.delenv("CALLPIPE_VAULT_KEY_FILE")
    monkeypatch.setenv("CALLPIPE_HOME", str(lake.parent / "bare-home"))  # no key file in it
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "bare-home/keys/vault.keys: cannot read the vault key file" in err
    assert "CALLPIPE_VAULT_ENCRYPTION=off" in err

    other = lake.parent / "other.keys"
    monkeypatch.setenv("CALLPIPE_VAULT_KEY_FILE", str(other))
    assert main(["vault", "init"]) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("callpipe: error: ") and err.count("\n") == 1
    assert "does not open this file's keys" in err
    for secret in _secrets(other) + _secrets(built["vault_keys"]):
        assert secret not in err
    assert SUBJECT not in err and not out.exists()

    other.chmod(0o640)
    assert main(argv) == 2
    assert "must not be readable by group or others" in capsys.readouterr().err

    monkeypatch.setenv("CALLPIPE_VAULT_KEY_FILE", str(built["key_file"]))
    with pytest.raises(SettingsError, match="pseudonymization key"):
        Settings.from_env().vault_crypto()


def test_key_file_wraps_with_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "vault.keys"
    crypt.create_key_file(path)
    keys = crypt.KeyFile(path)
    data_key = os.urandom(16)
    first = keys.wrap(data_key, crypt.FOOTER_KEY)
    assert first.startswith("1:") and data_key.hex() not in first
    assert keys.unwrap(first, crypt.FOOTER_KEY) == data_key
    with pytest.raises(crypt.VaultKeyError, match="does not open"):
        keys.unwrap(first, crypt.COLUMN_KEY)  # bound to its master key id
    assert crypt.KeyFile(path).rotate() == 2
    keys.refresh()
    second = keys.wrap(data_key, crypt.FOOTER_KEY)
    assert second.startswith("2:")
    assert keys.unwrap(first, crypt.FOOTER_KEY) == keys.unwrap(second, crypt.FOOTER_KEY) == data_key
    with pytest.raises(crypt.VaultKeyError, match="no version 7"):
        keys.unwrap("7:" + second[2:], crypt.FOOTER_KEY)
    path.write_text("{}")
    with pytest.raises(crypt.VaultKeyError, match="not a callpipe vault key file"):
        crypt.KeyFile(path)


def test_without_the_key_file_nothing_is_written_and_off_is_the_only_plaintext(
    built: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A writer that cannot find the vault's keys fails before it writes anything (never a
    plaintext vault instead); CALLPIPE_VAULT_ENCRYPTION=off is how a plaintext vault is asked for;
    a process that configured no keys at all refuses to write a vault file."""
    for name in [n for n in os.environ if n.startswith("CALLPIPE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CALLPIPE_KEY_FILE", str(built["key_file"]))
    monkeypatch.setenv("CALLPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CALLPIPE_LAKE", str(tmp_path / "lake"))
    monkeypatch.setenv("CALLPIPE_POLICY", str(keep_all_policy(tmp_path)))
    assert main(["ingest", str(built["calls"])]) == 2
    assert "vault key file" in capsys.readouterr().err
    assert not zone_files(tmp_path / "lake", VAULT) and not zone_files(tmp_path / "lake", ANALYTICS)
    monkeypatch.setenv("CALLPIPE_VAULT_ENCRYPTION", "maybe")
    assert main(["ingest", str(built["calls"])]) == 2
    assert "CALLPIPE_VAULT_ENCRYPTION must be on or off" in capsys.readouterr().err
    monkeypatch.setenv("CALLPIPE_VAULT_ENCRYPTION", "off")
    assert main(["ingest", str(built["calls"])]) == 0
    plain = zone_files(tmp_path / "lake", VAULT)
    assert plain and not any(crypt.is_encrypted(f) for f in plain)
    with crypt.configured(crypt.UNSET), pytest.raises(crypt.VaultKeyError, match="no vault keys configured"):
        files.write_table(pq.read_table(plain[0]), tmp_path / "x.parquet", VAULT)
    assert not (tmp_path / "x.parquet").exists()


def test_a_spawned_process_writes_the_vault_with_its_parents_keys(tmp_path: Path) -> None:
    """The synthetic lake's worker processes (spawned, so nothing inherited) set up the parent's
    vault keys: an encrypted parent gets encrypted files, the opt-out plaintext ones."""
    from jobs.synth import SynthSpec, build

    key = make_key(tmp_path)[1]
    spec = SynthSpec(rows=400, days=2, buckets=1, files_per_partition=1, workers=2, seed=3)
    built = build(tmp_path / "encrypted", key, spec)  # under the suite's keys (tests/conftest.py)
    encrypted = zone_files(tmp_path / "encrypted", VAULT)
    assert encrypted and all(crypt.is_encrypted(f) for f in encrypted)
    assert read_zone(tmp_path / "encrypted", VAULT).num_rows == built["vault_rows"] > 0
    with crypt.configured(None):
        build(tmp_path / "plain", key, spec)
    assert not any(crypt.is_encrypted(f) for f in zone_files(tmp_path / "plain", VAULT))
    assert crypt.for_subprocess() == ("key_file", os.environ["CALLPIPE_VAULT_KEY_FILE"])


def test_closing_the_keys_waits_until_arrows_threads_let_go_of_them(
    built: dict[str, Any], lakes: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scan DuckDB stops early (LIMIT) leaves Arrow's threads decoding with the keys; the one that
    # lets go of them last runs pyarrow's KMS bridge destructor, which takes the GIL: during
    # interpreter shutdown that aborts the process (`query --vault`, SIGABRT after the result
    # was printed). Closing waits for them while the interpreter still runs.
    _use(monkeypatch, built, lakes["encrypted"], "encrypted")
    settings = Settings.from_env()
    keys = settings.vault_crypto()
    assert keys is not None
    with crypt.configured(keys):
        for sql in ("SELECT * FROM vault_calls LIMIT 1", "SELECT caller FROM vault_calls LIMIT 3"):
            assert len(query.run(lakes["encrypted"], sql, vault=True, key=settings.key()).rows) >= 1
    assert keys.close(timeout=60)
    assert keys.close(timeout=0)  # closed: nothing left to wait for
    with pytest.raises(crypt.VaultKeyError, match="closed"):
        keys.file_format()


def test_the_command_closes_the_vault_keys_it_opened_before_it_returns(
    built: dict[str, Any],
    lakes: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    _use(monkeypatch, built, lakes["encrypted"], "encrypted")
    closed: list[bool] = []
    close = crypt.VaultCrypto.close
    monkeypatch.setattr(
        crypt.VaultCrypto, "close", lambda self, timeout=60: closed.append(close(self, timeout))
    )
    assert main(["query", "--vault", "SELECT * FROM vault_calls LIMIT 1"]) == 0
    assert closed == [True]
    assert main(["query", "SELECT count(*) FROM analytics_calls"]) == 0  # no vault, no keys to close
    assert closed == [True]
    capsys.readouterr()
