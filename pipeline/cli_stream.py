"""Placeholder: registers no commands yet."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `callpipe`."""
