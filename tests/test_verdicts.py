"""The verdict statistics on fabricated samples whose truth is known."""

import math

import numpy as np
import pytest
from scipy import stats

from harness.verdicts import Scale, compare, judged_pairs, seeds_needed

POINTS = Scale("points", 1.0)  # accuracies: ±1 point
RATIO = Scale("ratio", 0.05)   # throughput, memory: ±5%


def accuracies(rng, mean, sd_points, n):
    return mean + rng.normal(0, sd_points / 100, n)


def test_identical_distributions_are_equivalent():
    rng = np.random.default_rng(0)
    lightning, flax = accuracies(rng, 0.92, 0.25, 10), accuracies(rng, 0.92, 0.25, 10)
    verdict = compare(lightning, flax, POINTS)
    assert verdict.word == "equivalent" and verdict.text == "equivalent within ±1 pt"
    assert verdict.tost_p < 0.05 and verdict.low < 0 < verdict.high
    assert 0.2 < verdict.p_higher < 0.8


def test_a_shift_of_several_sigma_is_different_with_the_right_sign():
    rng = np.random.default_rng(1)
    lightning = accuracies(rng, 0.92, 0.25, 5)
    flax = accuracies(rng, 0.92 - 0.02, 0.25, 5)  # 2 points lower: 8 sigma, beyond the margin
    verdict = compare(lightning, flax, POINTS)
    assert verdict.word == "different"
    assert verdict.text.startswith("different: flax lower by ")
    assert verdict.high < 0 and verdict.low < -2 < verdict.high  # the interval holds the truth
    assert verdict.p_higher == 0.0
    assert compare(flax, lightning, POINTS).text.startswith("different: flax higher by ")
    assert compare(lightning, flax, POINTS, name="nnx").text.startswith("different: nnx lower by ")


def test_two_noisy_seeds_are_inconclusive_and_say_how_many_would_decide():
    rng = np.random.default_rng(2)
    lightning, flax = accuracies(rng, 0.92, 1.5, 2), accuracies(rng, 0.92, 1.5, 2)
    verdict = compare(lightning, flax, POINTS)
    assert verdict.word == "inconclusive"
    assert verdict.seeds_needed is None or verdict.seeds_needed > 2
    assert verdict.text.startswith("inconclusive: ") and "seeds per side" in verdict.text


def test_one_seed_per_side_gives_no_verdict():
    verdict = compare([0.91], [0.93], POINTS)
    assert verdict.word == "no verdict" and "one seed per side" in verdict.text
    assert verdict.difference == pytest.approx(2.0)


def test_the_interval_and_tost_are_welchs_as_scipy_computes_them():
    rng = np.random.default_rng(3)
    lightning, flax = accuracies(rng, 0.92, 0.3, 6), accuracies(rng, 0.921, 0.6, 4)
    verdict = compare(lightning, flax, POINTS)
    welch = stats.ttest_ind(flax * 100, lightning * 100, equal_var=False)
    interval = welch.confidence_interval(0.95)
    assert verdict.low == pytest.approx(interval.low) and verdict.high == pytest.approx(interval.high)
    assert verdict.welch_p == pytest.approx(welch.pvalue)
    below = stats.ttest_ind(flax * 100, lightning * 100 - 1.0, equal_var=False, alternative="greater")
    above = stats.ttest_ind(flax * 100, lightning * 100 + 1.0, equal_var=False, alternative="less")
    assert verdict.tost_p == pytest.approx(max(below.pvalue, above.pvalue))
    u = stats.mannwhitneyu(flax, lightning).statistic
    assert verdict.p_higher == pytest.approx(u / 24)


