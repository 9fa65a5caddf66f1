"""Speed of `nima data check`: header + end-marker checks vs full decode, 1 thread vs a pool.

Generates N AVA-like JPEGs (500x375, noisy, ~60-100 KB) in a temp folder, then times
nima.data.check.check on them. Usage: python bench/data_check.py [N]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from nima.data.check import check


def main(n: int = 1000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "images"
        d.mkdir()
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
        rows = []
        for i in range(n):
            arr = np.roll(base, i * 7, axis=1)
            Image.fromarray(arr).save(d / f"{i}.jpg", quality=90)
            rows.append({"image_id": str(i), "label": [1] * 10})
        labels = Path(tmp) / "labels.json"
        labels.write_text(json.dumps(rows))
        size = sum(p.stat().st_size for p in d.iterdir()) / n / 1024
        print(f"{n} JPEGs 500x375, {size:.0f} KB each, {os.cpu_count()} CPUs")
        for full in (False, True):
            for workers in (1, None):
                t = time.perf_counter()
                r = check(labels, d, full_decode=full, workers=workers)
                dt = time.perf_counter() - t
                assert len(r.good) == n, r.counts()
                print(f"{'full decode' if full else 'header+end ':12s} workers "
                      f"{workers or 'default':>7}: {dt:6.2f} s, {n / dt:7.0f} images/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
