"""Training throughput of `nima train`, with and without mixed precision (a script, not a test).

    .venv/bin/python bench/train_speed.py                        # the GPU config, as shipped
    .venv/bin/python bench/train_speed.py --config-file models/MobileNet/config_aesthetic_cpu.json \\
        --images 384 --batch-size 32                             # what a CPU can do in minutes

What it does:
  1. Generates N photographic-ish JPEGs (bench/predict.py's generator, cached under bench/.data/).
  2. Gives each image a random 10-bin vote histogram (speed does not depend on the labels).
  3. Runs the real trainer (`python -m nima train`, a fresh process per run) on the given config
     twice, once with "mixed_precision": false and once with true. Only what a benchmark must
     change is changed: base_weights null (ImageNet weights cannot be downloaded on every
     machine; speed does not depend on weight values), epochs (--epochs per phase), and
     optionally batch_size. Everything else, the input pipeline and tf.distribute included, is
     the config's.
  4. Reads summary.json: training images per second of each phase (median over its epochs
     after the first, which includes tracing; validation time excluded), as the trainer
     records it in history.json for every run.
Prints a markdown table and writes bench/.data/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from predict import DATA, make_images  # noqa: E402  (bench/predict.py, same folder)


def make_labels(images: Path, path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = [{"image_id": f.stem, "label": rng.multinomial(200, rng.dirichlet(np.ones(10))).tolist()}
            for f in sorted(images.glob("*.jpg"))]
    path.write_text(json.dumps(rows))
    return path


def run(config: dict, samples: Path, images: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "config.json"
    cfg.write_text(json.dumps(config, indent=2))
    job = out / "job"
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "nima", "train", "--config-file", str(cfg), "--samples-file",
         str(samples), "--image-dir", str(images), "--job-dir", str(job)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    wall = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"nima train failed ({r.returncode}):\n{r.stderr[-4000:]}")
    summary = json.loads((job / "summary.json").read_text())
    return {"mixed_precision": config["mixed_precision"], "wall_seconds": round(wall, 1),
            "replicas": summary["replicas"], "global_batch_size": summary["global_batch_size"],
            "n_train": summary["n_train"], **{
                f"{phase}_images_per_second": rate
                for phase, rate in summary["train_images_per_second"].items()}}


def devices() -> str:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"CPU only ({os.cpu_count()} cores)"
    return ", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name)
                     for g in gpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config-file", type=Path,
                    default=REPO / "models/MobileNet/config_aesthetic_gpu.json")
    ap.add_argument("--images", type=int, default=3000, help="generated training images")
    ap.add_argument("--epochs", type=int, default=3,
                    help="epochs per phase (the first of each is left out of the rate)")
    ap.add_argument("--batch-size", type=int, help="per-replica batch size (default: config's)")
    args = ap.parse_args()

    images = make_images(DATA / f"train{args.images}", args.images)
    samples = make_labels(images, DATA / f"train{args.images}.json")
    base = json.loads(args.config_file.read_text())
    base.update(base_weights=None, epochs_train_dense=args.epochs, epochs_train_all=args.epochs)
    if args.batch_size:
        base["batch_size"] = args.batch_size
    results = [run({**base, "mixed_precision": mp}, samples, images,
                   DATA / f"train_speed_mp{int(mp)}") for mp in (False, True)]
    report = {"config_file": str(args.config_file), "device": devices(), "images": args.images,
              "epochs_per_phase": args.epochs, "results": results}
    (DATA / "train_speed.json").write_text(json.dumps(report, indent=2))
    print(f"{report['device']}; {args.config_file}; {args.images} images, "
          f"{args.epochs} epochs per phase\n")
    print("| mixed precision | replicas x batch | phase 1 (base frozen) img/s "
          "| phase 2 (all layers) img/s | wall |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {'on' if r['mixed_precision'] else 'off'} | {r['replicas']} x "
              f"{r['global_batch_size'] // r['replicas']} | {r.get('dense_images_per_second')} "
              f"| {r.get('all_images_per_second')} | {r['wall_seconds']} s |")


if __name__ == "__main__":
    main()
