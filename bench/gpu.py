"""Training and prediction speed on a GPU, through the real `nima` commands (a script, not a
test). Made for a GPU machine without TensorFlow: run it with KERAS_BACKEND=jax (the
default here) or torch; under TensorFlow it measures tf.data and tf.distribute instead.

    KERAS_BACKEND=jax python bench/gpu.py [--images 2048] [--epochs 2] [--batch-size 64]
    KERAS_BACKEND=jax python bench/gpu.py --images 64 --epochs 1 --batch-size 8 \\
        --input-size 96          # a CPU smoke run: proves the script, not a speed

What it does (about 5 minutes on one GPU with the defaults):
  1. Makes N 640x480 JPEGs (bench/input_pipeline.py's photos) and random vote labels.
  2. `nima train` twice, mixed precision off and on: MobileNetV2 (random init: speed does
     not depend on the weights), 256-px resize, random 224 crop, both phases (head only,
     then all layers), `--epochs` each. Training images per second of each phase come from
     the job's summary.json (median over epochs after the first, which compiles).
  3. `nima predict --backend keras` on all N images with each model: images per second.
  4. The input path alone (nima.feed, one thread per CPU), as bench/input_pipeline.py.
Prints a markdown table and writes gpu.json into --out (default bench/.data/gpu).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from input_pipeline import cpu_model, feed_rate, make_photos  # noqa: E402 (same folder)


def gpu_model() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30)
        return out.stdout.strip() or "no GPU seen by nvidia-smi"
    except (OSError, subprocess.TimeoutExpired):
        return "no nvidia-smi"


def nima(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "nima", *args], capture_output=True, text=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if r.returncode != 0:
        sys.exit(f"nima {args[0]} failed:\n{r.stderr[-4000:]}")
    return r, time.monotonic() - t0


def train(out: Path, samples: Path, images: Path, a: argparse.Namespace, mixed: bool) -> dict:
    run = out / ("mixed" if mixed else "float32")
    run.mkdir(parents=True, exist_ok=True)
    config = {
        "base_model_name": "MobileNetV2", "base_weights": None,
        "input_size": a.input_size, "resize_size": round(a.input_size * 256 / 224),
        "random_crop": True, "horizontal_flip": True, "batch_size": a.batch_size,
        "epochs_train_dense": a.epochs, "epochs_train_all": a.epochs,
        "learning_rate_dense": 1e-3, "learning_rate_all": 1e-4, "dropout_rate": 0.2,
        "validation_fraction": 0.05, "mixed_precision": mixed, "distribution": "auto",
    }
    (run / "config.json").write_text(json.dumps(config, indent=2))
    r, wall = nima("train", "--config-file", str(run / "config.json"), "--samples-file",
                   str(samples), "--image-dir", str(images), "--job-dir", str(run / "job"))
    summary = json.loads((run / "job" / "summary.json").read_text())
    predicted, predict_wall = nima("predict", "--model", str(run / "job"), "--backend", "keras",
                           "--image-source", str(images), "--batch-size", str(a.batch_size),
                           "--predictions-file", str(run / "predictions.json"))
    rate = re.findall(r"\(([\d.]+) img/s\)", predicted.stderr)
    return {"mixed_precision": mixed, "wall_s": round(wall, 1),
            "replicas": summary["replicas"], "global_batch": summary["global_batch_size"],
            "train_img_per_s": summary["train_images_per_second"],
            "predict_img_per_s": float(rate[-1]) if rate else None,
            "predict_wall_s": round(predict_wall, 1)}


def main() -> None:
    from nima import kerasbackend
    from nima.runtime import cpu_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each phase")
    ap.add_argument("--batch-size", type=int, default=64, help="per device")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--out", type=Path, default=HERE / ".data" / "gpu")
    a = ap.parse_args()
    t0 = time.monotonic()
    a.out.mkdir(parents=True, exist_ok=True)
    images = a.out / "images"
    paths = make_photos(images, a.images)
    rng = np.random.default_rng(0)
    samples = a.out / "samples.json"
    samples.write_text(json.dumps([
        {"image_id": p.stem, "label": rng.multinomial(100, rng.dirichlet(np.ones(10))).tolist()}
        for p in paths]))
    runs = [train(a.out, samples, images, a, mixed) for mixed in (False, True)]
    feed_rate(paths[:64], cpu_threads())  # warm
    input_rate = feed_rate(paths, cpu_threads())
    result = {"backend": kerasbackend.name(), "versions": kerasbackend.versions(),
              "gpu": gpu_model(), "cpu": cpu_model(), "cpus": cpu_threads(),
              "images": len(paths), "input_size": a.input_size, "batch_size": a.batch_size,
              "epochs_per_phase": a.epochs, "runs": runs,
              "input_pipeline_img_per_s": round(input_rate, 1),
              "total_s": round(time.monotonic() - t0, 1)}
    (a.out / "gpu.json").write_text(json.dumps(result, indent=2))
    print(f"{result['gpu']}; {result['cpu']}, {result['cpus']} CPUs; Keras "
          f"{result['versions'].get('keras')} on {result['backend']}; {len(paths)} JPEGs "
          f"640x480, MobileNetV2 {a.input_size} px, batch {a.batch_size} per device")
    print("| mixed precision | replicas | phase 1 img/s | phase 2 img/s | predict img/s |")
    print("|---|---|---|---|---|")
    for r in runs:
        rates = r["train_img_per_s"]
        print(f"| {'on' if r['mixed_precision'] else 'off'} | {r['replicas']} | "
              f"{rates.get('dense', float('nan')):.0f} | {rates.get('all', float('nan')):.0f} | "
              f"{r['predict_img_per_s'] or float('nan'):.0f} |")
    print(f"input pipeline alone (nima.feed, {result['cpus']} threads): {input_rate:.0f} img/s; "
          f"total {result['total_s']:.0f} s")


if __name__ == "__main__":
    main()
