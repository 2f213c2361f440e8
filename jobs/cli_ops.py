"""Placeholder: registers no commands yet."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, jobs_sub: argparse._SubParsersAction) -> None:
    """Add top-level commands to `sub` and `callpipe jobs` commands to `jobs_sub`."""
