"""What the benchmarks share: their one error type, tables, percentiles, a process's memory."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

SEED = 5  # the stream and ingest benchmarks' traffic
INGEST_FILE_EVENTS = 25_000  # calls per Avro container file given to `callpipe ingest`


class BenchError(RuntimeError):
    """A benchmark cannot run (no broker, a missing optional package): one line for the user."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of a live process, in KiB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(rest.split()[0])
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table (also valid Markdown), numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: Sequence[str], numeric: Sequence[bool]) -> str:
        parts = [v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(parts) + " |"

    numeric = [all(_is_number(r[i]) for r in rows) and bool(rows) for i in range(len(headers))]
    out = [line(list(headers), [False] * len(headers))]
    out.append(
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if n else "-" * (w + 2) for w, n in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    out.extend(line(r, numeric) for r in cells)
    return "\n".join(out)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def own_vault_keys() -> None:
    """For a benchmark run as a script (no `callpipe` CLI to configure the vault's keys): the
    vault encrypted as callpipe writes it by default, with a temporary key file of its own;
    CALLPIPE_VAULT_ENCRYPTION=off measures a plaintext vault (`sinks.crypt.configure_temporary`)."""
    from pipeline.settings import Settings
    from sinks import crypt

    crypt.configure_temporary(encrypted=Settings.from_env().vault_encryption)
