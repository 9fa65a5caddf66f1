"""tf.distribute through the real `nima train` path: two workers on loopback (also on JAX),
two mirrored CPU replicas, mixed precision. Training runs in subprocesses because a strategy
(or logical device layout) must be set up before TensorFlow starts, which the test process
has already done."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BACKENDS, backend_env, make_images, tiny_config

from nima import distribute, train
from nima.errors import NimaError


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _start_cluster(tmp_path: Path, backend: str, scratch: Path, args: list[str],
                   tag: str = "worker") -> list:
    """Two `nima` processes of one TF_CONFIG cluster on 127.0.0.1; worker 1 keeps its copy of
    the job files in `scratch`. Logs: tmp_path/<tag><index>.log."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env = (_env(TF_CONFIG=tf_config) if backend == "tensorflow" else
               backend_env(backend, TF_CONFIG=tf_config))
        if index == 1:
            env["NIMA_WORKER_DIR"] = str(scratch)
        log = open(tmp_path / f"{tag}{index}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "nima.cli", *args], env=env,
                                       stdout=log, stderr=subprocess.STDOUT), log, log.name))
    return procs


def _wait(procs: list, kill: bool = False) -> list[str]:
    """The processes' logs once both exit 0 (or, with `kill`, once both are killed)."""
    try:
        if kill:
            for p, _, _ in procs:
                p.kill()
        codes = [p.wait(timeout=480) for p, _, _ in procs]
    finally:
        for p, log, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    logs = [Path(name).read_text() for _, _, name in procs]
    assert kill or codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    return logs


def _data(tmp_path: Path, n: int = 24, **config) -> tuple[Path, Path, Path]:
    rows = make_images(tmp_path / "images", n)
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps(rows))
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny_config(**config)))
    return samples, tmp_path / "images", cfg


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "NIMA_WORKER_DIR")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)
    return env


def _weights(model_file: Path) -> list[np.ndarray]:
    import keras

    model = keras.saving.load_model(model_file, compile=False)
    return [np.asarray(w) for w in model.get_weights()]


def images_counted(row: dict) -> float:
    """The images one epoch's throughput counts: rate x seconds, back from history.json."""
    return row["train_images_per_second"] * row["train_seconds"]


def rounding(row: dict, images: int) -> float:
    """How far images_counted may be off when it is right: history.json rounds the seconds
    to 0.001 and the rate to 0.01. A fixed 1% was wrong for epochs under 0.05 s (a fast
    machine's second epoch of two steps)."""
    return images * 0.0005 / row["train_seconds"] + 0.005 * row["train_seconds"] + 1e-5


# --- pure logic ---------------------------------------------------------------------------------

def test_shard_equal_slices_cover_disjoint_items():
    items = list(range(11))
    parts = [distribute.shard(items, 3, i, equal=True) for i in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    assert not set(parts[0]) & set(parts[1]) and not set(parts[1]) & set(parts[2])
    uneven = [distribute.shard(items, 3, i, equal=False) for i in range(3)]
    assert sorted(sum(uneven, [])) == items


@pytest.mark.parametrize("tf_config, chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}},
     False),
    ({"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "chief", "index": 0}},
     True),
])
def test_is_chief(monkeypatch, tf_config, chief):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert train.is_chief() is chief
    # On JAX the cluster's process 0 coordinates and is the chief.
    addresses, position = distribute.cluster()
    assert (position == 0) is chief
    assert addresses == ([] if tf_config is None else ["a:1", "b:2"])


@pytest.mark.parametrize("name", ["none", "mirrored"])
def test_a_process_outside_a_joined_cluster_feeds_every_image(monkeypatch, name):
    """Worker 1 of a TF_CONFIG cluster that trains alone ("none"; "mirrored" on a machine
    with one device) reads the whole training set, not every image from its index on."""
    from nima.config import Config
    from nima.labels import Sample

    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}))
    dist = distribute.KerasDistribution(name)
    assert (dist.processes, dist.process, dist.replicas) == (1, 0, 1)
    items = [(Sample(f"i{k}", np.full(10, 0.1)), Path(f"/x/i{k}.jpg")) for k in range(10)]
    inputs = dist.inputs(Config.from_dict(tiny_config(batch_size=4)), items[:7], items[7:])
    assert sorted(map(str, inputs.train.paths)) == sorted(str(p) for _, p in items[:7])
    assert sorted(map(str, inputs.validation.paths)) == sorted(str(p) for _, p in items[7:])


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_coordinator_port_in_use_is_one_line(tmp_path):
    """JAX's coordinator service segfaults on a taken port; nima says so in one line first."""
    samples, images, cfg = _data(tmp_path, n=8)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        tf_config = json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}", "127.0.0.1:1"]},
                                "task": {"type": "worker", "index": 0}})
        r = subprocess.run([sys.executable, "-m", "nima", "train", "--config-file", str(cfg),
                            "--samples-file", str(samples), "--image-dir", str(images),
                            "--job-dir", str(tmp_path / "job")], capture_output=True, text=True,
                           env=backend_env("jax", TF_CONFIG=tf_config), timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"nima train: error: cannot start the cluster's coordinator on port {port} "
        f"(127.0.0.1:{port} in TF_CONFIG): Address already in use")


