"""kill -9 during training, then `nima train --resume`: nothing lost, nothing repeated.

A real `nima train` process is SIGKILLed; the resumed job must end with every epoch exactly
once, in the right phase, and with the optimizer continuing where the checkpoint left it.
The optimizer check uses the learning rate: with InverseTimeDecay, the rate logged after an
epoch is lr / (1 + decay * iterations), so a restarted (or skipped-ahead) optimizer shows up
as a wrong rate in history.json, and the final checkpoint's iteration counter must be
exactly steps_per_epoch * epochs of that phase.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import backend_env, make_images, tiny_config

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
N_IMAGES, BATCH, VAL = 24, 8, 0.2
N_TRAIN = N_IMAGES - round(N_IMAGES * VAL)
STEPS = math.ceil(N_TRAIN / BATCH)
# Each phase its own rate and decay: a phase run with the other's schedule shows too.
LR = {"dense": 1e-3, "all": 4e-4}
DECAY = {"dense": 0.5, "all": 0.25}

# Runs `nima` but SIGKILLs itself right after the EpochRecorder has finished epoch K
# (KILL_AFTER_EPOCH) or right after it has written file F (KILL_AFTER_WRITE, a file name):
# a real kill -9 at an exact point, without waiting on timing.
DRIVER = """
import os, signal, sys
from nima import cli, files, train

after_epoch = int(os.environ.get("KILL_AFTER_EPOCH", "0"))
after_write = os.environ.get("KILL_AFTER_WRITE", "")
after_write_epoch = int(os.environ.get("KILL_AFTER_WRITE_EPOCH", "0"))
original_end = train.EpochRecorder.on_epoch_end
original_path = files.atomic_path

def on_epoch_end(self, epoch, logs=None):
    self._nima_epoch = epoch + 1
    original_end(self, epoch, logs)
    if epoch + 1 == after_epoch:
        os.kill(os.getpid(), signal.SIGKILL)

class atomic_path:
    def __init__(self, path, suffix=""):
        self.path, self.inner = path, original_path(path, suffix)
    def __enter__(self):
        return self.inner.__enter__()
    def __exit__(self, *exc):
        result = self.inner.__exit__(*exc)
        epoch = max(getattr(r, "_nima_epoch", 0) for r in RECORDERS) if RECORDERS else 0
        if str(self.path).endswith(after_write) and after_write and epoch == after_write_epoch:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

RECORDERS = []
original_init = train.EpochRecorder.__init__
def init(self, *a, **k):
    original_init(self, *a, **k)
    RECORDERS.append(self)
train.EpochRecorder.__init__ = init
train.EpochRecorder.on_epoch_end = on_epoch_end
files.atomic_path = atomic_path
sys.exit(cli.main(sys.argv[1:]))
"""


def _job(tmp_path: Path, dense: int, all_: int) -> tuple[list[str], Path]:
    rows = make_images(tmp_path / "images", N_IMAGES)
    (tmp_path / "samples.json").write_text(json.dumps(rows))
    cfg = tiny_config(epochs_train_dense=dense, epochs_train_all=all_, batch_size=BATCH,
                      validation_fraction=VAL, learning_rate_dense=LR["dense"],
                      learning_rate_all=LR["all"], decay_dense=DECAY["dense"],
                      decay_all=DECAY["all"], horizontal_flip=False)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    job = tmp_path / "job"
    args = ["train", "--config-file", str(tmp_path / "config.json"), "--samples-file",
            str(tmp_path / "samples.json"), "--image-dir", str(tmp_path / "images"),
            "--job-dir", str(job)]
    return args, job


def _state(job: Path) -> dict | None:
    try:
        return json.loads((job / "checkpoint" / "state.json").read_text())
    except FileNotFoundError:
        return None


def _iterations(weights_file: Path) -> int:
    """The optimizer's step counter stored in a Keras .weights.h5 checkpoint."""
    import h5py

    with h5py.File(weights_file, "r") as f:
        return int(f["optimizer"]["vars"]["0"][()])


def _checkpoint_file(job: Path) -> Path:
    state = _state(job)
    return job / "checkpoint" / state.get("weights", "last.weights.h5")


