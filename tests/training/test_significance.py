"""Wilson intervals and the exact McNemar test against values worked out by hand."""

from __future__ import annotations

import pytest

from training import significance
from training.significance import mcnemar, mcnemar_p, wilson

Z2 = 1.959964**2


def test_wilson_interval_of_3_in_10_matches_the_textbook_value():
    # (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n) with p = 0.3, n = 10
    low, high = wilson(3, 10)
    assert low == pytest.approx(0.107791, abs=1e-6) and high == pytest.approx(0.603222, abs=1e-6)


def test_wilson_interval_at_none_and_all_successes_closes_on_the_bound():
    # At 0 of n the interval is [0, z²/(n + z²)]; at n of n it is [n/(n + z²), 1].
    assert wilson(0, 10) == (0.0, pytest.approx(Z2 / (10 + Z2)))
    assert wilson(10, 10) == (pytest.approx(10 / (10 + Z2)), 1.0)
    assert wilson(0, 10)[1] == pytest.approx(0.277533, abs=1e-6)
    assert wilson(0, 0) == (0.0, 1.0)  # no problems: nothing is ruled out


def test_wilson_interval_narrows_with_more_problems_and_holds_the_rate():
    small, large = wilson(8, 32), wilson(80, 320)
    assert small[0] < 0.25 < small[1] and large[0] < 0.25 < large[1]
    assert large[1] - large[0] < small[1] - small[0]


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError, match="11 of 10"):
        wilson(11, 10)


def test_mcnemar_p_against_binomial_sums_by_hand():
    # b = 1, c = 9: 2 * (C(10,0) + C(10,1)) / 2^10 = 22/1024
    assert mcnemar_p(1, 9) == 22 / 1024 == mcnemar_p(9, 1)
    # b = 0, c = 5: 2 * 1/32
    assert mcnemar_p(0, 5) == 0.0625
    # b = 2, c = 7: 2 * (1 + 9 + 36) / 512
    assert mcnemar_p(2, 7) == 92 / 512


def test_mcnemar_p_is_one_for_ties_and_for_no_discordant_pairs():
    assert mcnemar_p(5, 5) == 1.0  # 2 * 638/1024 > 1, capped
    assert mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(0, 0) == 1.0  # the two models solved exactly the same problems


def test_mcnemar_counts_only_the_problems_one_model_solves():
    first = [True, True, False, False, True, False]
    second = [True, False, True, True, True, True]
    result = mcnemar(first, second)
    assert (result.b, result.c) == (1, 3) and result.p == mcnemar_p(1, 3) == 2 * 5 / 16
    assert not result.significant
    assert mcnemar([False] * 12, [True] * 12).significant  # 2 / 4096
    with pytest.raises(ValueError, match="paired"):
        mcnemar([True], [True, False])


def test_significance_threshold_is_five_percent():
    assert significance.SIGNIFICANT == 0.05
    assert significance.McNemar(b=0, c=6, p=0.03125).significant
    assert not significance.McNemar(b=0, c=5, p=0.0625).significant