def test_an_absent_jax_coordinator_is_one_line_after_the_wait():
    """Process 1 waits for process 0's port as JAX would (300 s by default), then says so in
    one line instead of JAX's abort."""
    port = _free_ports(1)[0]  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(NimaError) as e:
        distribute._wait_for_coordinator(f"127.0.0.1:{port}", seconds=2)
    assert 2 <= time.monotonic() - t0 < 10
    assert str(e.value) == (f"the cluster's coordinator 127.0.0.1:{port} (TF_CONFIG) did not "
                            "answer within 2 s: Connection refused")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", port))
        listening.listen()
        distribute._wait_for_coordinator(f"127.0.0.1:{port}", seconds=2)  # returns


# --- real training ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_worker_two_processes_end_with_identical_weights(tmp_path, backend):
    """Two `nima train` processes, one TF_CONFIG cluster on 127.0.0.1, each worker on its own
    half of the images: MultiWorkerMirroredStrategy with all-reduced gradients on TensorFlow;
    on JAX (TensorFlow hidden) jax.distributed and one DataParallel program over both
    processes' devices."""
    # One phase that trains every layer, BatchNormalization included.
    samples, images, cfg = _data(tmp_path, n=24, epochs_train_dense=0, epochs_train_all=2,
                                 batch_size=4, distribution="auto")
    job, scratch = tmp_path / "job", tmp_path / "worker1"
    logs = _wait(_start_cluster(tmp_path, backend, scratch, [
        "train", "--config-file", str(cfg), "--samples-file", str(samples), "--image-dir",
        str(images), "--job-dir", str(job)]))
    for index, log in enumerate(logs):
        assert "multi_worker" in log or backend == "jax", log[-3000:]
        assert "2 replica(s)" in log
        assert backend == "tensorflow" or f"process {index} of 2" in log

    summary = json.loads((job / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["global_batch_size"] == 8
    assert summary["n_train"] == 19 and summary["epochs"] == 2
    history = json.loads((job / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(np.isfinite(row["loss"]) and np.isfinite(row["val_loss"]) for row in history)
    # Only the chief wrote the job directory; the worker wrote its copy elsewhere.
    state = json.loads((job / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 2 and (job / "checkpoint" / state["weights"]).is_file()
    assert (scratch / "model.keras").is_file() and not (job / "worker1").exists()

    chief_w, worker_w = _weights(job / "model.keras"), _weights(scratch / "model.keras")
    assert len(chief_w) == len(worker_w) > 50
    for a, b in zip(chief_w, worker_w):
        np.testing.assert_array_equal(a, b)
    # Losses are all-reduced: both workers logged the same history (timings are their own).
    timings = ("seconds", "train_seconds", "train_images_per_second")
    assert [{k: v for k, v in row.items() if k not in timings}
            for row in json.loads((scratch / "history.json").read_text())] == [
        {k: v for k, v in row.items() if k not in timings} for row in history]
    # Throughput counts the images of all workers: 2 steps of 8 images per epoch.
    for row in history:
        assert images_counted(row) == pytest.approx(16, abs=rounding(row, 16))


def test_mirrored_two_logical_cpus(tmp_path):
    samples, images, cfg = _data(tmp_path, n=24, epochs_train_dense=1, epochs_train_all=0,
                                 batch_size=4, distribution="mirrored")
    script = (
        "import sys, tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()]"
        " * 2)\n"
        "from nima.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    job = tmp_path / "job"
    out = subprocess.run(
        [sys.executable, "-c", script, "train", "--config-file", str(cfg), "--samples-file",
         str(samples), "--image-dir", str(images), "--job-dir", str(job)],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mirrored, 2 replica(s)" in out.stderr
    summary = json.loads((job / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["global_batch_size"] == 8
    row = json.loads((job / "history.json").read_text())[0]
    assert np.isfinite(row["loss"]) and np.isfinite(row["val_loss"])
    # 19 training images: 2 full global batches of 8 per epoch.
    assert images_counted(row) == pytest.approx(16, abs=rounding(row, 16))
    assert 0 < row["train_seconds"] <= row["seconds"]
    assert summary["train_images_per_second"] == {"dense": row["train_images_per_second"]}


def test_throughput_is_the_median_without_each_phase_first_epoch():
    rows = [{"phase": "dense", "train_images_per_second": r} for r in (5.0, 100.0, 110.0, 90.0)]
    rows += [{"phase": "all", "train_images_per_second": 40.0}]
    assert train.throughput(rows) == {"dense": 100.0, "all": 40.0}
    assert train.throughput([{"phase": "dense", "loss": 1.0}]) == {}


def test_mixed_precision_builds_and_trains_with_float32_outputs(tmp_path, caplog):
    """mixed_float16 end to end on CPU (slow there; this checks correctness, not speed)."""
    import keras

    from nima.config import Config
    from nima.model import load_model

    samples, images, cfg = _data(tmp_path, n=12, epochs_train_dense=1, epochs_train_all=0,
                                 mixed_precision=True, distribution="none")
    with caplog.at_level("WARNING", logger="nima.train"):
        job = train.train(Config.load(cfg), samples, images, tmp_path / "job")
    assert "mixed_precision is on but no GPU is visible" in caplog.text
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    row = json.loads((job / "history.json").read_text())[0]
    assert np.isfinite(row["loss"]) and np.isfinite(row["val_loss"])
    # One replica: an epoch is one pass over the training images.
    n_train = json.loads((job / "summary.json").read_text())["n_train"]
    assert images_counted(row) == pytest.approx(n_train, abs=rounding(row, n_train))
    # compile() wrapped Adam in a LossScaleOptimizer, and the checkpoint holds its state.
    import h5py

    state = json.loads((job / "checkpoint" / "state.json").read_text())
    with h5py.File(job / "checkpoint" / state["weights"]) as f:
        assert "optimizer/inner_optimizer/vars" in f and "optimizer/vars" in f
    conv = next(layer for layer in load_model(job / "model.keras").layers[2].layers
                if layer.name == "conv1")
    assert conv.dtype_policy.name == "mixed_float16" and conv.variable_dtype == "float32"
    scores = load_model(job / "model.keras").predict(np.full((2, 32, 32, 3), 128.0), verbose=0)
    assert scores.dtype == np.float32 and np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_cluster_resumes_after_kill(tmp_path):
    """Both processes of a JAX cluster killed after an epoch; `--resume` on both finishes the
    job: every epoch once, in its phase, the epochs before the kill unchanged, and both
    processes end with the same weights."""
    samples, images, cfg = _data(tmp_path, n=24, epochs_train_dense=2, epochs_train_all=2,
                                 batch_size=4, distribution="auto")
    job = tmp_path / "job"
    procs = _start_cluster(tmp_path, "jax", tmp_path / "scratch1", [
        "train", "--config-file", str(cfg), "--samples-file", str(samples), "--image-dir",
        str(images), "--job-dir", str(job)], tag="first")
    state_file = job / "checkpoint" / "state.json"
    deadline = time.monotonic() + 480
    while not (state_file.is_file() and json.loads(state_file.read_text())["epoch"] >= 2):
        assert all(p.poll() is None for p, _, _ in procs), "a process ended before epoch 2"
        assert time.monotonic() < deadline, "no checkpoint of epoch 2 in 480 s"
        time.sleep(0.2)
    _wait(procs, kill=True)
    before = json.loads(state_file.read_text())
    assert before["epoch"] < 4, "finished before the kill: nothing left to resume"

    scratch = tmp_path / "scratch2"
    logs = _wait(_start_cluster(tmp_path, "jax", scratch, ["train", "--resume", str(job)],
                                tag="resumed"))
    assert f"resuming {job} after epoch {before['epoch']}" in logs[0]
    history = json.loads((job / "history.json").read_text())
    assert [(row["epoch"], row["phase"]) for row in history] == [
        (1, "dense"), (2, "dense"), (3, "all"), (4, "all")]
    assert history[:before["epoch"]] == before["history"]
    for a, b in zip(_weights(job / "model.keras"), _weights(scratch / "model.keras"),
                    strict=True):
        np.testing.assert_array_equal(a, b)