def _resume_and_check(job: Path, dense: int, all_: int, killed: dict, env: dict = ENV) -> None:
    r = subprocess.run([sys.executable, "-m", "nima", "train", "--resume", str(job)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {job} after epoch {killed['epoch']}" in r.stderr
    history = json.loads((job / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, dense + all_ + 1))
    assert [row["phase"] for row in history] == ["dense"] * dense + ["all"] * all_
    # epochs finished before the kill are kept as they were, not re-run
    assert history[:killed["epoch"]] == killed["history"]
    for row in history:  # the optimizer's step count, seen through the decayed rate
        k = row["epoch"] if row["phase"] == "dense" else row["epoch"] - dense
        expected = LR[row["phase"]] / (1 + DECAY[row["phase"]] * STEPS * k)
        assert math.isclose(row["learning_rate"], expected, rel_tol=1e-4), (row, expected)
    assert _iterations(_checkpoint_file(job)) == STEPS * (all_ if all_ else dense)
    # one checkpoint kept, no temp file left over from the kill
    assert sorted(p.name for p in (job / "checkpoint").iterdir()) == sorted(
        ["state.json", _checkpoint_file(job).name])
    summary = json.loads((job / "summary.json").read_text())
    assert summary["epochs"] == dense + all_
    assert (job / "model.keras").is_file() and (job / "best.keras").is_file()
    with open(job / "history.csv") as f:
        assert len(f.read().splitlines()) == dense + all_ + 1


def test_sigkill_real_training_then_resume(tmp_path):
    """SIGKILL `nima train` as soon as state.json shows a completed epoch."""
    dense, all_ = 2, 2
    args, job = _job(tmp_path, dense, all_)
    proc = subprocess.Popen([sys.executable, "-m", "nima", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 240
    try:
        while (_state(job) or {}).get("epoch", 0) < 1:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no epoch completed in time"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed = _state(job)
    assert proc.returncode == -signal.SIGKILL
    assert killed["epoch"] < dense + all_, "training finished before the kill: nothing tested"
    assert not (job / "summary.json").exists()
    _resume_and_check(job, dense, all_, killed)


def _jax_env() -> dict:
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    return backend_env("jax")


@pytest.mark.parametrize("kill, backend", [
    ({"KILL_AFTER_EPOCH": "2"}, "tensorflow"),  # exactly at the phase boundary: dense done,
    # all not started
    # between the checkpoint weights and state.json of epoch 2: the weights are newer than
    # the state that describes them
    ({"KILL_AFTER_WRITE": ".weights.h5", "KILL_AFTER_WRITE_EPOCH": "2"}, "tensorflow"),
    # the same job on JAX, TensorFlow hidden: its checkpoints resume the same way
    ({"KILL_AFTER_EPOCH": "2"}, "jax"),
], ids=["phase-boundary", "between-weights-and-state", "phase-boundary-jax"])
def test_sigkill_at_exact_points_then_resume(tmp_path, kill, backend):
    env = ENV if backend == "tensorflow" else _jax_env()
    dense, all_ = 2, 1
    args, job = _job(tmp_path, dense, all_)
    r = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True,
                       env={**env, **kill}, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    killed = _state(job)
    expected_epoch = 2 if "KILL_AFTER_EPOCH" in kill else 1
    assert killed["epoch"] == expected_epoch and killed["phase"] == "dense"
    _resume_and_check(job, dense, all_, killed, env)


def test_resume_does_not_need_the_base_weights_file_any_more(tmp_path):
    """The checkpoint holds every weight: a job whose base_weights file is gone (another
    machine, a Docker mount, a fresh clone of a config naming build/weights/...) resumes."""
    import keras

    weights = tmp_path / "base.weights.h5"
    keras.applications.MobileNet(alpha=0.25, include_top=False, pooling="avg", weights=None,
                                 input_shape=(32, 32, 3)).save_weights(weights)
    args, job = _job(tmp_path, 1, 1)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()),
                                  "base_weights": str(weights)}))
    r = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True,
                       env={**ENV, "KILL_AFTER_EPOCH": "1"}, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    weights.unlink()
    r = subprocess.run([sys.executable, "-m", "nima", "train", "--resume", str(job)],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {job} after epoch 1" in r.stderr
    assert json.loads((job / "summary.json").read_text())["epochs"] == 2
