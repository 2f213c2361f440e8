"""The raw account ids of requests, kept under the vault: `<lake>/vault/requests/<request>.json`.

The request ledger (`jobs.ledger`) names a subject only by its token; what a request was about in
plaintext (the account id, a rectification's corrections) is kept here, in the vault's restricted
area (folder 0700, files 0600, each written atomically), and only for as long as it is needed:
- until the request is closed, for every kind but erase (`jobs.requests` forgets it then);
- for an erasure, for good: the erased subjects' files are the suppression list the requests job
  enforces (late rows erased again, `jobs.requests`). An operator's erasure (`jobs.erase_direct`)
  keeps one the same way.

A file is written before the ledger line that names its request, so a ledger request always has
its file; a file without a ledger line (a run killed between the two) is written again by the
run that finishes the work.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from jobs.ledger import file_name
from sinks.files import fsync_dir, make_dirs, write_bytes
from sinks.layout import VAULT_REQUESTS


def intake_dir(lake: Path) -> Path:
    return lake.joinpath(*VAULT_REQUESTS)


def write_private(path: Path, data: bytes) -> None:
    """Write a restricted file (0600) atomically in a 0700 folder (intake files here; the outbox's
    access exports and breach lists too)."""
    make_dirs(path.parent, 0o700)
    write_bytes(data, path, mode=0o600, root=path.parent, dir_mode=0o700)


def intake_path(lake: Path, request_id: str) -> Path:
    return intake_dir(lake) / f"{file_name(request_id)}.json"


def write(lake: Path, request_id: str, doc: Mapping[str, Any]) -> None:
    write_private(intake_path(lake, request_id), orjson.dumps(dict(doc)))


def read(lake: Path, request_id: str) -> dict[str, Any] | None:
    path = intake_path(lake, request_id)
    if not path.exists():
        return None
    doc: dict[str, Any] = orjson.loads(path.read_bytes())
    return doc


def forget(lake: Path, request_id: str) -> None:
    path = intake_path(lake, request_id)
    if path.exists():
        path.unlink()
        fsync_dir(path.parent)
