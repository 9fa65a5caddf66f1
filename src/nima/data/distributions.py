"""Mean opinion scores -> 10-bin score distributions (ratings 1..10).

Two ways to spread one number over ten bins:
- maximum entropy: of all distributions on 1..10 with mean m, the one that assumes least.
  It is p_k ∝ exp(λk) (a Lagrange-multiplier result); λ is found by root finding on the mean,
  which is strictly increasing in λ (safeguarded Newton, all rows at once). This is how the
  shipped TID2013 labels were made.
- discretised normal: N(mean, sd) integrated over [k-0.5, k+0.5], tails folded into bins 1 and
  10; uses the raters' spread when the dataset publishes it.
"""

from __future__ import annotations


import numpy as np
from scipy import special

from nima.scores import N_BINS, RATINGS

LOW, HIGH = 1.0, float(N_BINS)


def rescale(value: float, lo: float, hi: float) -> float:
    """Map a score on [lo, hi] linearly onto [1, 10] (TID2013: 0..9 -> 1..10)."""
    return LOW + (HIGH - LOW) * (value - lo) / (hi - lo)


def _maxent(lam: np.ndarray) -> np.ndarray:
    # softmax of λk per row, shifted so that exp never overflows for any λ
    z = np.multiply.outer(lam, RATINGS)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _check_means(means: np.ndarray) -> None:
    bad = ~((means >= LOW) & (means <= HIGH))
    if bad.any():
        raise ValueError(f"mean {means[bad][0]} is outside [{LOW:g}, {HIGH:g}]")


# |λ| beyond this puts less than 1e-27 on the far bins: every mean more than 1e-12 from an end
# has its λ inside.
_LAMBDA_BOUND = 64.0


def maxent_distributions(means: np.ndarray) -> np.ndarray:
    """The maximum-entropy distributions on ratings 1..10 with these means, shape (n, 10).

    λ per row by Newton's method on the mean (its derivative is the variance, > 0), kept
    inside a bisection bracket so that it cannot diverge; all rows at once, so 255,000 means
    take a fraction of a second instead of a root finder call each.
    """
    means = np.asarray(means, dtype=np.float64).reshape(-1)
    _check_means(means)
    out = np.zeros((means.size, N_BINS))
    at_low, at_high = means - LOW < 1e-12, HIGH - means < 1e-12
    out[at_low, 0] = 1.0  # λ -> -inf: all mass on the end bin
    out[at_high & ~at_low, -1] = 1.0
    inner = ~(at_low | at_high)
    target = means[inner]
    lam = np.zeros_like(target)
    lo, hi = np.full_like(target, -_LAMBDA_BOUND), np.full_like(target, _LAMBDA_BOUND)
    active = np.arange(target.size)  # rows whose λ still moves
    for _ in range(200):
        if not active.size:
            break
        x = lam[active]
        p = _maxent(x)
        mean = p @ RATINGS
        gap = mean - target[active]
        hi[active] = np.where(gap > 0, x, hi[active])
        lo[active] = np.where(gap > 0, lo[active], x)
        var = p @ RATINGS**2 - mean**2
        with np.errstate(divide="ignore", invalid="ignore"):
            step = x - gap / var
        bisect = ~((step >= lo[active]) & (step <= hi[active]))  # also var == 0 (nan, inf)
        new = np.where(gap == 0, x, np.where(bisect, (lo[active] + hi[active]) / 2, step))
        lam[active] = new
        # done when the mean is hit to rounding or λ no longer changes in the last bits
        done = (gap == 0) | (np.abs(new - x) <= 4 * np.finfo(float).eps * np.maximum(1, np.abs(x)))
        active = active[~done]
    out[inner] = _maxent(lam)
    return out


def maxent_distribution(mean: float) -> np.ndarray:
    """The maximum-entropy distribution on ratings 1..10 whose mean is `mean`."""
    return maxent_distributions(np.array([mean]))[0]


def normal_distributions(means: np.ndarray, sds: np.ndarray) -> np.ndarray:
    """N(mean, sd) per row discretised onto bins 1..10, shape (n, 10); sd 0 puts all mass on
    the nearest bin."""
    means = np.asarray(means, dtype=np.float64).reshape(-1)
    sds = np.broadcast_to(np.asarray(sds, dtype=np.float64), means.shape)
    _check_means(means)
    bad = ~((sds >= 0) & np.isfinite(sds))
    if bad.any():
        raise ValueError(f"standard deviation {sds[bad][0]} must be finite and non-negative")
    edges = np.concatenate(([-np.inf], RATINGS[:-1] + 0.5, [np.inf]))
    with np.errstate(divide="ignore", invalid="ignore"):
        cdf = special.ndtr((edges - means[:, None]) / sds[:, None])
    p = np.diff(cdf, axis=1)
    point = sds == 0
    p[point] = 0.0
    p[point, np.floor(means[point] + 0.5).astype(int) - 1] = 1.0
    return p / p.sum(axis=1, keepdims=True)


def normal_distribution(mean: float, sd: float) -> np.ndarray:
    """N(mean, sd) discretised onto bins 1..10; sd 0 puts all mass on the nearest bin."""
    return normal_distributions(np.array([mean]), np.array([sd]))[0]
