"""Speed and memory of `nima report` on large predictions files.

Makes `--images` photo-sized JPEGs (1024x768) and a predictions JSON of `--entries` results
that point at them in turn (as `nima predict --format json` writes it), then runs, each in
a fresh process: the full gallery of the first `--limit` entries, and `--top/--bottom 50`
over all entries. Prints wall time, peak RSS and output size.

    .venv/bin/python bench/report_gallery.py --entries 100000 --images 200 --limit 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_inputs(root: Path, n_images: int, n_entries: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    image_dir = root / "images"
    image_dir.mkdir()
    # Smooth gradients plus a little noise: JPEG sizes like photos (~100-200 KB), not like noise.
    yy, xx = np.mgrid[0:768, 0:1024]
    for i in range(n_images):
        base = (np.sin(xx / rng.uniform(30, 200)) + np.cos(yy / rng.uniform(30, 200))) * 60 + 128
        arr = np.stack([base * rng.uniform(0.5, 1.0) for _ in range(3)], -1)
        arr += rng.normal(0, 6, arr.shape)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
            image_dir / f"photo{i:04d}.jpg", quality=90)
    preds = root / "predictions.json"
    with open(preds, "w") as f:
        f.write("[")
        for k in range(n_entries):
            p = rng.dirichlet(np.ones(10) * 2)
            m = float(p @ np.arange(1, 11))
            sd = float(np.sqrt(max(p @ np.arange(1, 11) ** 2 - m * m, 0)))
            f.write(("\n" if k == 0 else ",\n") + json.dumps({
                "image_id": f"photo{k % n_images:04d}", "image": f"photo{k % n_images:04d}.jpg",
                "predictions": [round(float(x), 6) for x in p],
                "mean_score_prediction": round(m, 6), "sd_score_prediction": round(sd, 6)}))
        f.write("\n]\n")
    return image_dir, preds


def run(args: list[str]) -> tuple[float, float]:
    """Run `nima report ...` in a child; (seconds, peak RSS MiB of that child)."""
    # VmHWM of the child's own address space (ru_maxrss would include the parent's at fork).
    code = ("import re, sys; from nima import cli; rc = cli.main(sys.argv[1:]); "
            "s = open('/proc/self/status').read(); "
            "print(re.search(r'VmHWM:\\s+(\\d+)', s).group(1), file=sys.stderr); "
            "sys.exit(rc)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, "report", *args], capture_output=True,
                         text=True, check=True)
    seconds = time.perf_counter() - t0
    return seconds, int(out.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--limit", type=int, default=2000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        image_dir, preds = make_inputs(root, a.images, a.entries)
        print(f"predictions: {a.entries} entries, {preds.stat().st_size / 2**20:.1f} MiB; "
              f"{a.images} JPEGs 1024x768, "
              f"{sum(f.stat().st_size for f in image_dir.iterdir()) / a.images / 1024:.0f} KiB "
              f"each; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        cases = {
            "html, --limit 1 (start-up baseline)": ["--limit", "1", "-o", str(root / "b.html")],
            f"html, --limit {a.limit}": ["--limit", str(a.limit), "-o", str(root / "g.html")],
            f"html, --top 50 --bottom 50 of {a.entries}":
                ["--top", "50", "--bottom", "50", "-o", str(root / "t.html")],
            "png sheet, --top 10 --bottom 10": ["--top", "10", "--bottom", "10", "-o",
                                                str(root / "s.png")],
        }
        for name, extra in cases.items():
            seconds, rss = run([str(preds), "--image-source", str(image_dir), *extra])
            out = Path(extra[-1])
            print(f"{name:<40} {seconds:6.1f} s  peak RSS {rss:6.0f} MiB  "
                  f"output {out.stat().st_size / 2**20:6.2f} MiB")


if __name__ == "__main__":
    main()
