"""Training and prediction speed on a GPU, through the real `nima` commands (a script, not a
test). Made for a GPU machine without TensorFlow, where Keras runs on JAX or PyTorch; under
TensorFlow it measures tf.data and tf.distribute instead.

    python bench/gpu.py [--backends jax,torch] [--images 2048] [--epochs 2] [--batch-size 64]
                        [--budget 450] [--out DIR] [--work DIR]
    python bench/gpu.py --images 64 --epochs 1 --batch-size 8 --input-size 96
                         # a CPU smoke run: proves the script, not a speed

What it does (about 5 minutes on one GPU with the defaults):
  1. The input path alone: bench/input_pipeline.py (nima.feed, one thread and one per CPU).
  2. Makes N 640x480 JPEGs (input_pipeline.py's photos) and random vote labels.
  3. For each backend, `nima train` with mixed precision off, then on: MobileNetV2 (random
     init: speed does not depend on the weights), 256-px resize, random 224 crop, both phases
     (head only, then all layers), `--epochs` each. Training img/s per phase come from the
     job's summary.json (the trainer's median over epochs after the first, which compiles).
  4. `nima predict --backend keras` on all N images with each model: img/s.
Each step runs in its own process (a GPU framework in this one would hold GPU memory the
next needs) with what is left of --budget seconds as its timeout. A step that fails or runs
out is recorded with the end of its stderr and the others go on; a step whose last run
took longer than what is left is skipped. gpu.json in --out is rewritten after every step,
so a run cut short still returns what it measured; nothing else is written there (images
and jobs, hundreds of MB, go to --work, a temporary folder unless named).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from input_pipeline import DATA, cpu_model, make_photos  # noqa: E402 (same folder)

PACKAGES = {"jax": ["jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin"],
            "torch": ["torch"], "tensorflow": ["tensorflow"]}


def gpu_model() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30)
        return out.stdout.strip() or "no GPU seen by nvidia-smi"
    except (OSError, subprocess.TimeoutExpired):
        return "no nvidia-smi"


def versions(backends: list[str]) -> dict[str, str]:
    found = {}
    for name in ["keras", *(p for b in backends for p in PACKAGES.get(b, [b]))]:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


class Clock:
    """What is left of the budget, and whether a step that took `estimate` s still fits."""

    def __init__(self, budget: float):
        self.start, self.budget = time.monotonic(), budget

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def fits(self, estimate: float) -> bool:
        return self.left() > max(estimate, 10.0)


def run(args: list[str], backend: str, clock: Clock) -> tuple[str | None, str, float]:
    """(error or None, stderr, seconds) of one child process."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                           timeout=max(clock.left(), 1.0))
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
        return "ran out of the budget", err, time.monotonic() - t0
    failed = None if r.returncode == 0 else f"exit code {r.returncode}"
    return failed, r.stderr, time.monotonic() - t0


def input_rate(backend: str, clock: Clock) -> dict:
    failed, err, wall = run([str(HERE / "input_pipeline.py"), "--no-tf"], backend, clock)
    if failed:
        return {"error": failed, "stderr_tail": err[-2000:]}
    found = json.loads((DATA / "input_pipeline.json").read_text())
    return {"wall_s": round(wall, 1), **found}


def train_and_predict(work: Path, samples: Path, images: Path, a: argparse.Namespace,
                      backend: str, mixed: bool, clock: Clock) -> dict:
    run_dir = work / f"{backend}-{'mixed' if mixed else 'float32'}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "base_model_name": "MobileNetV2", "base_weights": None,
        "input_size": a.input_size, "resize_size": round(a.input_size * 256 / 224),
        "random_crop": True, "horizontal_flip": True, "batch_size": a.batch_size,
        "epochs_train_dense": a.epochs, "epochs_train_all": a.epochs,
        "learning_rate_dense": 1e-3, "learning_rate_all": 1e-4, "dropout_rate": 0.2,
        "validation_fraction": 0.05, "mixed_precision": mixed, "distribution": "auto",
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    job = run_dir / "job"
    result: dict = {"backend": backend, "mixed_precision": mixed}
    failed, err, wall = run(["-m", "nima", "train", "--config-file", str(run_dir / "config.json"),
                             "--samples-file", str(samples), "--image-dir", str(images),
                             "--job-dir", str(job)], backend, clock)
    result["train_wall_s"] = round(wall, 1)
    if failed:
        return {**result, "error": f"train: {failed}", "stderr_tail": err[-3000:]}
    summary = json.loads((job / "summary.json").read_text())
    result.update(replicas=summary["replicas"], global_batch=summary["global_batch_size"],
                  train_img_per_s=summary["train_images_per_second"])
    failed, err, wall = run(["-m", "nima", "predict", "--model", str(job), "--backend", "keras",
                             "--image-source", str(images), "--batch-size", str(a.batch_size),
                             "--predictions-file", str(run_dir / "predictions.json")],
                            backend, clock)
    result["predict_wall_s"] = round(wall, 1)
    if failed:
        return {**result, "error": f"predict: {failed}", "stderr_tail": err[-3000:]}
    rate = re.findall(r"\(([\d.]+) img/s\)", err)
    return {**result, "predict_img_per_s": float(rate[-1]) if rate else None}


