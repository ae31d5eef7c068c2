"""Statistics for evaluation and comparison: Wilson interval, exact McNemar test, paired sign-flip test,
paired bootstrap.

Plain Python (no numpy) so the compare step runs anywhere; n is ~1,273 questions, so speed is no concern.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

# Two-sided 95% normal quantile.
Z_95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; ``(0.0, 1.0)`` when ``n`` is 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At 0 or n successes a bound is exactly 0 or 1; the formula only gets there up to rounding.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def mcnemar_exact_p(baseline_only: int, tuned_only: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test (p = 1/2) on the discordant pairs.

    ``baseline_only``: questions only the baseline got right; ``tuned_only``: only the tuned model.
    The two-sided p is twice the smaller tail, capped at 1 (1.0 when there are no discordant pairs).
    """
    if baseline_only < 0 or tuned_only < 0:
        raise ValueError("discordant counts must be >= 0")
    n = baseline_only + tuned_only
    if n == 0:
        return 1.0
    k = min(baseline_only, tuned_only)
    # log-space binomial terms: exact, and safe for large n.
    log_half_n = n * math.log(0.5)
    tail = sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n) for i in range(k + 1))
    return min(1.0, 2.0 * tail)


def paired_sign_flip_p(differences: Sequence[float], *, resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided paired sign-flip (permutation) test of ``sum(differences)``, e.g. per-question tuned minus
    baseline mean correctness; with 0/1 scores its exact form is McNemar's test.

    Under the null hypothesis each question's difference is as likely negative as positive. Questions with the
    same absolute difference are flipped as one binomial draw, so a resample costs one draw per distinct value.
    Monte Carlo p-value ``(1 + #{|T*| >= |T|}) / (1 + resamples)``: never 0, reproducible for a given seed.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    observed = abs(sum(differences))
    groups: dict[float, int] = {}
    for d in differences:
        size = round(abs(d), 12)  # fractions of k samples: equal values may differ in the last bits
        if size:
            groups[size] = groups.get(size, 0) + 1
    if not groups:
        return 1.0
    tolerance = 1e-9 * max(1.0, observed)
    rng = random.Random(seed)
    at_least_as_extreme = 0
    for _ in range(resamples):
        total = sum(size * (2 * rng.getrandbits(count).bit_count() - count) for size, count in groups.items())
        at_least_as_extreme += abs(total) >= observed - tolerance
    return (1 + at_least_as_extreme) / (1 + resamples)


def paired_bootstrap_ci(
    baseline_correct: Sequence[bool | float],
    tuned_correct: Sequence[bool | float],
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(tuned) - mean(baseline)``, resampling questions (pairs) with replacement.

    Scores are per question: booleans, or fractions of correct samples when a question was sampled k times.
    """
    if len(baseline_correct) != len(tuned_correct):
        raise ValueError(f"paired samples differ in length: {len(baseline_correct)} vs {len(tuned_correct)}")
    n = len(baseline_correct)
    if n == 0:
        raise ValueError("paired bootstrap needs at least one pair")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diffs = [float(t) - float(b) for b, t in zip(baseline_correct, tuned_correct)]
    rng = random.Random(seed)
    choices = rng.choices
    deltas = sorted(sum(choices(diffs, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    low_index = int(math.floor(tail * (resamples - 1)))
    high_index = int(math.ceil((1 - tail) * (resamples - 1)))
    return deltas[low_index], deltas[high_index]
