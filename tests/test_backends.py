"""Keras 3 on the JAX backend, with TensorFlow hidden: train, resume, predict, evaluate,
the Python API and several devices, through the real `nima` command in subprocesses (a
process picks its Keras backend once, at import).

`tests/hide_tensorflow` makes `import tensorflow` fail in those processes, so any TensorFlow
import left on these paths fails the tests. Models move between backends: a model trained on
JAX scores the same under TensorFlow.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, backend_env, make_images, tiny_config

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                reason="jax is not installed (pip install 'jax[cpu]')")


def nima(*args: str, env: dict, cwd: Path | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "nima", *args], capture_output=True, text=True,
                       env=env, cwd=cwd, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-4000:]
    return r


@pytest.fixture(scope="module")
def jax_job(tmp_path_factory):
    """A tiny model trained by `nima train` on JAX without TensorFlow."""
    d = tmp_path_factory.mktemp("jax")
    rows = make_images(d / "images", 48, size=(40, 40), seed=3)
    (d / "samples.json").write_text(json.dumps(rows))
    (d / "config.json").write_text(json.dumps(tiny_config(epochs_train_all=2)))
    r = nima("train", "--config-file", str(d / "config.json"), "--samples-file",
             str(d / "samples.json"), "--image-dir", str(d / "images"), "--job-dir",
             str(d / "job"), env=backend_env("jax"))
    return d, d / "job", r


def test_jax_training_without_tensorflow(jax_job):
    d, job, r = jax_job
    record = json.loads((job / "job.json").read_text())
    assert record["versions"]["backend"] == "jax" and "jax" in record["versions"]
    history = json.loads((job / "history.json").read_text())
    assert [row["phase"] for row in history] == ["dense", "all", "all"]
    assert all(np.isfinite(row["loss"]) and np.isfinite(row["val_loss"]) for row in history)
    summary = json.loads((job / "summary.json").read_text())
    assert summary["replicas"] == 1 and summary["n_train"] + summary["n_validation"] == 48
    assert (job / "model.keras").is_file() and (job / "best.keras").is_file()
    # TensorBoard writes through tf.summary: no logs without TensorFlow, and it says so.
    assert not (job / "logs").exists()
    assert "no TensorBoard logs" in r.stderr
    assert "libtpu" not in r.stderr  # JAX's plugin probing is not shown to users


def test_jax_predict_evaluate_and_api_without_tensorflow(jax_job):
    d, job, _ = jax_job
    env = backend_env("jax")
    out = d / "predictions.json"
    for backend in ("keras", "auto"):  # auto means Keras where TFLite cannot convert
        r = nima("predict", "--model", str(job), "--backend", backend, "--image-source",
                 str(d / "images"), "--predictions-file", str(out), env=env)
        results = json.loads(out.read_text())
        assert len(results) == 48 and all(abs(sum(x["predictions"]) - 1) < 1e-4
                                          for x in results)
        assert "backend keras" in r.stderr
    nima("evaluate", "--model", str(job), "--samples-file", str(d / "samples.json"),
         "--image-dir", str(d / "images"), "--output-file", str(d / "evaluation.json"),
         env=env)
    evaluation = json.loads((d / "evaluation.json").read_text())
    assert evaluation["n"] == 48 and np.isfinite(evaluation["emd_r2"])

    api = subprocess.run([sys.executable, "-c", (
        "import json, sys, nima\n"
        f"model = nima.load({str(job)!r})\n"
        f"results = model.predict(images={str(d / 'images' / 'img0000.jpg')!r})\n"
        "assert 'tensorflow' not in sys.modules  # hidden, never imported\n"
        "print(json.dumps(results))")], capture_output=True, text=True, env=env, timeout=300)
    assert api.returncode == 0, api.stderr[-3000:]
    (one,) = json.loads(api.stdout)
    by_id = {x["image_id"]: x for x in results}
    np.testing.assert_allclose(one["predictions"], by_id["img0000"]["predictions"], atol=1e-5)


def test_jax_model_scores_the_same_under_tensorflow(jax_job):
    """The .keras file is backend-neutral: TensorFlow (this process) gives JAX's scores."""
    from nima.predict import Predictor

    d, job, _ = jax_job
    r = nima("predict", "--model", str(job), "--backend", "keras", "--image-source",
             str(d / "images"), env=backend_env("jax"))
    jax_results = {x["image_id"]: x["predictions"] for x in json.loads(r.stdout)}
    tf_results = {x["image_id"]: x["predictions"]
                  for x in Predictor.load(job, backend="keras").score_files(
                      sorted((d / "images").iterdir()))}
    assert jax_results.keys() == tf_results.keys()
    for key in jax_results:
        np.testing.assert_allclose(jax_results[key], tf_results[key], atol=1e-5)


