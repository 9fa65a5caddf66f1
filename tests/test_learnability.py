"""The whole training path must learn a known signal: a failing loss, label handling or
input pipeline makes this test fail. Images' true score distribution is a function of their
brightness; a tiny MobileNet trained from random init through `nima train` must rank
held-out images by it (SRCC > 0.9).

The same job runs on every Keras backend that is installed: TensorFlow (tf.data input) in
this process, JAX and PyTorch (nima.feed input) in a process of their own, TensorFlow hidden.
The same quality is asked of each.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import backend_env, make_images, tiny_config

BACKENDS = ["tensorflow", "jax", "torch"]


def learn(tmp_path: Path) -> None:
    from nima import evaluate, train
    from nima.config import Config

    rows = make_images(tmp_path / "images", 320, size=(40, 40), seed=7)
    (tmp_path / "train.json").write_text(json.dumps(rows[:240]))
    (tmp_path / "test.json").write_text(json.dumps(rows[240:]))
    config = Config.from_dict(tiny_config(
        input_size=32, resize_size=36, batch_size=16, epochs_train_dense=2, epochs_train_all=14,
        learning_rate_dense=3e-3, learning_rate_all=2e-3, dropout_rate=0.1, batchnorm_momentum=0.8,
        validation_fraction=0.1))
    job = train.train(config, tmp_path / "train.json", tmp_path / "images", tmp_path / "job")

    history = json.loads((job / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, 17))
    assert [r["phase"] for r in history] == ["dense"] * 2 + ["all"] * 14
    assert history[-1]["loss"] < history[0]["loss"]

    result = evaluate.evaluate(tmp_path / "test.json", image_dir=tmp_path / "images", model=job)
    assert result["n"] == 80
    assert result["srcc_mean"] > 0.9, result
    prior = evaluate.evaluate(tmp_path / "test.json", baseline="prior",
                              prior_samples_file=tmp_path / "train.json")
    assert result["emd_r2"] < prior["emd_r2"], (result, prior)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_learns_brightness_score(tmp_path, backend):
    if backend == "tensorflow":
        learn(tmp_path)
        return
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"the {backend} backend is not installed")

    tests = Path(__file__).parent
    r = subprocess.run(
        [sys.executable, "-c", "import sys, pathlib, test_learnability as t; "
         "t.learn(pathlib.Path(sys.argv[1])); "
         "print('learned')", str(tmp_path)],
        cwd=tests, capture_output=True, text=True, timeout=900,
        env=backend_env(backend, path=(tests,)))
    assert r.returncode == 0 and "learned" in r.stdout, r.stderr[-4000:]
    assert json.loads((tmp_path / "job" / "job.json").read_text())["versions"]["backend"] \
        == backend