def test_throughput_is_compared_as_a_ratio():
    rng = np.random.default_rng(4)
    lightning = 900 * np.exp(rng.normal(0, 0.02, 5))
    flax = 0.45 * 900 * np.exp(rng.normal(0, 0.02, 5))
    verdict = compare(lightning, flax, RATIO)
    assert verdict.word == "different" and verdict.text.startswith("different: flax lower, 0.4")
    assert verdict.low < 0.45 < verdict.high and verdict.high < 0.95
    same = compare(lightning, lightning * np.exp(rng.normal(0, 0.005, 5)), RATIO)
    assert same.word == "equivalent" and same.text == "equivalent within ±5%"
    # The margin is a ratio: 4% faster is inside ±5% (shown once the spread is small enough),
    # 10% faster is not.
    steady = 900 * np.exp(rng.normal(0, 0.004, 5))
    assert compare(steady, steady * 1.04, RATIO).word == "equivalent"
    assert compare(steady, steady * 1.10, RATIO).text.startswith("different: flax higher, 1.10×")


def test_seeds_without_spread_are_decided_exactly():
    assert compare([900.0] * 3, [900.0] * 3, RATIO).word == "equivalent"
    exact = compare([900.0] * 3, [1000.0] * 3, RATIO)
    assert exact.word == "different" and exact.difference == pytest.approx(1000 / 900)


def test_seeds_needed_grows_as_the_difference_nears_the_margin():
    far, near = seeds_needed(0.0, 0.3, 1.0), seeds_needed(0.8, 0.3, 1.0)
    assert far is not None and near is not None and 3 <= far < near
    assert seeds_needed(0.999, 0.3, 1.0) is None  # more than anyone would run
    # Outside the margin it is the seeds needed to show the difference: a larger one needs fewer.
    assert seeds_needed(3.0, 1.0, 1.0) < seeds_needed(1.5, 1.0, 1.0)
    assert not math.isnan(seeds_needed(1.5, 1.0, 1.0))


@pytest.mark.parametrize("difference,sd", [(0.0, 0.3), (0.5, 0.2), (0.5, 0.3), (0.8, 0.3), (1.5, 1.0), (3.0, 1.0)])
def test_seeds_needed_is_statsmodels_power_solved_for_80_percent(difference, sd):
    """Inside the ±1 margin: the nearer one-sided test of TOST; outside: the two-sided Welch test.
    The seeds are statsmodels' solve_power rounded up (and at least one more than the 2 run)."""
    from statsmodels.stats.power import TTestIndPower

    inside = difference < 1.0
    solved = TTestIndPower().solve_power(effect_size=(1.0 - difference if inside else difference) / sd,
                                         alpha=0.05, power=0.8, alternative="larger" if inside else "two-sided")
    assert seeds_needed(difference, sd, 1.0) == max(math.ceil(solved), 3)
    assert seeds_needed(difference, sd, 1.0, seeds_now=1) == max(math.ceil(solved), 2)


def test_the_seed_counts_docs_comparing_md_states():
    """docs/comparing.md: "2–3 seeds per side for ±1 point at std 0.2, and 3 at std 0.3. A true
    gap of 0.5 points needs 3 and 6." (2 by power at std 0.2; 3 once 2 seeds have not decided.)"""
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parents[1] / "docs" / "comparing.md").read_text().split())
    assert ("gives 2–3 seeds per side for ±1 point at std 0.2, and 3 at std 0.3. A true gap of 0.5 points "
            "needs 3 and 6.") in text
    assert (seeds_needed(0.0, 0.2, 1.0, seeds_now=1), seeds_needed(0.0, 0.2, 1.0)) == (2, 3)
    assert seeds_needed(0.0, 0.3, 1.0) == 3
    assert (seeds_needed(0.5, 0.2, 1.0), seeds_needed(0.5, 0.3, 1.0)) == (3, 6)


def test_each_side_is_judged_against_lightning_and_nnx_also_against_linen():
    """The pairs (reference, judged side) a report judges, for each choice of --sides."""
    from itertools import combinations

    from common.sides import SIDES

    assert judged_pairs(("lightning", "flax")) == [("lightning", "flax")]
    assert judged_pairs(("lightning", "nnx")) == [("lightning", "nnx")]
    assert judged_pairs(("flax", "nnx")) == [("flax", "nnx")]
    assert judged_pairs(("lightning", "flax", "nnx")) == [("lightning", "flax"), ("lightning", "nnx"), ("flax", "nnx")]
    assert all(judged_pairs(sides) for n in range(2, len(SIDES) + 1) for sides in combinations(SIDES, n))
