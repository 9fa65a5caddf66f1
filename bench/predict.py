"""Benchmark `nima predict` against pyiqa's NIMA on the same JPEGs (a script, not a test).

    .venv/bin/python bench/predict.py --images 3000            # speed, side by side
    .venv/bin/python bench/predict.py --images 3000 --flat 2000 20000  # + peak RSS 2k vs 20k

What it does:
  1. Generates N photographic-ish JPEGs of 0.2-0.8 MP (random crops of scikit-learn's sample
     photos, resized, with sensor-like noise, JPEG quality 80-95) under bench/.data/ (cached).
     The 20,000-image folder for the flatness check hard-links 2,000 of them 10 times
     (same bytes, different names: memory behaviour is what is measured).
  2. Builds the benchmark model once: NIMA on MobileNet alpha 1.0, 224x224, base_weights None.
  3. Creates bench/.venv-pyiqa (pyiqa + CPU torch 2.13.0; ignored by git) and runs pyiqa's NIMA
     (timm mobilenetv2_100, pretrained=False: weights cannot be downloaded here; speed does not
     depend on weight values) one image at a time, as pyiqa's metric call does.
  4. Runs `nima predict` as a fresh process per measurement: end to end, from process start to
     the predictions file written; peak RSS of that process from GNU time (/usr/bin/time).
Prints img/s for both, the ratio, peak RSS; the load average before and after each run.

    .venv/bin/python bench/predict.py --images 600 --models OLD NEW [--rounds 3]

compares shipped models instead (e.g. the previous and the new technical model): after one
untimed run each (TFLite conversion), each model is timed --rounds times, alternating, on
the same JPEGs; the best round of each and the median CPU seconds per image are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / ".data"
PYIQA_VENV = HERE / ".venv-pyiqa"
NIMA = REPO / ".venv" / "bin" / "nima"


def make_images(directory: Path, n: int, seed: int = 0) -> Path:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    if directory.is_dir() and len(list(directory.glob("*.jpg"))) == n:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    photos = [np.asarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = rng.integers(h // 3, h + 1), rng.integers(w // 3, w + 1)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(photo[y:y + ch, x:x + cw])
        mp = rng.uniform(0.2, 0.8) * 1e6
        aspect = rng.uniform(0.6, 1.7)
        tw, th = int((mp * aspect) ** 0.5), int((mp / aspect) ** 0.5)
        arr = np.asarray(crop.resize((tw, th), Image.BICUBIC), np.float32)
        arr += rng.normal(0, rng.uniform(2, 12), arr.shape)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
            directory / f"img{i:06d}.jpg", quality=int(rng.integers(80, 96)))
    return directory


def link_copies(src: Path, directory: Path, times: int, limit: int | None = None) -> Path:
    files = sorted(src.glob("*.jpg"))[:limit]
    if directory.is_dir() and len(list(directory.glob("*.jpg"))) == len(files) * times:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    for k in range(times):
        for f in files:
            target = directory / f"c{k:02d}_{f.name}"
            if not target.exists():
                os.link(f, target)
    return directory


def make_model(path: Path) -> Path:
    if path.is_file():
        return path
    sys.path.insert(0, str(REPO / "src"))
    from nima.config import Config
    from nima.model import build_model

    config = Config(base_model_name="MobileNet", base_model_args={"alpha": 1.0},
                    base_weights=None, input_size=224)
    import keras

    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_model(config)
    # Without trained weights every image gets the same output; batch-norm statistics from one
    # batch of noise make outputs image-dependent, so the Keras-vs-TFLite check means something.
    for layer in model.layers[2].layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(np.random.default_rng(0).uniform(0, 255, (16, 224, 224, 3)).astype("float32"),
          training=True)
    model.save(path)
    return path


PYIQA_RUN = r"""
import sys, time, torch, timm, pyiqa
from pathlib import Path
from pyiqa.archs.nima_arch import NIMA
# NIMA.__init__ asks timm for ImageNet weights (a download, impossible here); the speed of a
# forward pass does not depend on weight values, so build the backbone without them.
_create = timm.create_model
timm.create_model = lambda *a, **k: _create(*a, **{**k, "pretrained": False})
from pyiqa.utils.img_util import imread2tensor
torch.set_num_threads(int(sys.argv[2]))
files = sorted(Path(sys.argv[1]).glob("*.jpg"))
net = NIMA(base_model_name="mobilenetv2_100", pretrained=False, pretrained_model_path=None).eval()
t = time.time()
with torch.inference_mode():
    for f in files:
        x = imread2tensor(str(f)).unsqueeze(0)
        net(x)
