"""`callpipe vault init|rotate|status|rewrap|retire`: the vault's master keys (docs/ARCHITECTURE.md
"Vault encryption"). The key file is CALLPIPE_VAULT_KEY_FILE (default <home>/keys/vault.keys).
And `callpipe key init`, the pseudonymization key. No command prints a key."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import CliError
from pipeline.settings import Settings


def _key_file(settings: Settings) -> Path:
    return settings.vault_keys


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.crypt import create_key_file

    path = _key_file(settings)
    if path.exists():
        raise CliError(f"{path} exists; `callpipe vault rotate` adds a key version")
    pseudonym = settings.key_file
    if pseudonym is not None and pseudonym.resolve() == path.resolve():
        raise CliError("the vault key file must not be the pseudonymization key file")
    create_key_file(path)
    print(f"vault key file {path} created (mode 0600), master key version 1")
    return 0


def cmd_key_init(args: argparse.Namespace, settings: Settings) -> int:
    """`callpipe key init`: the pseudonymization key, where the settings read it from."""
    from pipeline.keys import create_key_file

    path = settings.key_file_to_create()
    if path.exists():
        raise CliError(
            f"{path} exists; a new pseudonymization key would make new tokens that match no old ones"
        )
    if path.resolve() == settings.vault_keys.resolve():
        raise CliError("the pseudonymization key file must not be the vault key file")
    create_key_file(path)
    print(f"pseudonymization key {path} created (mode 0600, 256 bits; never printed)")
    return 0


def cmd_rotate(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.crypt import KeyFile

    version = KeyFile(_key_file(settings)).rotate()
    print(
        f"vault master keys: version {version} is current; new files use it, older files stay "
        "readable (`callpipe vault rewrap` moves them over day by day)"
    )
    return 0


def _lake(settings: Settings) -> Path:
    if not settings.lake.is_dir():
        raise CliError(f"no lake at {settings.lake} (set CALLPIPE_LAKE)")
    return settings.lake


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from jobs import rewrap

    result = rewrap.status(_lake(settings))
    print(f"current key version: {result['current_version']}")
    for version, n in result["files_by_version"].items():
        print(f"  {version}: {n} vault files")
    return 0


def cmd_rewrap(args: argparse.Namespace, settings: Settings) -> int:
    from jobs import rewrap
    from jobs.progress import Progress
    from jobs.replace import JobBusy

    try:
        result = rewrap.run(_lake(settings), days=args.days, progress=Progress("rewrap: rewriting"))
    except JobBusy as exc:
        raise CliError(str(exc), status=3) from None
    print(
        f"rewrapped {result['files_rewrapped']} vault files of {result['days']} days under key version "
        f"{result['key_version']}; {result['files_left']} files left"
    )
    return 0


def cmd_retire(args: argparse.Namespace, settings: Settings) -> int:
    from jobs import rewrap
    from jobs.replace import JobBusy

    try:
        result = rewrap.retire(_lake(settings), args.version)
    except rewrap.RetireRefused as exc:
        raise CliError(str(exc), status=3) from None
    except JobBusy as exc:
        raise CliError(str(exc), status=3) from None
    print(
        f"vault master keys: version {result['retired']} retired; versions kept: "
        f"{', '.join(map(str, result['versions_left']))} (current {result['current_version']})"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    key = sub.add_parser("key", help="the pseudonymization key: init")
    key_sub = key.add_subparsers(dest="key_command", required=True, parser_class=type(key))
    key_init = key_sub.add_parser(
        "init",
        help="create the pseudonymization key (CALLPIPE_KEY_FILE, else the policy's key file, else "
        "<home>/keys/pseudonymization.key; 256 bits, hex, mode 0600); refused if it exists",
    )
    key_init.set_defaults(func=cmd_key_init, vault_keys=False)
    vault = sub.add_parser("vault", help="the vault's encryption keys: init, rotate, status, rewrap, retire")
    vault_sub = vault.add_subparsers(dest="vault_command", required=True, parser_class=type(vault))
    init = vault_sub.add_parser(
        "init",
        help="create the vault key file (CALLPIPE_VAULT_KEY_FILE or <home>/keys/vault.keys, mode 0600)",
    )
    init.set_defaults(func=cmd_init, vault_keys=False)
    rotate = vault_sub.add_parser("rotate", help="add a new master key version; new files use it")
    rotate.set_defaults(func=cmd_rotate, vault_keys=False)
    status = vault_sub.add_parser("status", help="vault files per key version")
    status.set_defaults(func=cmd_status)
    rw = vault_sub.add_parser("rewrap", help="rewrite the oldest days' files under the current key version")
    rw.add_argument("--days", type=int, default=1, help="day partitions per run (default 1)")
    rw.set_defaults(func=cmd_rewrap)
    retire = vault_sub.add_parser(
        "retire", help="remove an old key version from the key file (refused while a vault file uses it)"
    )
    retire.add_argument("version", type=int, help="the key version to remove (not the current one)")
    retire.set_defaults(func=cmd_retire)
