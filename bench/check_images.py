"""Cost of the training-time image check (images.check_image) against a header-only check and
a real training decode, per image, single thread.

    .venv/bin/python bench/check_images.py [N]

Writes N AVA-like JPEGs (500x375, quality 90) to a temp dir and times each function over them.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from nima import images


def main(n: int = 300) -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        yy, xx = np.mgrid[0:375, 0:500]
        for i in range(n):
            base = (np.sin(xx / (20 + i % 7)) + np.cos(yy / (15 + i % 5))) * 60 + 128
            arr = np.clip(base[..., None] + rng.normal(0, 12, (375, 500, 3)), 0, 255)
            p = Path(d) / f"{i}.jpg"
            Image.fromarray(arr.astype(np.uint8)).save(p, quality=90)
            paths.append(p)
        for name, fn in [("open_image (header only)", lambda p: images.open_image(p).close()),
                         ("check_image (full decode, 1/8 draft)", images.check_image),
                         ("load_image(p, 256) (training decode)",
                          lambda p: images.load_image(p, 256))]:
            fn(paths[0])
            t = time.perf_counter()
            for p in paths:
                fn(p)
            ms = (time.perf_counter() - t) / n * 1000
            print(f"{name:40s} {ms:7.2f} ms/image")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
