"""`nima train --init-model`: fine-tuning starts from a trained NIMA model's weights.

Phase 1 freezes the base (BatchNorm in inference mode), so after a phase-1-only job the base
holds exactly the initial weights while the head has moved: that shows both the copy and the
training that followed it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config
from test_legacy import idealo_model, save_keras2_weights

from nima import train
from nima.cli import main
from nima.config import Config
from nima.model import base_of, load_model

HEAD_ONLY = dict(epochs_train_dense=1, epochs_train_all=0)


def _weights(model) -> tuple[list[np.ndarray], list[np.ndarray]]:
    head = model.get_layer("scores")
    return [np.asarray(w) for w in base_of(model).weights], [np.asarray(w) for w in head.weights]


@pytest.fixture(scope="module")
def first_job(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A trained tiny job (both phases) and its data."""
    from conftest import make_images

    d = tmp_path_factory.mktemp("first")
    samples = d / "samples.json"
    samples.write_text(json.dumps(make_images(d / "images", 24)))
    job = train.train(Config.from_dict(tiny_config()), samples, d / "images", d / "job")
    return job, samples, d / "images"


def test_fine_tuning_starts_from_the_init_model(first_job, tmp_path):
    job, samples, images = first_job
    config = Config.from_dict(tiny_config(**HEAD_ONLY, seed=7))
    second = train.train(config, samples, images, tmp_path / "second", init_model=job)
    init_base, init_head = _weights(load_model(job / "best.keras"))
    base, head = _weights(load_model(second / "model.keras"))
    assert len(base) == len(init_base) > 50
    for a, b in zip(base, init_base):
        np.testing.assert_array_equal(a, b)
    assert max(np.abs(a - b).max() for a, b in zip(head, init_head)) > 1e-4
    assert json.loads((second / "job.json").read_text())["init_model"] == str(
        (job / "best.keras").resolve())


def test_resume_before_the_first_epoch_starts_from_the_init_model(first_job, tmp_path):
    job, samples, images = first_job
    config = Config.from_dict(tiny_config(**HEAD_ONLY))
    second = train.train(config, samples, images, tmp_path / "second", init_model=job)
    # As if killed before its first epoch ended: no checkpoint, no results.
    for name in ("checkpoint", "model.keras", "best.keras", "history.json", "summary.json"):
        path = second / name
        if path.is_dir():
            for f in path.iterdir():
                f.unlink()
            path.rmdir()
        else:
            path.unlink()
    train.resume(second)
    base, _ = _weights(load_model(second / "model.keras"))
    init_base, _ = _weights(load_model(job / "best.keras"))
    for a, b in zip(base, init_base):
        np.testing.assert_array_equal(a, b)


def test_keras2_weights_as_init_model(first_job, tmp_path):
    _, samples, images = first_job
    original = idealo_model(alpha=0.25, size=96)
    weights = save_keras2_weights(original, tmp_path / "weights_mobilenet_aesthetic_0.07.hdf5")
    job = train.train(Config.from_dict(tiny_config(**HEAD_ONLY)), samples, images,
                      tmp_path / "job", init_model=weights)
    base, _ = _weights(load_model(job / "model.keras"))
    expected = [np.asarray(w) for layer in original.layers[:-2] for w in layer.weights]
    assert len(base) == len(expected)
    for a, b in zip(base, expected):
        np.testing.assert_array_equal(a, b)


def test_init_model_of_another_base_is_one_line(first_job, tmp_path, capsys):
    job, samples, images = first_job
    config = tmp_path / "half.json"
    config.write_text(json.dumps(tiny_config(base_model_args={"alpha": 0.5})))
    code = main(["train", "--config-file", str(config), "--samples-file", str(samples),
                 "--image-dir", str(images), "--job-dir", str(tmp_path / "job"),
                 "--init-model", str(job)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert err.startswith(f"nima train: error: --init-model {(job / 'best.keras').resolve()} "
                          "does not fit the config's MobileNet {'alpha': 0.5}: "), err
    assert not (tmp_path / "job" / "model.keras").exists()


def test_init_model_errors(first_job, tmp_path, capsys):
    job, samples, images = first_job
    args = ["train", "--config-file", str(job / "config.json"), "--samples-file", str(samples),
            "--image-dir", str(images), "--job-dir", str(tmp_path / "job")]
    assert main([*args, "--init-model", str(tmp_path / "missing.keras")]) == 1
    assert "error: model not found:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--resume", str(job), "--init-model", str(job)])
    assert e.value.code == 2
    assert "--init-model starts a new job; --resume continues one" in capsys.readouterr().err
