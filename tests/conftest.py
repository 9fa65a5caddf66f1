"""Shared fixtures: small generated datasets and configs (no network, no downloaded weights)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    # `nima predict` caches TFLite conversions by model hash in ~/.cache/nima; every run of
    # the suite makes new random models, so their conversions piled up there (about 1 MB
    # each, run after run). Set before test modules are imported: some copy os.environ for
    # their subprocesses at import.
    config.nima_cache = tempfile.mkdtemp(prefix="nima-tests-cache-")
    os.environ["NIMA_CACHE_DIR"] = config.nima_cache


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "nima_cache", ""), ignore_errors=True)


REPO = Path(__file__).resolve().parents[1]
HIDE_TF = REPO / "tests" / "hide_tensorflow"  # see its sitecustomize.py


# Tests of a behaviour that must hold on each installed Keras backend.
BACKENDS = ["tensorflow", pytest.param("jax", marks=pytest.mark.skipif(
    importlib.util.find_spec("jax") is None,
    reason="jax is not installed (pip install 'jax[cpu]')"))]


def backend_env(backend: str, path: tuple[Path, ...] = (), **extra: str) -> dict:
    """The environment of a `nima` process on `backend`, TensorFlow hidden, `path` first on
    its module path."""
    path = [str(HIDE_TF), *map(str, path)]
    path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": os.pathsep.join(path),
            "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", **extra}


def gaussian_label(mean: float, sd: float = 1.2) -> list[float]:
    """A 10-bin distribution centred on `mean` (ratings 1..10)."""
    bins = np.arange(1, 11)
    p = np.exp(-0.5 * ((bins - mean) / sd) ** 2)
    return list(p / p.sum())


def make_images(directory: Path, n: int, size=(48, 64), seed: int = 0, ext: str = "jpg"):
    """Write n noisy images whose mean score is a known function of their brightness.

    Returns the label rows. Brightness b in [0.1, 0.9] -> mean score 1 + 9 * (b - 0.1) / 0.8.
    """
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        b = rng.uniform(0.1, 0.9)
        noise = rng.normal(0, 20, (*size, 3))
        arr = np.clip(b * 255 + noise, 0, 255).astype(np.uint8)
        image_id = f"img{i:04d}"
        Image.fromarray(arr).save(directory / f"{image_id}.{ext}")
        rows.append({"image_id": image_id, "label": gaussian_label(1 + 9 * (b - 0.1) / 0.8)})
    return rows


def tiny_config(**overrides) -> dict:
    cfg = {
        "base_model_name": "MobileNet", "base_model_args": {"alpha": 0.25},
        "base_weights": None, "input_size": 32, "resize_size": 40, "batch_size": 8,
        "epochs_train_dense": 1, "epochs_train_all": 1, "learning_rate_dense": 1e-3,
        "learning_rate_all": 1e-3, "decay_all": 0.0, "dropout_rate": 0.1,
        "validation_fraction": 0.2, "seed": 1,
    }
    cfg.update(overrides)
    return cfg


def base_weights(model_file: Path) -> list[np.ndarray]:
    """The base CNN's arrays of a saved NIMA model (for checks of where weights came from)."""
    from nima.model import base_of, load_model

    return [np.asarray(w) for w in base_of(load_model(model_file)).weights]


def finetune_config(**overrides) -> dict:
    """The shipped model's config, cut to one head-only epoch (its base stays as loaded)."""
    cfg = json.loads((REPO / "models" / "technical" / "config.json").read_text())
    cfg.update(epochs_train_dense=1, epochs_train_all=0, batch_size=8, **overrides)
    return cfg


@pytest.fixture
def dataset(tmp_path: Path):
    """(samples_file, image_dir, config_file) for 24 small generated images."""
    image_dir = tmp_path / "images"
    rows = make_images(image_dir, 24)
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps(rows))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config()))
    return samples, image_dir, config
