import math

import pytest

from components.common.stats import mcnemar_exact_p, paired_bootstrap_ci, paired_sign_flip_p, wilson_interval


def test_wilson_bounds_solve_the_score_equation():
    # Wilson's bounds are the p0 where the score statistic equals z: (p_hat - p0)^2 = z^2 p0 (1 - p0) / n.
    successes, n, z = 81, 263, 1.959963984540054
    p_hat = successes / n
    low, high = wilson_interval(successes, n)
    for bound in (low, high):
        assert (p_hat - bound) ** 2 == pytest.approx(z * z * bound * (1 - bound) / n, rel=1e-9)
    assert low < p_hat < high


def test_wilson_interval_edges_stay_inside_unit_range():
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_mcnemar_exact_p_is_the_two_sided_binomial_test():
    # n = 10 discordant pairs, 1 vs 9: 2 * (C(10,0) + C(10,1)) / 2^10 = 22/1024.
    assert mcnemar_exact_p(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact_p(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact_p(5, 5) == 1.0
    assert mcnemar_exact_p(0, 0) == 1.0
    # 0 vs 6: 2 / 64.
    assert mcnemar_exact_p(0, 6) == pytest.approx(2 / 64)


def test_mcnemar_exact_p_stays_finite_for_large_counts():
    p = mcnemar_exact_p(400, 500)
    assert 0 < p < 0.01


def test_paired_bootstrap_ci_is_reproducible_and_brackets_the_delta():
    baseline = [i % 3 == 0 for i in range(300)]
    tuned = [i % 3 != 2 for i in range(300)]
    delta = sum(tuned) / 300 - sum(baseline) / 300
    first = paired_bootstrap_ci(baseline, tuned, resamples=2000, seed=7)
    assert first == paired_bootstrap_ci(baseline, tuned, resamples=2000, seed=7)
    assert first[0] < delta < first[1]


def test_paired_bootstrap_ci_of_identical_runs_is_zero():
    same = [True, False, True, True]
    assert paired_bootstrap_ci(same, same, resamples=200) == (0.0, 0.0)


def test_paired_bootstrap_ci_rejects_unpaired_input():
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap_ci([True], [True, False])


def test_sign_flip_on_zero_one_scores_matches_exact_mcnemar():
    differences = [1.0] * 14 + [-1.0] * 4 + [0.0] * 80
    p = paired_sign_flip_p(differences, resamples=200_000, seed=1)
    assert p == pytest.approx(mcnemar_exact_p(4, 14), abs=0.003)
    assert paired_sign_flip_p([0.0, 0.0]) == 1.0


def test_sign_flip_is_reproducible_and_never_zero():
    differences = [0.5] * 300 + [-0.25] * 10
    assert paired_sign_flip_p(differences, seed=3) == paired_sign_flip_p(differences, seed=3)
    assert paired_sign_flip_p(differences, resamples=1000) == pytest.approx(1 / 1001)
