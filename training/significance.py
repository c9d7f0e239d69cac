"""How sure an eval can be: Wilson score intervals for a rate, the exact McNemar test for paired models.

The held-out sets are small (tens to hundreds of problems), so a difference of a few problems
between two models is often noise. Each rate carries its 95% Wilson interval (which, unlike the
normal approximation, stays inside [0, 1] and is not empty at 0 or n successes), and two models
answering the same problems are compared on the problems only one of them solves (exact
two-sided McNemar: a binomial test of those discordant pairs at 1/2). Pure Python: exact integer
arithmetic, no statistics package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

Z95 = 1.959964  # the standard normal's 97.5% quantile: a two-sided 95% interval
SIGNIFICANT = 0.05  # p below this is reported as a difference; at or above it, "not significant"


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of successes/n at z (95% by default); (0, 1) when n is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson needs 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0  # no evidence: every rate is possible
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 or n successes the bound is exactly 0 or 1; floating point may miss it by 1e-17.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class McNemar:
    """A paired comparison: b problems only the first model solves, c only the second, and the exact p."""

    b: int
    c: int
    p: float

    @property
    def significant(self) -> bool:
        """Whether p < 0.05."""
        return self.p < SIGNIFICANT


def binomial_cdf_half(k: int, n: int) -> Fraction:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly."""
    return Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p of b and c discordant pairs: min(1, 2 * P(X <= min(b, c))), 1 when b + c = 0."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar needs counts >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(min(Fraction(1), 2 * binomial_cdf_half(min(b, c), b + c)))


def mcnemar(first: Sequence[bool], second: Sequence[bool]) -> McNemar:
    """The exact McNemar test of two models' per-problem outcomes, the same problems in the same order."""
    if len(first) != len(second):
        raise ValueError(f"mcnemar needs paired outcomes: {len(first)} != {len(second)} problems")
    b = sum(1 for x, y in zip(first, second) if x and not y)
    c = sum(1 for x, y in zip(first, second) if y and not x)
    return McNemar(b=b, c=c, p=mcnemar_p(b, c))
