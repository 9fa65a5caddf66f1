"""Size, export time and CPU inference speed of every `nima export` format.

Builds a MobileNet (alpha 1.0, 224x224, random weights: speed does not depend on the weights)
NIMA model, exports it as SavedModel, TFLite fp32 / fp16 / int8 / full int8 and ONNX fp32 / int8, and
times inference on the same batch with each runtime (Keras for reference).
Usage: python bench/export_formats.py [BATCHES]   (BATCHES timed runs per case, default 5)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from nima import export  # noqa: E402
from nima.config import Config  # noqa: E402
from nima.model import build_model  # noqa: E402


def size_of(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def timed(fn, x: np.ndarray, runs: int) -> float:
    """Images per second of fn on batch x (best of `runs`, after one warm-up)."""
    fn(x)
    best = min(_once(fn, x) for _ in range(runs))
    return len(x) / best


def _once(fn, x) -> float:
    t = time.perf_counter()
    fn(x)
    return time.perf_counter() - t


def savedmodel_runner(path: Path):
    signature = tf.saved_model.load(str(path)).signatures["serving_float"]
    return lambda x: signature(images=tf.constant(x))


def tflite_runner(path: Path):
    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=os.cpu_count())
    run = interpreter.get_signature_runner("serving_default")
    return lambda x: run(images=x)


def main(runs: int = 5) -> None:
    config = Config(base_model_name="MobileNet", base_weights=None, input_size=224)
    model = build_model(config)
    rng = np.random.default_rng(0)
    batches = {n: rng.uniform(0, 255, (n, 224, 224, 3)).astype(np.float32) for n in (1, 16)}
    calibration = [batches[16][i:i + 1] for i in range(16)]
    print(f"MobileNet 224, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cases = {"keras": (None, lambda x: model.predict_on_batch(x))}

        def build(name, make, runner):
            t = time.perf_counter()
            path = make()
            cases[name] = ((size_of(path), time.perf_counter() - t), runner(path))

        build("savedmodel", lambda: export.export_savedmodel(model, out / "sm"),
              savedmodel_runner)
        for q, rep in ((None, None), ("fp16", None), ("int8", None), ("int8", calibration)):
            name = f"tflite {q or 'fp32'}{'-full' if rep else ''}"
            build(name, lambda q=q, rep=rep, name=name: export.export_tflite(
                model, out / f"{name.replace(' ', '_')}.tflite", q, rep), tflite_runner)
        try:
            import onnxruntime as ort

            def onnx_runner(path):
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                return lambda x: session.run(None, {"images": x})

            build("onnx", lambda: export.export_onnx(model, out / "m.onnx"), onnx_runner)
            build("onnx int8", lambda: export.export_onnx(model, out / "q.onnx", "int8"),
                  onnx_runner)
        except ImportError:
            print("onnxruntime not installed: ONNX skipped")
        print("| format | size MiB | export s | images/s batch 1 | images/s batch 16 |")
        print("|---|---|---|---|---|")
        for name, (meta, fn) in cases.items():
            size, secs = meta if meta else (float("nan"), float("nan"))
            speeds = [timed(fn, batches[n], runs) for n in (1, 16)]
            print(f"| {name} | {size:.1f} | {secs:.0f} | {speeds[0]:.1f} | {speeds[1]:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
