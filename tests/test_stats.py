"""The statistics around the numbers: McNemar's exact test and its interval against the binomial by hand and scipy,
the per-image record, the split's resolution, and the t-interval over seeds."""

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from gkd_tune.core.stats import (Difference, PairedComparison, binomial_se, pack_correct, resolvable_difference,
                                 unpack_correct)


def runs(a_only: int, b_only: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    order = np.random.default_rng(1).permutation(len(a))  # the images in any order
    return np.array(a)[order], np.array(b)[order]


@pytest.mark.parametrize("a_only, b_only", [(25, 16), (9, 1), (3, 3), (0, 7), (40, 10)])
def test_mcnemar_exact_is_the_two_sided_binomial_of_the_discordant_images(a_only, b_only):
    a, b = runs(a_only, b_only, both=100, neither=19)
    comparison = PairedComparison.of(a, b)
    assert (comparison.n, comparison.a_only, comparison.b_only) == (a_only + b_only + 119, a_only, b_only)
    d, k = a_only + b_only, min(a_only, b_only)
    by_hand = min(1.0, 2 * sum(math.comb(d, i) for i in range(k + 1)) / 2 ** d)  # both tails, Binomial(d, 1/2)
    assert comparison.p_value == pytest.approx(by_hand, rel=1e-12)
    assert comparison.p_value == pytest.approx(binomtest(a_only, d, 0.5).pvalue, rel=1e-12)
    n = comparison.n
    assert comparison.difference == pytest.approx((a.mean() - b.mean()))
    half = 1.959963984540054 * math.sqrt(d - (a_only - b_only) ** 2 / n) / n
    assert comparison.interval == pytest.approx((comparison.difference - half, comparison.difference + half))
    assert comparison.distinguishable == (by_hand < 0.05)


def test_the_text_says_not_distinguishable_where_it_is_not():
    close = PairedComparison.of(*runs(4, 2, 120, 18))  # the quickstart's case: 2 images apart of 144
    assert close.text().endswith("McNemar p = 0.69: not distinguishable") and not close.distinguishable
    assert close.text().startswith("+0.0139 [")
    clear = PairedComparison.of(*runs(30, 2, 100, 12))
    assert clear.distinguishable and clear.text().endswith(": distinguishable")
    same = PairedComparison.of(*runs(0, 0, 130, 14))
    assert same.p_value == 1.0 and same.interval == (0.0, 0.0)
    with pytest.raises(ValueError, match="different images"):
        PairedComparison.of(np.ones(3, bool), np.ones(4, bool))


@pytest.mark.parametrize("count", [1, 7, 8, 144, 5000])
def test_per_image_correctness_survives_its_text(count):
    flags = np.random.default_rng(count).random(count) < 0.7
    text = pack_correct(flags)
    assert np.array_equal(unpack_correct(text), flags)
    if count == 5000:
        assert len(text) < 900  # a few hundred bytes per run


def test_the_resolution_of_a_split():
    assert binomial_se(0.5, 144) == pytest.approx(0.5 / 12)
    assert binomial_se(0.9, 1000) == pytest.approx(math.sqrt(0.09 / 1000))
    # two independent runs at 90% on 1,000 images: differences under 2.6 points are noise at 95%
    assert resolvable_difference(0.9, 1000) == pytest.approx(1.96 * math.sqrt(2 * 0.09 / 1000), rel=1e-3)


def test_a_mean_over_seeds_has_a_t_interval():
    level = Difference.of([0.80, 0.82, 0.84])
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert level.value_text() == f"0.8200 [{0.82 - half:.4f}, {0.82 + half:.4f}] n=3"
    assert Difference.of([0.8]).value_text() == "0.8000 (n=1, no interval)" and Difference.of([]) is None
