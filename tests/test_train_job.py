"""What a finished training job holds: best.keras is the model of the epoch with the lowest
validation loss, model.keras the model after the last epoch, and summary.json says which.

The job is made so that the last epoch is not the best (phase 2 runs at a learning rate that
wrecks the model), so "best" and "last" cannot be confused; each saved model is then
checked by recomputing, outside Keras' fit loop, the validation loss history.json recorded
for its epoch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_images, tiny_config
from nima import images, labels, scores, train
from nima.config import Config
from nima.model import load_model


def validation_loss(model_file, validation: list[tuple[labels.Sample, object]]) -> float:
    model = load_model(model_file)
    pixels = np.stack([images.load_image(p, 32) for _, p in validation]).astype(np.float32)
    y_true = np.stack([s.label for s, _ in validation])
    return float(np.mean(scores.emd(y_true, model.predict(pixels, verbose=0), r=2)))


def test_best_model_is_the_best_epoch_and_model_keras_the_last(tmp_path):
    samples_file = tmp_path / "samples.json"
    samples_file.write_text(json.dumps(make_images(tmp_path / "images", 24)))
    config = Config.from_dict(tiny_config(epochs_train_dense=2, epochs_train_all=1,
                                          learning_rate_all=10.0))
    job = train.train(config, samples_file, tmp_path / "images", tmp_path / "job")

    history = json.loads((job / "history.json").read_text())
    val = [row["val_loss"] for row in history]
    best = int(np.argmin(val)) + 1
    assert np.isfinite(val).all() and best < len(history), val  # the last is not the best
    summary = json.loads((job / "summary.json").read_text())
    assert summary["best_epoch"] == best and summary["best_val_loss"] == val[best - 1]

    # The validation images, as training chose them.
    found, _ = labels.find_images(labels.load_samples(samples_file), tmp_path / "images")
    _, validation = labels.split(found, config.validation_fraction, config.seed)
    assert len(validation) == summary["n_validation"] == 5
    assert validation_loss(job / "best.keras", validation) == pytest.approx(val[best - 1],
                                                                           rel=1e-4)
    assert validation_loss(job / "model.keras", validation) == pytest.approx(val[-1], rel=1e-4)
