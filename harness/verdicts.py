"""One side against its reference on one metric over several seeds per side (flax against
Lightning, say): an interval, an equivalence test and a verdict in words. Every test and interval
comes from statsmodels or scipy. Which pairs of sides a report judges: judged_pairs().

- The difference side - reference (flax - lightning), with its 95% interval: Welch's t (no
  equal-variance assumption).
- Equivalence: two one-sided Welch t-tests (TOST, Schuirmann 1987) against a margin: the sides are
  equivalent when the difference is shown to lie inside (-margin, +margin).
- P(flax > lightning): the Mann-Whitney U statistic over n_flax * n_lightning, the probability
  that a random flax seed beats a random Lightning seed (rliable's "probability of improvement").
- Seeds needed: statsmodels' power of the t-test (80%), if the true difference were the one seen.

Throughput, memory, wall time and loss are compared as ratios: on the log scale, so the margin
+-5% means flax/lightning within [1/1.05, 1.05], and the interval is that of the geometric means' ratio.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats
from statsmodels.stats.power import TTestIndPower
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttost_ind

ALPHA = 0.05
POWER = 0.8
MOST_SEEDS = 1000  # beyond this, "more than" is all a power estimate can honestly say

# The pairing rule: Lightning is the reference every other side is judged against, and NNX is
# also judged against linen (the side "flax"), the Flax API it replaces.
REFERENCE = "lightning"
ALSO_AGAINST = {"nnx": "flax"}


def judged_pairs(sides: Sequence[str]) -> list[tuple[str, str]]:
    """(reference, judged side) for every pair of `sides` a report judges, in the order it shows
    them: each side against Lightning, then NNX against linen. ("lightning", "flax") gives the
    one pair of the two-side report; ("lightning", "flax", "nnx") adds ("lightning", "nnx") and
    ("flax", "nnx"); ("flax", "nnx") judges NNX against linen alone."""
    pairs = [(REFERENCE, side) for side in sides if REFERENCE in sides and side != REFERENCE]
    return pairs + [(ALSO_AGAINST[side], side) for side in sides if ALSO_AGAINST.get(side) in sides]


@dataclass(frozen=True)
class Scale:
    """How a metric is compared: 'points' (an accuracy, margin in points) or 'ratio' (margin in %)."""
    kind: str
    margin: float  # points for 'points', a fraction (0.05) for 'ratio'

    def transform(self, values: np.ndarray) -> np.ndarray:
        return np.log(values) if self.kind == "ratio" else values * 100.0

    @property
    def bound(self) -> float:
        return math.log1p(self.margin) if self.kind == "ratio" else self.margin

    def margin_text(self) -> str:
        return f"±{self.margin * 100:g}%" if self.kind == "ratio" else f"±{self.margin:g} pt"


@dataclass(frozen=True)
class Verdict:
    word: str          # 'equivalent', 'different', 'inconclusive' or 'no verdict'
    text: str          # the verdict in words, as the report prints it
    difference: float  # side - reference in points, or side / reference for a ratio
    low: float
    high: float
    tost_p: float
    welch_p: float
    p_higher: float    # P(side > reference): a random seed of the side beats one of the reference
    seeds_needed: int | None


def compare(reference: Sequence[float], side: Sequence[float], scale: Scale, name: str = "flax") -> Verdict:
    """`side` (called `name` in the verdict's words) against `reference`, one value per seed."""
    l_raw, f_raw = np.asarray(reference, float), np.asarray(side, float)
    l_raw, f_raw = l_raw[np.isfinite(l_raw)], f_raw[np.isfinite(f_raw)]
    if scale.kind == "ratio":
        l_raw, f_raw = l_raw[l_raw > 0], f_raw[f_raw > 0]
    if len(l_raw) == 0 or len(f_raw) == 0:
        return Verdict("no verdict", "no values", *([math.nan] * 6), None)
    p_higher = stats.mannwhitneyu(f_raw, l_raw).statistic / (len(f_raw) * len(l_raw))
    l, f = scale.transform(l_raw), scale.transform(f_raw)
    d = float(f.mean() - l.mean())
    if min(len(l), len(f)) < 2:
        return Verdict("no verdict", "no verdict: one seed per side cannot tell a framework from "
                       "the seed; run several (python -m harness.sweep --seeds 5)",
                       _shown(d, scale), math.nan, math.nan, math.nan, math.nan, p_higher, None)
    m = scale.bound
    if l.std() == 0 and f.std() == 0:
        # Every seed gave the same value on each side (a memory figure, a tiny test set): the
        # difference is known exactly and t-statistics are undefined.
        lo = hi = d
        tost_p, welch_p = (0.0 if abs(d) < m else 1.0), (1.0 if d == 0 else 0.0)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            tost_p = float(ttost_ind(f, l, -m, m, usevar="unequal")[0])
            means = CompareMeans(DescrStatsW(f), DescrStatsW(l))
            lo, hi = (float(x) for x in means.tconfint_diff(alpha=ALPHA, usevar="unequal"))
            welch_p = float(means.ttest_ind(usevar="unequal")[1])
    shown = (_shown(d, scale), _shown(lo, scale), _shown(hi, scale))
    if tost_p < ALPHA:
        return Verdict("equivalent", f"equivalent within {scale.margin_text()}", *shown,
                       tost_p, welch_p, p_higher, None)
    if welch_p < ALPHA:
        way = "higher" if d > 0 else "lower"
        if scale.kind == "ratio":
            text = f"different: {name} {way}, {shown[0]:.2f}× [{shown[1]:.2f}×, {shown[2]:.2f}×]"
        else:
            a, b = sorted((abs(lo), abs(hi)))
            text = f"different: {name} {way} by {abs(d):.2f} pt [{a:.2f}, {b:.2f}]"
        return Verdict("different", text, *shown, tost_p, welch_p, p_higher, None)
    needed = seeds_needed(d, float(np.sqrt((l.var(ddof=1) + f.var(ddof=1)) / 2)), m, min(len(l), len(f)))
    text = ("inconclusive: more than {0} seeds per side would be needed".format(MOST_SEEDS)
            if needed is None else f"inconclusive: about {needed} seeds per side would decide it")
    return Verdict("inconclusive", text, *shown, tost_p, welch_p, p_higher, needed)


def seeds_needed(difference: float, sd: float, margin: float, seeds_now: int = 2) -> int | None:
    """Seeds per side for 80% power, if the true difference were `difference`: to show
    equivalence when it lies inside the margin (the nearer one-sided test of TOST decides), to
    show a difference when it lies outside. At least one more than `seeds_now`, which did not
    decide it. None: more than MOST_SEEDS."""
    inside = abs(difference) < margin
    gap = margin - abs(difference) if inside else abs(difference)
    if sd <= 0 or gap <= 0:
        return None
    seeds = np.arange(2, MOST_SEEDS + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        power = TTestIndPower().power(effect_size=gap / sd, nobs1=seeds, alpha=ALPHA,
                                      alternative="larger" if inside else "two-sided")
    enough = seeds[np.nan_to_num(power) >= POWER]
    if len(enough) == 0:
        return None
    return max(int(enough[0]), seeds_now + 1)


def _shown(value: float, scale: Scale) -> float:
    """Back from the compared scale to the reported one: points stay points, a log ratio becomes a ratio."""
    return math.exp(value) if scale.kind == "ratio" else value