def test_shipped_models_score_the_same_on_jax(tmp_path):
    """Both shipped models on JAX without TensorFlow: TensorFlow's scores (this process, Keras
    backend) and, for `aesthetic`, idealo's Keras 2 means (bench/aesthetic_parity.py)."""
    from nima.predict import Predictor

    samples = REPO / "data" / "samples"
    out = tmp_path / "jax.json"
    nima("predict", "--image-source", str(samples), "--also", "technical",
         "--predictions-file", str(out), env=backend_env("jax"))
    jax_results = {x["image"]: x for x in json.loads(out.read_text())}
    assert len(jax_results) == 7
    files = sorted(samples.glob("*.jpg"))
    keras2 = {r["image"]: r["mean"] for r in json.loads(
        (REPO / "bench" / "results" / "aesthetic_keras2_samples.json").read_text())["images"]}
    for name in ("aesthetic", "technical"):
        for tf_result in Predictor.load(name, backend="keras").score_files(files):
            image = Path(tf_result["image"]).name
            got = jax_results[image]["scores"][name]
            np.testing.assert_allclose(got["predictions"], tf_result["predictions"], atol=1e-5)
            if name == "aesthetic":
                assert abs(got["mean_score_prediction"] - keras2[image]) <= 0.01


def test_what_needs_tensorflow_says_so_in_one_line(jax_job):
    d, job, _ = jax_job
    env = backend_env("jax")
    for args in (["export", "--model", str(job), "--format", "tflite", "--output",
                  str(d / "m.tflite")],
                 ["predict", "--model", str(job), "--backend", "tflite", "--image-source",
                  str(d / "images" / "img0000.jpg")]):
        r = nima(*args, env=env, check=False)
        assert r.returncode != 0
        last = r.stderr.strip().splitlines()[-1]
        assert "needs the TensorFlow backend (KERAS_BACKEND=jax" in last, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
    config = json.loads((d / "config.json").read_text())
    (d / "multi.json").write_text(json.dumps({**config, "distribution": "multi_worker"}))
    # Multi-worker on JAX is tests/test_distribute.py's; without a cluster it says so and
    # trains here, as on TensorFlow.
    r = nima("train", "--config-file", str(d / "multi.json"), "--samples-file",
             str(d / "samples.json"), "--image-dir", str(d / "images"), "--job-dir",
             str(d / "multi"), env=env)
    assert "multi_worker without a TF_CONFIG cluster: training on this host only" in r.stderr


@pytest.mark.slow
def test_jax_data_parallel_over_two_devices(tmp_path):
    """keras.distribution.DataParallel: JAX shows two CPU devices (XLA flag), "mirrored"
    trains on both, batch_size per replica, global batches split between them."""
    rows = make_images(tmp_path / "images", 40, size=(40, 40), seed=5)
    (tmp_path / "samples.json").write_text(json.dumps(rows))
    (tmp_path / "config.json").write_text(json.dumps(tiny_config(
        batch_size=4, distribution="mirrored", validation_fraction=0.25)))
    env = backend_env("jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    r = nima("train", "--config-file", str(tmp_path / "config.json"), "--samples-file",
             str(tmp_path / "samples.json"), "--image-dir", str(tmp_path / "images"),
             "--job-dir", str(tmp_path / "job"), env=env)
    assert "2 replica(s) (cpu:0, cpu:1)" in r.stderr
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert (summary["replicas"], summary["global_batch_size"]) == (2, 8)
    history = json.loads((tmp_path / "job" / "history.json").read_text())
    assert len(history) == 2 and all(np.isfinite(row["val_loss"]) for row in history)
    # Full global batches only: 30 training images -> 3 steps of 8 per epoch.
    assert summary["n_train"] == 30
    assert history[0]["train_images_per_second"] > 0



@pytest.mark.parametrize("backend, message", [
    ("foo", "KERAS_BACKEND=foo: nima runs on tensorflow, jax, torch"),
    # tests/hide_tensorflow makes it missing
    ("tensorflow", "KERAS_BACKEND=tensorflow but tensorflow is not installed "
                   "(pip install tensorflow)"),
])
def test_an_unusable_backend_is_one_line(backend, message):
    r = nima("predict", "--model", "technical", "--image-source",
             str(REPO / "data" / "samples" / "dogs.jpg"), env=backend_env(backend),
             check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == f"nima predict: error: {message}"