print(len(files) / (time.time() - t))
"""


def ensure_pyiqa() -> Path:
    py = PYIQA_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PYIQA_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "pyiqa"], check=True)
    return py


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS MiB, stdout, CPU seconds user+sys) for one fresh process.

    Peak RSS comes from GNU time, a small process that forks the command: getrusage/wait4
    from this (big) Python process would count the memory the child shared before exec.
    """
    t = time.time()
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M %U %S", *cmd], capture_output=True,
                          text=True, env=env)
    wall = time.time() - t
    if proc.returncode not in (0, 3):
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    kb = [line for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB ")][-1]
    _, rss, user, system = kb.split()
    return wall, int(rss) / 1024, proc.stdout, float(user) + float(system)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


CACHE = DATA / "cache"


def nima_run(folder: Path, model: Path, out: Path, backend: str, extra=()) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", NIMA_CACHE_DIR=str(CACHE))
    before = load()
    wall, rss, _, cpu = run_measured([str(NIMA), "predict", "--image-source", str(folder),
                                 "--model", str(model), "--predictions-file", str(out),
                                 "--backend", backend, *extra], env)
    n = json.loads(Path(str(out) + ".meta.json").read_text())["count"]
    return {"images": n, "seconds": round(wall, 2), "img_s": round(n / wall, 1),
            "cpu_s": round(cpu, 1), "peak_rss_mib": round(rss), "load_before": before, "load_after": load()}


def compare_models(folder: Path, models: list[Path], rounds: int) -> dict:
    """End-to-end `nima predict` (TFLite) of each model on the same files, alternating so that
    a change of machine load hits every model alike."""
    shutil.rmtree(CACHE, ignore_errors=True)
    for m in models:  # untimed: TFLite conversion into the cache
        nima_run(folder, m, DATA / "out.json", "tflite")
    runs: dict[str, list[dict]] = {str(m): [] for m in models}
    for _ in range(rounds):
        for m in models:
            runs[str(m)].append(nima_run(folder, m, DATA / "out.json", "tflite"))
    cpu = Path("/proc/cpuinfo").read_text()
    name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines()
                 if line.startswith("model name")), "unknown CPU")
    res = {"cpu": name, "cpus": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "models": {}}
    for m, rs in runs.items():
        res["models"][m] = {"best_img_s": max(r["img_s"] for r in rs),
                            "median_cpu_ms_per_image": round(float(np.median(
                                [1000 * r["cpu_s"] / r["images"] for r in rs])), 2),
                            "runs": rs}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--flat", type=int, nargs=2, metavar=("SMALL", "LARGE"),
                    help="also compare peak RSS on SMALL vs LARGE images (e.g. 2000 20000): "
                    "hard links to the first SMALL generated files, repeated")
    ap.add_argument("--no-pyiqa", action="store_true")
    ap.add_argument("--no-speed", action="store_true", help="skip the nima speed runs")
    ap.add_argument("--keras", action="store_true", help="also time --backend keras")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--check", type=int, default=200,
                    help="compare TFLite with Keras scores on this many images (0: skip)")
    ap.add_argument("--models", type=Path, nargs="+",
                    help="time these models (dirs or .keras) against each other instead")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per model (--models)")
    a = ap.parse_args()

    folder = make_images(DATA / f"n{a.images}", a.images)
    if a.models:
        print(json.dumps(compare_models(folder, a.models, a.rounds), indent=2))
        return
    model = make_model(DATA / "mobilenet224.keras")
    res: dict = {"machine": f"{os.cpu_count()} CPUs, {os.uname().machine}",
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = DATA / "out.json"
    # First run: empty conversion cache (TFLite conversion included) and cold-ish page cache;
    # the second is the steady state a user sees from then on.
    if not a.no_speed:
        shutil.rmtree(CACHE, ignore_errors=True)
        res["nima_first_run_incl_conversion"] = nima_run(folder, model, out, "tflite")
        res["nima_tflite"] = nima_run(folder, model, out, "tflite")
    if a.keras:
        res["nima_keras"] = nima_run(folder, model, out, "keras")
    if not a.no_pyiqa and not a.no_speed:
        py = ensure_pyiqa()
        before = load()
        wall, rss, stdout, cpu = run_measured([str(py), "-c", PYIQA_RUN, str(folder), str(a.threads)])
        res["pyiqa_nima_mobilenetv2"] = {
            "images": a.images, "seconds": round(wall, 2), "img_s": round(a.images / wall, 1),
            "img_s_model_loop_only": round(float(stdout.strip()), 1), "cpu_s": round(cpu, 1),
            "peak_rss_mib": round(rss), "load_before": before, "load_after": load()}
        res["ratio_cpu_per_image"] = round(res["pyiqa_nima_mobilenetv2"]["cpu_s"] / a.images
                                           / (res["nima_tflite"]["cpu_s"] / a.images), 2)
        res["ratio_end_to_end"] = round(res["nima_tflite"]["img_s"]
                                        / res["pyiqa_nima_mobilenetv2"]["img_s"], 2)
    if a.check:
        sub = link_copies(folder, DATA / f"check{a.check}", 1, a.check)
        outs = {}
        for backend in ("keras", "tflite"):
            outs[backend] = DATA / f"check_{backend}.json"
            nima_run(sub, model, outs[backend], backend)
        k, t = (np.array([r["predictions"] for r in json.loads(outs[b].read_text())])
                for b in ("keras", "tflite"))
        res["check_tflite_vs_keras"] = {"images": len(k), "max_abs_diff": float(abs(k - t).max()),
                                        "output_spread_sd": float(k.std(axis=0).max())}
    if a.flat:
        n_small, n_large = a.flat
        small_dir = link_copies(folder, DATA / f"flat{n_small}", 1, n_small)
        large_dir = link_copies(small_dir, DATA / f"flat{n_large}", n_large // n_small)
        for n, d in ((n_small, small_dir), (n_large, large_dir)):
            res[f"nima_tflite_{n}"] = nima_run(d, model, DATA / f"out{n}.json", "tflite")
        small = res[f"nima_tflite_{n_small}"]["peak_rss_mib"]
        large = res[f"nima_tflite_{n_large}"]["peak_rss_mib"]
        res["rss_growth_pct"] = round(100 * (large - small) / small, 1)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
