"""Key rotation of the vault, a few days at a time: `callpipe vault rewrap`.

`callpipe vault rotate` adds a new version of the vault master keys (`sinks.crypt.KeyFile`):
every file written after it is encrypted under the new version, and older files stay readable
because the key file keeps the versions that wrapped them. pyarrow's own key rotation
(`CryptoFactory.rotate_master_keys`) re-wraps keys stored beside a file (external key
material), which the lake cannot use: its files are written as temps and renamed into place, and
key material kept under the temp's name would not follow the rename. So old files are rewritten
instead, whole, under the current version, fresh data keys included: every vault file whose
footer names another version (or that is plaintext, from before the key file existed), oldest
day first, at most `days` day partitions per run, through the intent journal of `jobs.replace`
(a killed run leaves every file old or new, never half) and recorded in the audit trail. Run it
daily until `files_left` is 0; then `callpipe vault retire N` removes version N from the key file
(`retire`, refused while any vault file still uses it).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from jobs import audit
from jobs.progress import ProgressFn
from jobs.replace import Change, job_lock, parallel, run_change, write_parquet
from sinks import crypt
from sinks.files import TEMP_SUFFIX
from sinks.layout import VAULT, table_dir
from sinks.read import zone_files


def stale_files(lake: Path, current: int) -> dict[str, list[Path]]:
    """Day (YYYY-MM-DD) -> vault files not encrypted under version `current`, oldest day first."""
    by_day: dict[str, list[Path]] = defaultdict(list)
    for path in zone_files(lake, VAULT):
        if crypt.key_version(path) != current:
            day = next((p[3:] for p in path.parts if p.startswith("dt=")), "")
            by_day[day].append(path)
    return dict(sorted(by_day.items()))


def status(lake: Path) -> dict[str, Any]:
    """Vault files per key version ("plaintext" for unencrypted files) and the current version."""
    crypto = crypt.active()
    counts: dict[str, int] = defaultdict(int)
    for path in zone_files(lake, VAULT):
        version = crypt.key_version(path)
        counts["plaintext" if version is None else str(version)] += 1
    current = crypto.keys.current_version() if crypto is not None else None
    return {"current_version": current, "files_by_version": dict(sorted(counts.items()))}


class RetireRefused(RuntimeError):
    """A key version cannot be retired yet; the message says why (counts, never a key)."""


def retire(lake: Path, version: int) -> dict[str, Any]:
    """Remove master key `version` from the key file, refusing while any vault file still names it
    (it would never open again) or while a vault file is being written (a writer that loaded the
    key file before the last rotation may still be using it). Under the job lock, so no job is
    rewriting files meanwhile and a killed job's change is finished first."""
    crypto = crypt.active()
    if crypto is None:
        raise crypt.VaultKeyError(
            "retiring a key version needs the vault key file (CALLPIPE_VAULT_ENCRYPTION is off)"
        )
    keys = crypto.keys
    if not isinstance(keys, crypt.KeyFile):
        raise RetireRefused("the configured KMS retires its key versions itself")
    if version == keys.current_version():
        raise RetireRefused(f"key version {version} is current: `callpipe vault rotate` first")
    if version not in keys.versions():
        raise RetireRefused(f"the key file holds no version {version}")
    with job_lock(lake):
        using = sum(1 for path in zone_files(lake, VAULT) if crypt.key_version(path) == version)
        if using:
            raise RetireRefused(
                f"{using} vault files still use key version {version}: `callpipe vault rewrap` them first"
            )
        writing = [p for p in table_dir(lake, VAULT).rglob("*") if p.name.endswith(TEMP_SUFFIX)]
        if writing:
            raise RetireRefused(
                f"{len(writing)} vault files are being written; retry when they are published"
            )
        keys.retire(version)
        audit.record(
            lake,
            job="vault-retire",
            params={"key_version": version},
            counts={"versions_left": len(keys.versions())},
            files=[],
            duration_s=0.0,
            outcome="ok",
        )
    return {"retired": version, "versions_left": keys.versions(), "current_version": keys.current_version()}


def run(lake: Path, *, days: int = 1, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Rewrite the vault files of the `days` oldest days holding files under an older key version
    (or none) under the current one; returns counts."""
    crypto = crypt.active()
    if crypto is None:
        raise crypt.VaultKeyError("rewrap needs the vault key file (CALLPIPE_VAULT_ENCRYPTION is off)")
    started = time.monotonic()
    with job_lock(lake) as recovered:
        current = crypto.keys.current_version()
        stale = stale_files(lake, current)
        chosen = list(stale)[:days]
        change = Change(lake, "rewrap")
        work = [(src, change.temp_for(src)) for day in chosen for src in stale[day]]
        files_audit: list[dict[str, Any]] = []

        def rewrite(item: tuple[Path, Path]) -> dict[str, Any]:
            src, tmp = item
            table = crypt.read_table(src)
            write_parquet(table, tmp, VAULT)
            return audit.file_replaced(lake, src, tmp, table.num_rows)

        counts = {
            "key_version": current,
            "days": len(chosen),
            "files_rewrapped": len(work),
            "files_left": sum(len(stale[d]) for d in list(stale)[days:]),
            "recovered_runs": len(recovered),
        }

        def write() -> None:
            files_audit.extend(parallel(rewrite, work, progress))
            change.info = {"params": {"key_version": current}, "counts": counts, "files": files_audit}

        run_change(change, write)
        duration = time.monotonic() - started
        if work:
            audit.record(
                lake,
                job="rewrap",
                params={"key_version": current, "days": chosen},
                counts=counts,
                files=files_audit,
                duration_s=duration,
                outcome="ok",
                run=change.run,
            )
            change.finish()
    return {**counts, "rewrapped_days": chosen, "duration_s": round(duration, 3)}
