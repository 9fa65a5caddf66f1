"""Score distributions in NumPy: the 10 bins are ratings 1..10.

Shared by labels (normalisation), prediction (mean and sd per image) and evaluation (EMD).
The TensorFlow EMD used as a training loss lives in `nima.model`.
"""

from __future__ import annotations

import numpy as np

N_BINS = 10
RATINGS = np.arange(1, N_BINS + 1, dtype=np.float64)


def normalize(dist: np.ndarray) -> np.ndarray:
    """Vote counts or unnormalised weights -> probabilities (last axis sums to 1)."""
    dist = np.asarray(dist, dtype=np.float64)
    return dist / dist.sum(axis=-1, keepdims=True)


def mean_score(dist: np.ndarray) -> np.ndarray:
    return np.asarray(dist, dtype=np.float64) @ RATINGS


def sd_score(dist: np.ndarray) -> np.ndarray:
    dist = np.asarray(dist, dtype=np.float64)
    mean = mean_score(dist)
    var = dist @ (RATINGS**2) - mean**2
    return np.sqrt(np.clip(var, 0.0, None))


def emd(y_true: np.ndarray, y_pred: np.ndarray, r: float = 2.0) -> np.ndarray:
    """Per-sample EMD between distributions over ordered bins (NIMA eq. 1).

    EMD_r = (1/N * sum_k |CDF_true(k) - CDF_pred(k)|^r)^(1/r).
    """
    cdf_true = np.cumsum(np.asarray(y_true, dtype=np.float64), axis=-1)
    cdf_pred = np.cumsum(np.asarray(y_pred, dtype=np.float64), axis=-1)
    return np.mean(np.abs(cdf_true - cdf_pred) ** r, axis=-1) ** (1.0 / r)
