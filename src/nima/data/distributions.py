"""Mean opinion scores -> 10-bin score distributions (ratings 1..10).

Two ways to spread one number over ten bins:
- maximum entropy: of all distributions on 1..10 with mean m, the one that assumes least.
  It is p_k ∝ exp(λk) (a Lagrange-multiplier result); λ is found by root finding on the mean,
  which is strictly increasing in λ. This is how the shipped TID2013 labels were made.
- discretised normal: N(mean, sd) integrated over [k-0.5, k+0.5], tails folded into bins 1 and
  10; uses the raters' spread when the dataset publishes it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special

from nima.scores import N_BINS, RATINGS

LOW, HIGH = 1.0, float(N_BINS)


def rescale(value: float, lo: float, hi: float) -> float:
    """Map a score on [lo, hi] linearly onto [1, 10] (TID2013: 0..9 -> 1..10)."""
    return LOW + (HIGH - LOW) * (value - lo) / (hi - lo)


def _maxent(lam: float) -> np.ndarray:
    # softmax of λk, shifted so that exp never overflows for any λ
    z = lam * RATINGS
    e = np.exp(z - z.max())
    return e / e.sum()


def maxent_distribution(mean: float) -> np.ndarray:
    """The maximum-entropy distribution on ratings 1..10 whose mean is `mean`."""
    if not LOW <= mean <= HIGH:
        raise ValueError(f"mean {mean} is outside [{LOW:g}, {HIGH:g}]")
    if mean - LOW < 1e-12 or HIGH - mean < 1e-12:
        # λ -> ±inf: all mass on the end bin.
        p = np.zeros(N_BINS)
        p[0 if mean - LOW < 1e-12 else -1] = 1.0
        return p

    def gap(lam: float) -> float:
        return float(_maxent(lam) @ RATINGS) - mean

    hi = 1.0
    while gap(hi) < 0:
        hi *= 2.0
    lo = -1.0
    while gap(lo) > 0:
        lo *= 2.0
    lam = optimize.brentq(gap, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
    return _maxent(lam)


def normal_distribution(mean: float, sd: float) -> np.ndarray:
    """N(mean, sd) discretised onto bins 1..10; sd 0 puts all mass on the nearest bin."""
    if not LOW <= mean <= HIGH:
        raise ValueError(f"mean {mean} is outside [{LOW:g}, {HIGH:g}]")
    if not (sd >= 0 and math.isfinite(sd)):
        raise ValueError(f"standard deviation {sd} must be finite and non-negative")
    if sd == 0:
        p = np.zeros(N_BINS)
        p[int(math.floor(mean + 0.5)) - 1] = 1.0
        return p
    edges = np.concatenate(([-np.inf], RATINGS[:-1] + 0.5, [np.inf]))
    cdf = special.ndtr((edges - mean) / sd)
    p = np.diff(cdf)
    return p / p.sum()
