"""Subcommands of the operators' and analysts' half: `callpipe jobs ...`, `query`, `policy`."""

from __future__ import annotations

import argparse

from jobs import cli_analysis, cli_erase, cli_ops, cli_requests


def register(sub: argparse._SubParsersAction) -> None:
    jobs = sub.add_parser("jobs", help="batch jobs over the lake (retention, anonymize, erase, ...)")
    jobs_sub = jobs.add_subparsers(dest="job", required=True, parser_class=type(jobs))
    cli_ops.register(sub, jobs_sub)
    cli_erase.register(jobs_sub)
    cli_analysis.register(sub, jobs_sub)
    cli_requests.register(jobs_sub)
