"""The keyed discrete Laplace sampler (jobs/noise.py): the right distribution, exactly reproducible
from its key and seed, and error bars that say what they claim. Every draw comes from a fixed key,
so the statistical checks give one answer on every run (no flaky tests)."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.noise import NoiseKey, as_fraction, ci95, discrete_laplace, pmf, sd
from pipeline.keys import Domain, PseudonymKey

KEY = NoiseKey("v1", bytes(range(32)))
DRAWS = 20_000


def _chi2_critical(df: int, z: float = 3.719) -> float:
    """The chi-square quantile for p = 1e-4 (z of the normal), by Wilson and Hilferty."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(observed: Counter[int], expected: dict[int, float]) -> tuple[float, int]:
    """Chi-square over bins of at least 5 expected draws; the rest pooled into one tail bin."""
    stat, tail_obs, tail_exp, bins = 0.0, 0, 0.0, 0
    for z, e in expected.items():
        if e >= 5:
            stat += (observed.get(z, 0) - e) ** 2 / e
            bins += 1
        else:
            tail_obs += observed.get(z, 0)
            tail_exp += e
    tail_obs += sum(n for z, n in observed.items() if z not in expected)
    tail_exp += DRAWS - sum(expected.values())
    if tail_exp > 0:
        stat += (tail_obs - tail_exp) ** 2 / tail_exp
        bins += 1
    return stat, bins - 1


@pytest.mark.parametrize("scale", [Fraction(1, 3), Fraction(1), Fraction(3), Fraction(13, 2), Fraction(30)])
def test_draws_follow_the_discrete_laplace_distribution(scale: Fraction) -> None:
    draws = Counter(discrete_laplace(scale, KEY.bits("chi2", str(scale), i)) for i in range(DRAWS))
    reach = int(12 * float(scale)) + 3
    expected = {z: DRAWS * pmf(z, scale) for z in range(-reach, reach + 1)}
    stat, df = _chi2(draws, expected)
    assert stat < _chi2_critical(df), (stat, df)
    mean = sum(z * n for z, n in draws.items()) / DRAWS
    assert abs(mean) < 5 * sd(scale) / math.sqrt(DRAWS)  # centred: the noise adds no bias


def test_a_large_scale_has_the_spread_it_claims() -> None:
    scale = Fraction(10_800)  # the daily duration's: 3 x 3600 s at epsilon 1
    draws = [discrete_laplace(scale, KEY.bits("wide", i)) for i in range(DRAWS)]
    spread = math.sqrt(sum(z * z for z in draws) / DRAWS)
    assert abs(spread / sd(scale) - 1) < 0.05
    inside = sum(1 for z in draws if abs(z) <= ci95(scale)) / DRAWS
    assert 0.94 < inside < 0.96


def test_uniform_integers_are_unbiased() -> None:
    bits = KEY.bits("uniform")
    counts = Counter(bits.below(7) for _ in range(DRAWS))
    expected = {i: DRAWS / 7 for i in range(7)}
    stat, df = _chi2(counts, expected)
    assert set(counts) == set(range(7)) and stat < _chi2_critical(df)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(), n=st.integers(min_value=1, max_value=2**70))
def test_below_stays_in_range_and_replays(seed: int, n: int) -> None:
    first = [KEY.bits("range", seed).below(n) for _ in range(1)]
    bits = KEY.bits("range", seed)
    assert [bits.below(n)] == first
    assert 0 <= first[0] < n


@settings(max_examples=200, deadline=None)
@given(
    seed=st.tuples(st.text(max_size=8), st.integers(), st.none()),
    num=st.integers(min_value=1, max_value=10_000),
    den=st.integers(min_value=1, max_value=100),
)
def test_a_draw_is_a_function_of_key_and_seed(seed: tuple[object, ...], num: int, den: int) -> None:
    scale = Fraction(num, den)
    assert discrete_laplace(scale, KEY.bits(*seed)) == discrete_laplace(scale, KEY.bits(*seed))


def test_other_keys_and_seeds_give_other_noise() -> None:
    other = NoiseKey("v1", bytes(range(1, 33)))
    scale = Fraction(30)
    mine = [discrete_laplace(scale, KEY.bits("g", i)) for i in range(200)]
    assert mine != [discrete_laplace(scale, other.bits("g", i)) for i in range(200)]
    assert mine != [discrete_laplace(scale, KEY.bits("h", i)) for i in range(200)]


def test_a_seed_names_an_instant_not_a_time_zone() -> None:
    utc = datetime(2026, 6, 1, 23, tzinfo=UTC)
    kolkata = utc.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert KEY.bits("t", kolkata).below(2**64) == KEY.bits("t", utc).below(2**64)


@settings(max_examples=300, deadline=None)
@given(num=st.integers(min_value=1, max_value=200_000), den=st.integers(min_value=1, max_value=50))
def test_ci95_is_the_smallest_95_percent_interval(num: int, den: int) -> None:
    scale = Fraction(num, den)
    q = math.exp(-1 / float(scale))
    m = ci95(scale)

    def outside(width: int) -> float:  # P(|Z| > width), in closed form
        return 2 * q ** (width + 1) / (1 + q)

    assert outside(m) <= 0.05 + 1e-12
    assert m == 0 or outside(m - 1) > 0.05 - 1e-12


@pytest.mark.parametrize("scale", [Fraction(1, 2), Fraction(3), Fraction(40)])
def test_sd_matches_the_distribution(scale: Fraction) -> None:
    reach = int(60 * float(scale)) + 10
    variance = sum(z * z * pmf(z, scale) for z in range(-reach, reach + 1))
    assert math.sqrt(variance) == pytest.approx(sd(scale), rel=1e-6)


def test_epsilon_is_read_as_the_decimal_written() -> None:
    assert as_fraction(0.1) == Fraction(1, 10)
    assert as_fraction(1.0) == 1 and as_fraction("0.25") == Fraction(1, 4)


def test_keys_print_as_stars_and_derived_secrets_are_not_tokens() -> None:
    key = PseudonymKey("v1", bytes(range(32)))
    noise_key = NoiseKey("v1", key.derive("aggregate-noise"))
    assert bytes(range(32)).hex() not in repr(noise_key) and "***" in repr(noise_key)
    derived = key.derive("aggregate-noise")
    assert len(derived) == 32 and derived != key.derive("other")
    assert derived.hex()[:32] not in {key.token(d, "aggregate-noise") for d in Domain}
    with pytest.raises(ValueError):
        key.derive("")
    with pytest.raises(ValueError):
        discrete_laplace(Fraction(0), KEY.bits("x"))