def table(result: dict) -> str:
    lines = [f"{result['gpu']}; {result['cpu']}, {result['cpus']} CPUs; "
             + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
             f"{result['images']} JPEGs 640x480, MobileNetV2 {result['input_size']} px, "
             f"batch {result['batch_size']} per device, {result['epochs_per_phase']} epochs "
             "per phase",
             "| backend | mixed precision | replicas | phase 1 img/s | phase 2 img/s | "
             "predict img/s | train + predict s |", "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        rates = r.get("train_img_per_s", {})
        cells = [rates.get("dense"), rates.get("all"), r.get("predict_img_per_s")]
        shown = [f"{c:.0f}" if c is not None else "-" for c in cells]
        lines.append(f"| {r['backend']} | {'on' if r['mixed_precision'] else 'off'} | "
                     f"{r.get('replicas', '-')} | {' | '.join(shown)} | "
                     f"{r.get('train_wall_s', 0) + r.get('predict_wall_s', 0):.0f} |"
                     + (f" {r['error']}" if "error" in r else ""))
    for r in result["skipped"]:
        lines.append(f"| {r['backend']} | {'on' if r['mixed_precision'] else 'off'} | "
                     f"skipped: {r['why']} |")
    feed = result.get("input_pipeline", {})
    for name, r in feed.get("results", {}).items():
        lines.append(f"input path alone, {name}: {r['img_per_s']:.0f} img/s "
                     f"({r['img_per_s_per_core']:.0f} per core)")
    if "error" in feed:
        lines.append(f"input path alone: {feed['error']}")
    lines.append(f"total {result['total_s']:.0f} s")
    return "\n".join(lines)


def main() -> None:
    from nima.runtime import cpu_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="jax", help="comma-separated Keras backends")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each phase")
    ap.add_argument("--batch-size", type=int, default=64, help="per device")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--budget", type=float, default=450, help="seconds for everything")
    ap.add_argument("--out", type=Path, default=DATA / "gpu", help="where gpu.json goes")
    ap.add_argument("--work", type=Path, help="images and jobs (default: a temporary folder)")
    a = ap.parse_args()
    clock = Clock(a.budget)
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    a.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"gpu": gpu_model(), "cpu": cpu_model(), "cpus": cpu_threads(),
                    "versions": versions(backends), "images": a.images,
                    "input_size": a.input_size, "batch_size": a.batch_size,
                    "epochs_per_phase": a.epochs, "runs": [], "skipped": []}

    def save() -> None:
        result["total_s"] = round(clock.budget - clock.left(), 1)
        (a.out / "gpu.json").write_text(json.dumps(result, indent=2))

    result["input_pipeline"] = input_rate(backends[0], clock)
    save()
    with tempfile.TemporaryDirectory(prefix="nima-gpu-") as tmp:
        work = a.work or Path(tmp)
        images = work / "images"
        paths = make_photos(images, a.images)
        rng = np.random.default_rng(0)
        samples = work / "samples.json"
        samples.write_text(json.dumps([
            {"image_id": p.stem, "label": rng.multinomial(100, rng.dirichlet(np.ones(10))).tolist()}
            for p in paths]))
        for backend in backends:
            last = 0.0  # the float32 run's seconds: what the mixed one is expected to take
            for mixed in (False, True):
                if not clock.fits(last):
                    result["skipped"].append({"backend": backend, "mixed_precision": mixed,
                                              "why": f"{clock.left():.0f} s of the budget left"})
                    continue
                r = train_and_predict(work, samples, images, a, backend, mixed, clock)
                last = r.get("train_wall_s", 0) + r.get("predict_wall_s", 0)
                result["runs"].append(r)
                save()
                print(f"{backend}, mixed precision {'on' if mixed else 'off'}: "
                      f"{r.get('error', 'done')} in {last:.0f} s", file=sys.stderr, flush=True)
    save()
    print(table(result))
    for r in result["runs"]:
        if "error" in r:
            print(f"\n{r['backend']} mixed={r['mixed_precision']}: {r['error']}\n"
                  f"{r['stderr_tail']}")
    failed = [r for r in result["runs"] if "error" in r] or "error" in result["input_pipeline"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
