"""The `callpipe` command. Each area registers its own subcommands; this module only dispatches
and turns every expected failure into one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from pipeline import lograte
from pipeline.errors import CliError
from pipeline.kafka_access import AccessError
from pipeline.keys import KeyError_
from pipeline.policy import PolicyError
from pipeline.sealed import SealError
from pipeline.settings import Settings, SettingsError
from sinks import crypt
from sinks.crypt import VaultKeyError

__all__ = ["CliError", "main"]

Handler = Callable[[argparse.Namespace, Settings], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"callpipe: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from infra import cli as infra_cli
    from jobs import cli as jobs_cli
    from jobs import cli_vault
    from pipeline.bench import cli as cli_bench
    from pipeline.carrier import cli as cli_produce
    from pipeline.stream import cli as cli_stream

    parser = _Parser(prog="callpipe", description="Privacy-first streaming pipeline for call data.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    infra_cli.register(sub)
    cli_produce.register(sub)
    cli_stream.register(sub)
    jobs_cli.register(sub)
    cli_vault.register(sub)
    cli_bench.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    opened: list[crypt.VaultCrypto] = []
    status = _run(args, opened)
    # The vault keys are let go of here, once the command is done and its errors handled, and
    # only then does the interpreter shut down: a scan stopped early can leave Arrow threads
    # holding them, and they must let go first (sinks.crypt.VaultCrypto: else SIGABRT at exit).
    for keys in opened:
        keys.close()
    return status


def _run(args: argparse.Namespace, opened: list[crypt.VaultCrypto]) -> int:
    try:
        settings = Settings.from_env()
        # Rate-limited: a broker outage logs one line per cause per 10 s, with a count.
        lograte.basic_config(
            level=settings.log_level.upper(),
            fmt="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        if args.command != "worker" and settings.log_level.upper() != "DEBUG":
            # a command's own lines, not the Kafka client's subscriptions and coordinators (a
            # worker's log keeps them: they tell an operator about its group)
            logging.getLogger("aiokafka").setLevel(logging.WARNING)
        handler: Handler = args.func
        # The vault's keys for every writer and reader of this command (restored after it, so an
        # in-process caller such as a test keeps its own). A command that never opens the vault
        # (vault_keys False, or a function of its arguments) leaves them unset: it needs no key
        # file and could not write a vault file. A missing key file fails here, before any work.
        needs = getattr(args, "vault_keys", True)
        if callable(needs):
            needs = needs(args)
        keys = settings.vault_crypto() if needs else crypt.UNSET
        if isinstance(keys, crypt.VaultCrypto):
            opened.append(keys)
        with crypt.configured(keys):
            return handler(args, settings)
    except CliError as exc:
        print(f"callpipe: error: {exc}", file=sys.stderr)
        return exc.status
    except BrokenPipeError:
        # the reader of stdout went away (`| head`): the command's work is done and recorded;
        # say nothing, and keep Python from failing again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (SettingsError, PolicyError, KeyError_, AccessError, VaultKeyError, SealError, OSError) as exc:
        # Settings, policy and key errors name the setting, file and line, never a value.
        print(f"callpipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("callpipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
