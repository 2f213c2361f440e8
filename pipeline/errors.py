"""Errors grouped by what the caller should do."""

from __future__ import annotations


class CliError(Exception):
    """An expected failure a user can act on: printed as one line, exit status 2 (or .status)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


# `callpipe worker` exits with this when the trip-wire stopped it (pipeline/stream/runner.py
# Tripped): a run of internal errors, a bug to fix before restarting, not input to retry.
EXIT_TRIPPED = 3
