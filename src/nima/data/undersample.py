"""Cap the number of images per rating bin, to flatten a label set's score distribution.

AVA's mean scores pile up around 5-6; a model trained on it learns to predict the middle.
Keeping at most N images per bin (the mean score rounded to 1..10) is the simple fix. Which
images stay is seeded; the kept rows keep their original order and raw label values.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nima import scores
from nima.data.labelfile import raw_rows, read_label_json, write_label_rows
from nima.errors import DataError
from nima.labels import parse_samples


def rating_bin(mean: float) -> int:
    """Mean score -> 1..10, halves rounded up (round() would send 5.5 to 6 but 6.5 to 6)."""
    # rounding to 9 decimals first: 6.5 must not become 6.4999999999 in one summation order
    return min(max(int(math.floor(round(mean, 9) + 0.5)), 1), scores.N_BINS)


@dataclass
class UndersampleResult:
    before: dict[int, int]
    after: dict[int, int]


def undersample(labels_file: str | Path, out: str | Path, max_per_bin: int,
                seed: int = 0) -> UndersampleResult:
    if max_per_bin < 1:
        raise DataError(f"max per bin must be at least 1, got {max_per_bin}")
    data = read_label_json(labels_file)
    samples = parse_samples(data, source=str(labels_file))
    means = scores.mean_score(np.stack([s.label for s in samples]))
    by_bin: dict[int, list[int]] = defaultdict(list)
    for i, m in enumerate(means):
        by_bin[rating_bin(float(m))].append(i)
    rng = random.Random(seed)
    keep: set[int] = set()
    for b in sorted(by_bin):
        idx = by_bin[b]
        keep.update(idx if len(idx) <= max_per_bin else rng.sample(idx, max_per_bin))
    rows = raw_rows(data)
    write_label_rows(out, [rows[i] for i in sorted(keep)])
    bins = range(1, scores.N_BINS + 1)
    return UndersampleResult({b: len(by_bin.get(b, [])) for b in bins},
                             {b: min(len(by_bin.get(b, [])), max_per_bin) for b in bins})
