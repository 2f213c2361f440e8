"""Keyed discrete Laplace noise: what makes an aggregate's published values differentially private
across builds (jobs/anonymize.py; docs/ARCHITECTURE.md "Noise on the aggregates").

The mechanism. A published value is its true value plus Z, where P(Z = z) is proportional to
exp(-|z| / b): the discrete Laplace (two-sided geometric) distribution of scale b = bound / epsilon.
`bound` is the most one subject can change the true value (their contribution is clamped to it
before counting), so one value is epsilon-differentially private for one subject's contribution.

Integers only. Z is drawn exactly, with integer arithmetic and uniform random integers, by the
rejection sampler of Canonne, Kamath and Steinke ("The Discrete Gaussian for Differential Privacy",
2020, algorithms 1 and 2), the one OpenDP and Google's libraries use. There is no floating point
on the way from random bits to the published integer, so none of the attacks on floating-point
Laplace samplers (values that only some inputs can produce) apply. Floats appear only in the
error bars reported beside the values (`sd`, `ci95`), never in a draw.

Keyed, not random. The random bits come from HMAC-SHA256 under a key derived from the
pseudonymization key (`pipeline.keys.PseudonymKey.derive`), in counter mode, seeded by what the
caller names: anonymize seeds each row by its aggregate, its group and its true values. The same
data therefore gives the same noise on every build (rebuilding does not let anyone average it
away), and any change of a group's true values gives fresh, independent-looking noise. Without
the key the bits cannot be predicted; with it, anyone could subtract the noise, so the key stays
where the pseudonymization key stays.
"""

from __future__ import annotations

import hmac
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from fractions import Fraction

BLOCK_BITS = 256  # one HMAC-SHA256 output


@dataclass(frozen=True)
class NoiseKey:
    """The secret the noise is drawn under. Prints as ***."""

    version: str
    secret: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"NoiseKey(version={self.version!r}, secret=***)"

    def bits(self, *seed: object) -> KeyedBits:
        """The random bits of one seed: any JSON-able parts, datetimes as UTC ISO text."""
        material = json.dumps([_canonical(p) for p in seed], separators=(",", ":")).encode()
        return KeyedBits(hmac.digest(self.secret, material, "sha256"))


def _canonical(part: object) -> object:
    if isinstance(part, datetime):
        return part.astimezone(UTC).isoformat() if part.tzinfo else part.isoformat()
    if isinstance(part, date):
        return part.isoformat()
    return part


class KeyedBits:
    """Uniform random integers from HMAC-SHA256(seed, counter): a deterministic stream per seed."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._pool = 0
        self._pool_bits = 0

    def _take(self, n: int) -> int:
        while self._pool_bits < n:
            block = hmac.digest(self._seed, self._counter.to_bytes(8, "big"), "sha256")
            self._counter += 1
            self._pool = (self._pool << BLOCK_BITS) | int.from_bytes(block, "big")
            self._pool_bits += BLOCK_BITS
        self._pool_bits -= n
        out = self._pool >> self._pool_bits
        self._pool &= (1 << self._pool_bits) - 1
        return out

    def below(self, n: int) -> int:
        """Uniform on 0 .. n - 1 (rejection: never the bias of a modulo)."""
        if n < 1:
            raise ValueError("below(n) needs n >= 1")
        width = (n - 1).bit_length()
        while True:
            x = self._take(width) if width else 0
            if x < n:
                return x


def _bernoulli(num: int, den: int, bits: KeyedBits) -> bool:
    """True with probability num / den (0 <= num <= den)."""
    return bits.below(den) < num


def _bernoulli_exp_le1(num: int, den: int, bits: KeyedBits) -> bool:
    """True with probability exp(-num / den), for 0 <= num / den <= 1 (CKS algorithm 1)."""
    k = 1
    while _bernoulli(num, den * k, bits):
        k += 1
    return k % 2 == 1


def _bernoulli_exp(num: int, den: int, bits: KeyedBits) -> bool:
    """True with probability exp(-num / den), for num / den >= 0: exp(-1) per whole unit, then the rest."""
    while num > den:
        if not _bernoulli_exp_le1(1, 1, bits):
            return False
        num -= den
    return _bernoulli_exp_le1(num, den, bits)


def discrete_laplace(scale: Fraction, bits: KeyedBits) -> int:
    """One draw of Z with P(Z = z) proportional to exp(-|z| / scale) (CKS algorithm 2), exactly.

    With scale = t / s: X = U + t V is geometric with P(X = x) ~ exp(-x / t) (U uniform below t,
    kept with probability exp(-U / t); V counts successes of Bernoulli(exp(-1))), Y = X // s has
    P(Y = y) ~ exp(-y s / t), and a fair sign makes it two-sided (a negative zero is drawn again,
    so that zero is not counted twice)."""
    if scale <= 0:
        raise ValueError("the scale of the noise must be positive")
    t, s = scale.numerator, scale.denominator
    while True:
        u = bits.below(t)
        if not _bernoulli_exp(u, t, bits):
            continue
        v = 0
        while _bernoulli_exp(1, 1, bits):
            v += 1
        y = (u + t * v) // s
        negative = bits.below(2) == 1
        if negative and y == 0:
            continue
        return -y if negative else y


def pmf(z: int, scale: Fraction) -> float:
    """P(Z = z) of the discrete Laplace of `scale` (for tests and error bars)."""
    q = math.exp(-1 / float(scale))
    return (1 - q) / (1 + q) * q ** abs(z)


def sd(scale: Fraction) -> float:
    """The standard deviation of the noise: sqrt(2q) / (1 - q), q = exp(-1 / scale)."""
    q = math.exp(-1 / float(scale))
    return math.sqrt(2 * q) / (1 - q)


def ci95(scale: Fraction) -> int:
    """The smallest m with P(|Z| <= m) >= 95%: a published value is within m of the (clamped) true
    value 19 times in 20. P(|Z| > m) = 2 q^(m + 1) / (1 + q)."""
    q = math.exp(-1 / float(scale))
    m = math.ceil(math.log(0.05 * (1 + q) / 2) / math.log(q) - 1)
    while m > 0 and 2 * q**m / (1 + q) <= 0.05:  # guard the float rounding: the smallest such m
        m -= 1
    while 2 * q ** (m + 1) / (1 + q) > 0.05:
        m += 1
    return max(m, 0)


def as_fraction(value: float | int | str | Fraction) -> Fraction:
    """A decimal as written (0.1 is 1/10, not the binary float nearest it)."""
    if isinstance(value, Fraction):
        return value
    return Fraction(str(value))
