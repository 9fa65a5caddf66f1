"""The shipped technical model (models/technical/) ranks damage the right way on photos it never saw.

The pristine README samples come from source photos held out of training; each is distorted
here at level 5 (and level 2 for the ordering check) with the same functions that made the
training data, then scored with the shipped model through the public Predictor API.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nima import images
from nima.data import distort
from nima import resolve
from nima.predict import Predictor

REPO = Path(__file__).resolve().parents[1]
PRISTINE = ["dogs.jpg", "rocket.jpg", "bird-lamps.jpg"]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load("technical")  # by name


def test_the_name_technical_is_the_shipped_technical_model(predictor: Predictor):
    assert resolve.model_file("technical") == (REPO / "models" / "technical" / "model.keras",
                                               "technical")
    assert predictor.info["task"] == "technical"
    assert predictor.input_size == json.loads(
        (REPO / "models" / "technical" / "config.json").read_text())["input_size"]
    # The held-out samples really were held out.
    held_out = set(predictor.info["held_out_photos"])
    assert {name.split(".")[0] for name in PRISTINE} <= held_out


def test_pristine_outscores_strong_distortions_on_held_out_photos(predictor: Predictor):
    size = predictor.input_size
    batch, names = [], []
    for name in PRISTINE:
        img = images.load_image(REPO / "data" / "samples" / name, size)
        batch.append(img)
        names.append((name, "pristine", 0))
        for dname, fn in distort.DISTORTIONS.items():
            for level in (2, 5):
                batch.append(fn(img, level, np.random.default_rng(0)))
                names.append((name, dname, level))
    means = predictor.predict_arrays(np.stack(batch)) @ np.arange(1, 11)
    score = {key: float(m) for key, m in zip(names, means)}
    for name in PRISTINE:
        clean = score[(name, "pristine", 0)]
        for dname in distort.DISTORTIONS:
            mild, strong = score[(name, dname, 2)], score[(name, dname, 5)]
            assert clean > strong, (name, dname, clean, strong)
            assert mild > strong, (name, dname, mild, strong)


def test_clean_samples_outscore_every_damaged_sample(predictor: Predictor):
    # The README's own samples: each damaged one (level-4 defect of another held-out photo)
    # must score below every clean one, whatever the defect, JPEG included.
    damaged = ["sunset_blurred.jpg", "brushes_noisy.jpg", "wine_compressed.jpg",
               "dandelions_dark.jpg"]
    batch = np.stack([images.load_image(REPO / "data" / "samples" / name, predictor.input_size)
                      for name in PRISTINE + damaged])
    means = predictor.predict_arrays(batch) @ np.arange(1, 11)
    clean, bad = means[:len(PRISTINE)], means[len(PRISTINE):]
    assert clean.min() > bad.max(), dict(zip(PRISTINE + damaged, means.round(2).tolist()))
