"""The training input path alone, in images per second per core (a script, not a test).

    .venv/bin/python bench/input_pipeline.py [--images 640] [--rounds 3] [--workers N]

What it does:
  1. Makes N JPEGs of 640x480 (0.31 MP) from scikit-learn's two sample photos (random crops,
     noise, quality 90), cached under bench/.data/.
  2. Runs the training input exactly as `nima train` builds it for the shipped MobileNet
     configs: decode, bilinear resize to 256, random 224 crop, random flip, float32 batches
     of 32. Each round, alternating:
     - nima.feed (keras.utils.PyDataset, the JAX/PyTorch path) with 1 worker thread;
     - nima.feed with one thread per core;
     - tf.data (nima.pipeline, the TensorFlow path), AUTOTUNE, when TensorFlow is installed.
  3. Prints a markdown table (median over rounds; per core = rate / cores used) and writes
     bench/.data/input_pipeline.json.
Nothing else may run on the machine for the numbers to mean what they say; the load average
is printed with them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
SIZE, RESIZE, BATCH = 224, 256, 32


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def make_photos(directory: Path, n: int, seed: int = 0) -> list[Path]:
    """n 640x480 JPEGs that decode like photographs (real texture, sensor-like noise)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    paths = [directory / f"p{i:05d}.jpg" for i in range(n)]
    if all(p.is_file() for p in paths):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    photos = [np.asarray(p) for p in load_sample_images().images]  # 427x640 each
    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = rng.integers(h // 2, h + 1), rng.integers(w // 2, w + 1)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(photo[y:y + ch, x:x + cw]).resize((640, 480), Image.BICUBIC)
        arr = np.asarray(crop, np.float32) + rng.normal(0, rng.uniform(2, 8), (480, 640, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
    return paths


def labels_for(paths: list[Path]) -> np.ndarray:
    return np.full((len(paths), 10), 0.1, np.float32)


def feed_rate(paths: list[Path], workers: int) -> float:
    """Images per second of nima.feed.TrainBatches, one pass, `workers` threads."""
    from nima import feed

    batches = feed.TrainBatches(paths, labels_for(paths), input_size=SIZE, resize_size=RESIZE,
                                batch_size=BATCH, seed=1, workers=workers)
    t0 = time.perf_counter()
    n = sum(len(x) for x, _, _ in feed.iterate(batches))
    return n / (time.perf_counter() - t0)


def tfdata_rate(paths: list[Path]) -> float:
    """Images per second of nima.pipeline.train_dataset (tf.data), one pass."""
    from nima import pipeline

    ds = pipeline.train_dataset(paths, labels_for(paths), input_size=SIZE, resize_size=RESIZE,
                                batch_size=BATCH, seed=1)
    t0 = time.perf_counter()
    n = sum(len(x) for x, _, _ in ds.as_numpy_iterator())
    return n / (time.perf_counter() - t0)


def measure(paths: list[Path], workers: int, rounds: int, with_tf: bool) -> dict[str, dict]:
    runs: dict[str, list[float]] = {"feed, 1 thread": [], f"feed, {workers} threads": []}
    if with_tf:
        runs["tf.data, AUTOTUNE"] = []
    feed_rate(paths[:BATCH * 2], workers)  # warm: imports, Pillow's codecs, page cache
    if with_tf:
        tfdata_rate(paths[:BATCH * 2])
    for _ in range(rounds):
        runs["feed, 1 thread"].append(feed_rate(paths, 1))
        runs[f"feed, {workers} threads"].append(feed_rate(paths, workers))
        if with_tf:
            runs["tf.data, AUTOTUNE"].append(tfdata_rate(paths))
    cores = {"feed, 1 thread": 1}
    return {name: {"img_per_s": statistics.median(r), "runs": [round(v, 1) for v in r],
                   "cores": cores.get(name, workers),
                   "img_per_s_per_core": statistics.median(r) / cores.get(name, workers)}
            for name, r in runs.items()}


def main() -> None:
    from nima.runtime import cpu_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=640)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=cpu_threads(), help="threads (default: all CPUs)")
    ap.add_argument("--no-tf", action="store_true", help="skip tf.data")
    a = ap.parse_args()
    with_tf = not a.no_tf and importlib.util.find_spec("tensorflow") is not None
    paths = make_photos(DATA / "photos_0.3mp", a.images)
    load_before = os.getloadavg()[0]
    results = measure(paths, a.workers, a.rounds, with_tf)
    load_after = os.getloadavg()[0]
    print(f"{cpu_model()}, {cpu_threads()} CPUs; {len(paths)} JPEGs 640x480 -> {RESIZE} -> "
          f"{SIZE} crop + flip, batch {BATCH}; load average {load_before:.1f} -> "
          f"{load_after:.1f}; Python {sys.version.split()[0]}")
    print("| input path | threads | img/s | img/s per core | runs |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['cores']} | {r['img_per_s']:.0f} | {r['img_per_s_per_core']:.0f} "
              f"| {', '.join(f'{v:.0f}' for v in r['runs'])} |")
    (DATA / "input_pipeline.json").write_text(json.dumps({
        "cpu": cpu_model(), "cpus": cpu_threads(), "images": len(paths),
        "load_average": [load_before, load_after], "results": results}, indent=2))


if __name__ == "__main__":
    main()
