"""The noise of an aggregate's rows: which values get it, how much, seeded by what, and how a
published file says so (jobs/anonymize.py builds the rows; jobs/noise.py draws the noise).

Each published row has three values: `calls`, `subjects`, `duration_s_total`. Before counting, a
subject's contribution to one group is clamped (`Aggregate.max_calls` calls and
`Aggregate.max_duration_s` seconds; one subject adds one to `subjects`), so adding or removing a
subject changes a row's values by at most (max_calls, 1, max_duration_s). The policy's epsilon is
the privacy loss of one row, split evenly over its three values: a value whose subject bound is B
gets discrete Laplace noise of scale B * 3 / epsilon. A subject in m published rows of a build
loses at most m * epsilon (basic composition); see docs/ARCHITECTURE.md for what that means.

Seeding: the noise of a value is drawn from the bits of (aggregate, group, column, its true
clamped value). Unchanged data gives the same published value on every rebuild, whatever the
number of rebuilds; a changed value (a subject erased, expired, objecting; a late call) gives
that value fresh noise, and only that value.

Every row also carries the half-width of its values' 95% interval (`calls_ci95`,
`subjects_ci95`, `duration_s_total_ci95`; 0 where the value is exact: built with noise off, or
carried over from such a build), so an analyst reads the error bars beside the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import pyarrow as pa

from jobs import noise
from jobs.noise import NoiseKey

VALUES = ("calls", "subjects", "duration_s_total")  # the published values, in this order
CI95 = tuple(f"{v}_ci95" for v in VALUES)  # their error bars, one column each
KEY_PURPOSE = "aggregate-noise"  # what the noise key is derived for (PseudonymKey.derive)
MECHANISM = "discrete_laplace"


@dataclass(frozen=True)
class Noise:
    """Noise on: the key its bits come from and the privacy loss per published row and build."""

    key: NoiseKey
    epsilon: Fraction

    def __post_init__(self) -> None:
        if self.epsilon <= 0:
            raise ValueError("epsilon must be positive")


@dataclass(frozen=True)
class ValueNoise:
    """The noise of one published value of an aggregate: the bound of one subject's contribution
    and the resulting scale and error bars."""

    column: str
    bound: int
    epsilon: Fraction  # this value's share of the row's epsilon

    @property
    def scale(self) -> Fraction:
        return self.bound / self.epsilon

    @property
    def sd(self) -> float:
        return noise.sd(self.scale)

    @property
    def ci95(self) -> int:
        return noise.ci95(self.scale)

    def describe(self) -> dict[str, Any]:
        return {
            "bound": self.bound,
            "epsilon": _text(self.epsilon),
            "scale": round(float(self.scale), 4),
            "sd": round(self.sd, 2),
            "ci95": self.ci95,
        }


def value_noise(n: Noise, max_calls: int, max_duration_s: int) -> tuple[ValueNoise, ...]:
    """The three values' noise of an aggregate with these bounds, in `VALUES` order."""
    share = n.epsilon / len(VALUES)
    bounds = {"calls": max_calls, "subjects": 1, "duration_s_total": max_duration_s}
    return tuple(ValueNoise(column, bounds[column], share) for column in VALUES)


def add_noise(
    table: pa.Table, name: str, keys: list[str], n: Noise, values: tuple[ValueNoise, ...]
) -> pa.Table:
    """`table` (the group `keys` and the true clamped `VALUES`, one row per published group) with
    every value replaced by itself plus its noise and the `CI95` columns added."""
    groups = list(zip(*(table.column(k).to_pylist() for k in keys), strict=True)) if keys else []
    out = table
    for v in values:
        true = table.column(v.column).to_pylist()
        noisy = [
            x + noise.discrete_laplace(v.scale, n.key.bits(name, *group, v.column, x))
            for group, x in zip(groups, true, strict=True)
        ]
        at = out.schema.get_field_index(v.column)
        out = out.set_column(at, v.column, pa.array(noisy, pa.int64()))
    for v, column in zip(values, CI95, strict=True):
        out = out.append_column(column, pa.array([v.ci95] * table.num_rows, pa.int64()))
    return out


def summary(n: Noise | None) -> dict[str, str] | None:
    """What a build's audit entry records of its noise (None: off)."""
    if n is None:
        return None
    return {"mechanism": MECHANISM, "epsilon_per_row": _text(n.epsilon), "key_version": n.key.version}


def metadata(n: Noise | None, values: tuple[ValueNoise, ...]) -> dict[str, str]:
    """What the published file's key-value metadata says about its noise."""
    if n is None:
        return {"callpipe.noise": "off"}
    meta = {
        "callpipe.noise": MECHANISM,
        "callpipe.noise.epsilon": _text(n.epsilon),
        "callpipe.noise.key_version": n.key.version,
    }
    for v in values:
        for field, value in v.describe().items():
            meta[f"callpipe.noise.{v.column}.{field}"] = str(value)
    return meta


def describe(n: Noise | None, values: tuple[ValueNoise, ...]) -> dict[str, Any] | None:
    """The noise of a build for `jobs anonymize --json` and the report (None: noise off)."""
    if n is None:
        return None
    return {
        "mechanism": MECHANISM,
        "epsilon_per_row": _text(n.epsilon),
        "key_version": n.key.version,
        "values": {v.column: v.describe() for v in values},
    }


def from_metadata(meta: dict[str, str]) -> dict[str, Any] | None:
    """`describe`'s shape read back from a file's metadata (None: exact values, or a file built
    before noise existed)."""
    if meta.get("callpipe.noise", "off") == "off":
        return None
    values: dict[str, Any] = {}
    for column in VALUES:
        prefix = f"callpipe.noise.{column}."
        values[column] = {k[len(prefix) :]: v for k, v in meta.items() if k.startswith(prefix)}
    return {
        "mechanism": meta["callpipe.noise"],
        "epsilon_per_row": meta.get("callpipe.noise.epsilon"),
        "key_version": meta.get("callpipe.noise.key_version"),
        "values": values,
    }


def _text(value: Fraction) -> str:
    """A fraction as a short exact text: 1, 0.5, 1/3."""
    if value.denominator == 1:
        return str(value.numerator)
    as_float = float(value)
    if noise.as_fraction(repr(as_float)) == value:
        return repr(as_float)
    return f"{value.numerator}/{value.denominator}"
