"""Inference backends: run a NIMA Keras model as Keras itself or as a TFLite (LiteRT) graph.

Why TFLite on CPU: measured on 2 cores, the Keras MobileNet forward pass in TensorFlow runs at
~47 img/s (batch 32); the same model converted to a float32 TFLite flatbuffer and run by the
LiteRT interpreter with XNNPACK runs at ~125 img/s, with outputs equal to 1e-8. XLA on CPU was
slower (7 img/s). On a GPU, Keras stays the right choice (batched GPU kernels).

The converted flatbuffer is cached under ~/.cache/nima/tflite (or $NIMA_CACHE_DIR/tflite),
keyed by the SHA-256 of the model file(s), so conversion (seconds) happens once per model.
The conversion is `nima export --format tflite`'s own (`export.tflite_bytes`), so the file a
user exports is the file predict runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np

from nima import files
from nima.errors import ModelError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "keras", "tflite")
# Part of the cache key: a new conversion (other outputs, ops) must not meet old files.
CONVERSION = "export.tflite_bytes/1"


class Runner(Protocol):
    """Maps a float32 batch (N, H, W, 3) of RGB 0..255 to (N, 10) probabilities."""

    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def cpu_threads() -> int:
    """CPUs this process may use (cgroup/affinity aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# --- Keras ------------------------------------------------------------------------------------

class KerasRunner:
    name = "keras"

    def __init__(self, model):
        self.model = model

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(np.asarray(batch, np.float32)), np.float64)


# --- TFLite -----------------------------------------------------------------------------------

def convert_tflite(model) -> bytes:
    """A Keras model -> float32 TFLite flatbuffer with a dynamic batch dimension, through
    `export.tflite_bytes` (no quantisation: scores equal the Keras model's to ~1e-6)."""
    import contextlib
    import io

    from nima import kerasbackend

    kerasbackend.require_tensorflow("converting a model for the TFLite backend")
    from nima import export

    # The SavedModel step of a conversion may print to stdout, which may be carrying JSON
    # results: that chatter is captured and logged instead.
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return export.tflite_bytes(model)
    except export.ExportError as e:
        raise ModelError(str(e)) from None
    finally:
        log.debug("converter output: %s", chatter.getvalue())


def _interpreter_class() -> tuple[type, str]:
    """LiteRT's interpreter if installed (tf.lite.Interpreter is deprecated in TF 2.21 and
    warns on every construction), else TensorFlow's own."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, "tf.lite"


class TFLiteRunner:
    """One interpreter, XNNPACK on `num_threads`; resized only when the batch size changes."""

    name = "tflite"

    def __init__(self, model_content: bytes, num_threads: int | None = None):
        cls, self.impl = _interpreter_class()
        self.num_threads = num_threads or cpu_threads()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            self.interp = cls(model_content=model_content, num_threads=self.num_threads)
        detail = self.interp.get_input_details()[0]
        self._input = detail["index"]
        self.input_size = int(detail["shape_signature"][1])
        # The distribution: the one (N, 10) output (an exported file also has mean and sd).
        self._output = next(d["index"] for d in self.interp.get_output_details()
                            if list(d["shape_signature"][1:]) == [10])
        self._batch = -1

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)
        if len(batch) == 0:
            return np.empty((0, 10))
        if batch.shape[0] != self._batch:
            self.interp.resize_tensor_input(self._input, batch.shape, strict=False)
            self.interp.allocate_tensors()
            self._batch = batch.shape[0]
        self.interp.set_tensor(self._input, batch)
        self.interp.invoke()
        return np.array(self.interp.get_tensor(self._output), np.float64)


# --- cache ------------------------------------------------------------------------------------

def cache_dir() -> Path:
    env = os.environ.get("NIMA_CACHE_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nima"
    return base / "tflite"


def file_key(paths: Iterable[Path]) -> str:
    """SHA-256 over the model file(s) bytes and the TF version: same weights, same key."""
    h = hashlib.sha256(CONVERSION.encode())
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    try:
        from importlib.metadata import version

        h.update(version("tensorflow").encode())
    except Exception:
        pass
    return h.hexdigest()[:32]


def cached_tflite(key: str, model_fn: Callable[[], object]) -> bytes:
    """The converted flatbuffer for `key`, converting (and caching) on first use."""
    path = cache_dir() / f"{key}.tflite"
    if path.is_file():
        log.debug("tflite cache hit %s", path)
        return path.read_bytes()
    log.info("converting the model to TFLite (once per model; cached in %s)", path.parent)
    content = convert_tflite(model_fn())
    try:
        with files.atomic_open(path, "wb") as f:
            f.write(content)
    except Exception as e:  # a read-only home must not stop prediction
        log.warning("cannot cache the converted model: %s", e)
    return content


def cached_runner(key: str, model_fn: Callable[[], object],
                  num_threads: int | None = None) -> TFLiteRunner:
    """A TFLiteRunner on the cached conversion for `key`. A cache entry the interpreter
    refuses (damaged on disk, written by another tool) is converted again, not fatal: it
    would otherwise break every run until someone finds ~/.cache/nima."""
    try:
        return TFLiteRunner(cached_tflite(key, model_fn), num_threads)
    except (ValueError, RuntimeError) as e:
        path = cache_dir() / f"{key}.tflite"
        log.warning("discarding the unreadable cached conversion %s (%s)", path, e)
        path.unlink(missing_ok=True)
    try:
        return TFLiteRunner(cached_tflite(key, model_fn), num_threads)
    except (ValueError, RuntimeError) as e:
        raise ModelError(f"the TFLite interpreter refuses the converted model: {e}") from None
