"""Which Keras backend runs (tensorflow, jax, torch) and what it can do here.

TensorFlow is the default and the Docker images' backend: tf.data input, tf.distribute,
TensorBoard, and the TFLite/SavedModel/ONNX exports. With `KERAS_BACKEND=jax` (or `torch`) the
model, the loss, training and prediction are the same Keras code; the input path becomes
`nima.feed` (keras.utils.PyDataset) and several devices are used through
`keras.distribution`. This module answers the questions the rest of the toolkit asks, without
importing TensorFlow unless it is the backend.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from nima.errors import NimaError

# The package that carries each backend, for the versions recorded in a job.
PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def name() -> str:
    """The backend Keras uses or will use. Read the way Keras reads it ($KERAS_BACKEND, then
    keras.json) while Keras is not imported yet: importing it imports the backend, seconds
    that a prediction from a cached TFLite file does not need."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    try:
        return json.loads((home / "keras.json").read_text()).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def check() -> None:
    """A backend nima runs on, installed: one line otherwise (Keras itself would raise a
    traceback from deep inside its import)."""
    backend = name()
    if backend not in PACKAGES:
        raise NimaError(f"KERAS_BACKEND={backend}: nima runs on {', '.join(PACKAGES)}")
    if not _installed(PACKAGES[backend]):
        hint = {"jax": "pip install 'jax[cpu]'", "torch": "pip install torch"}.get(
            backend, "pip install tensorflow")
        raise NimaError(f"KERAS_BACKEND={backend} but {PACKAGES[backend]} is not installed "
                        f"({hint})")


def is_tensorflow() -> bool:
    return name() == "tensorflow"


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def has_tensorflow() -> bool:
    """Whether TensorFlow can be imported at all (it may be, under another backend)."""
    return _installed("tensorflow")


def require_tensorflow(what: str) -> None:
    """One line for a feature that only exists in TensorFlow."""
    if not is_tensorflow():
        raise NimaError(f"{what} needs the TensorFlow backend (KERAS_BACKEND={name()} now; "
                        "run with KERAS_BACKEND=tensorflow, TensorFlow installed)")


def devices(kind: str) -> list[str]:
    """Devices of `kind` ("gpu", "cpu") the backend sees, as "gpu:0", ...; [] when none."""
    if is_tensorflow():
        import tensorflow as tf

        return [f"{kind}:{i}" for i, _ in enumerate(tf.config.list_logical_devices(kind.upper()))]
    if name() == "jax":
        import jax

        try:
            # Their ids, as keras.distribution names them: in a cluster of several
            # processes they are global (cpu:0, cpu:2048 ...).
            return [f"{kind}:{d.id}" for d in jax.devices(kind)]
        except RuntimeError:  # no such platform
            return []
    if name() == "torch":
        import torch

        if kind == "gpu":
            return [f"gpu:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu:0"]
    return ["cpu:0"] if kind == "cpu" else []


def has_gpu() -> bool:
    return bool(devices("gpu"))


def has_tensorboard() -> bool:
    """keras.callbacks.TensorBoard writes through tf.summary, under any backend."""
    return has_tensorflow()


def versions() -> dict[str, str]:
    """Versions worth recording with a trained model: Keras and its backend."""
    import keras

    found = {"keras": keras.__version__, "backend": name()}
    try:
        found[name()] = version(PACKAGES.get(name(), name()))
    except PackageNotFoundError:
        pass
    return found
