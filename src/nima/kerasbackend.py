"""Which Keras backend runs (tensorflow, jax, torch) and what it can do here.

TensorFlow is the default and the Docker images' backend: tf.data input, tf.distribute,
TensorBoard, and the TFLite/SavedModel/ONNX exports. With `KERAS_BACKEND=jax` (or `torch`) the
model, the loss, training and prediction are the same Keras code; the input path becomes
`nima.feed` (keras.utils.PyDataset) and several devices are used through
`keras.distribution`. This module answers the questions the rest of the toolkit asks, without
importing TensorFlow unless it is the backend.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import json
import os
import re
import sys
import tempfile
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


# --- TensorFlow's start-up lines -----------------------------------------------------------------

# TensorFlow's native libraries log through abseil before anything calls absl::InitializeLog,
# and such lines ignore TF_CPP_MIN_LOG_LEVEL: each start printed these seven here (TF 2.21, a
# CPU machine), the last one looking like a failure. Only these exact messages are dropped; a
# cuInit failure other than "no driver" (303), e.g. a driver too old, stays visible.
NATIVE_NOISE = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|^I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on\."
    r"|^I\d{4} [\d:. ]+\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, "
    r"GPU will not be used\.$"
    r"|^E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] failed call to cuInit: .*\(303\)$")


@contextlib.contextmanager
def native_stderr_filtered(noise: re.Pattern = NATIVE_NOISE):
    """Hold back what anything in this process, C++ included, writes to file descriptor 2, and
    write it out at the end without the lines `noise` matches (Python's own writes too, in
    order). Without a usable descriptor 2 nothing is filtered."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(x for x in lines if not noise.search(x.rstrip("\n"))))
            sys.stderr.flush()


class _QuietTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `tensorflow`, wherever that first happens (Keras imports it too), inside
    native_stderr_filtered, and lists its GPUs there: that is when CUDA is probed (the cuInit
    line). Physical devices only, so the runtime stays unconfigured for tf.distribute."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and the search below must not find us again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self.real = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.real
        with native_stderr_filtered():
            self.real.exec_module(module)
            module.config.list_physical_devices("GPU")


def quiet_tensorflow_start() -> None:
    """Drop TensorFlow's start-up lines (NATIVE_NOISE) from this process's stderr. For the
    command line: it costs nothing until TensorFlow is imported, and a command that never
    imports it (predict from a cached TFLite file, the data tools) does not start it."""
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())
