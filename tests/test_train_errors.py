"""Proposed with train.py.patch: damaged job dirs and bad --job-dir/--image-dir are one line."""

import json
import shutil

import pytest

from nima.cli import main


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory):
    from conftest import make_images, tiny_config

    root = tmp_path_factory.mktemp("job")
    (root / "s.json").write_text(json.dumps(make_images(root / "images", 12)))
    (root / "c.json").write_text(json.dumps(tiny_config(epochs_train_all=0)))
    assert main(["train", "--config-file", str(root / "c.json"), "--samples-file",
                 str(root / "s.json"), "--image-dir", str(root / "images"), "--job-dir",
                 str(root / "job")]) == 0
    return root


def damage(job, how):
    (job / "summary.json").unlink()  # unfinished, as when killed: --resume has work to do
    ckpt = job / "checkpoint"
    if how == "weights missing":
        for f in ckpt.glob("*.weights.h5"):
            f.unlink()
    elif how == "weights garbage":
        for f in ckpt.glob("*.weights.h5"):
            f.write_bytes(b"garbage")
    elif how == "state garbage":
        (ckpt / "state.json").write_text('{"epoch": "x"}')
    elif how == "job.json empty":
        (job / "job.json").write_text("{}")


@pytest.mark.parametrize("how, message", [
    ("weights missing", "cannot resume from"), ("weights garbage", "cannot resume from"),
    ("state garbage", "is not a checkpoint state"), ("job.json empty", "records no image_dir"),
])
def test_damaged_job_dir_resume_is_one_line(finished_job, tmp_path, capsys, how, message):
    job = tmp_path / "job"
    shutil.copytree(finished_job / "job", job)
    damage(job, how)
    assert main(["train", "--resume", str(job)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("job_dir, message", [("c.json", "job directory is a file"),
                                              ("/proc/nope", "cannot create job directory")])
def test_bad_job_dir_is_one_line(finished_job, capsys, job_dir, message):
    root = finished_job
    path = root / job_dir if not job_dir.startswith("/") else job_dir
    assert main(["train", "--config-file", str(root / "c.json"), "--samples-file",
                 str(root / "s.json"), "--image-dir", str(root / "images"),
                 "--job-dir", str(path)]) == 1
    assert message in capsys.readouterr().err


def test_missing_image_dir_makes_no_job_dir(finished_job, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = finished_job
    assert main(["train", "--config-file", str(root / "c.json"), "--samples-file",
                 str(root / "s.json"), "--image-dir", str(tmp_path / "nope")]) == 1
    assert not (tmp_path / "train_jobs").exists()


def test_imagenet_download_failure_comes_before_the_image_probe(finished_job, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # nothing cached
    root = finished_job
    config = tmp_path / "imagenet.json"
    config.write_text(json.dumps({**json.loads((root / "c.json").read_text()),
                                  "base_weights": "imagenet", "input_size": 128,
                                  "resize_size": 144}))
    code = main(["train", "--config-file", str(config), "--samples-file", str(root / "s.json"),
                 "--image-dir", str(root / "images"), "--job-dir", str(tmp_path / "job")])
    if code == 0:
        pytest.skip("this machine can download ImageNet weights; offline path not exercised")
    assert code == 1
    assert "cannot download ImageNet weights" in capsys.readouterr().err
    assert not (tmp_path / "job" / "skipped.txt").exists()  # no image was probed


def test_resume_of_a_finished_job_changes_nothing(finished_job, caplog):
    job = finished_job / "job"
    before = {p: p.stat().st_mtime_ns for p in job.rglob("*") if p.is_file()}
    with caplog.at_level("INFO", logger="nima.train"):
        assert main(["train", "--resume", str(job)]) == 0
    assert "finished all 1 epochs already: nothing to resume" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in job.rglob("*") if p.is_file()} == before


def test_resume_refuses_options_it_would_ignore(finished_job, capsys):
    job = finished_job / "job"
    with pytest.raises(SystemExit) as e:
        main(["train", "--resume", str(job), "--config-file", str(finished_job / "c.json")])
    assert e.value.code == 2
    assert ("nima train: error: --resume continues a job with the config.json and samples.json "
            "in its directory: --config-file does not go with it") in capsys.readouterr().err


def test_a_running_job_cannot_be_resumed_twice(finished_job, tmp_path):
    import os
    import subprocess
    import sys
    import time

    root = finished_job
    config = tmp_path / "long.json"
    config.write_text(json.dumps({**json.loads((root / "c.json").read_text()),
                                  "epochs_train_dense": 500}))
    job = tmp_path / "job"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    first = subprocess.Popen(
        [sys.executable, "-m", "nima", "train", "--config-file", str(config), "--samples-file",
         str(root / "s.json"), "--image-dir", str(root / "images"), "--job-dir", str(job)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 240
        while not (job / "checkpoint" / "state.json").exists():  # training, lock held
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        second = subprocess.run([sys.executable, "-m", "nima", "train", "--resume", str(job)],
                                capture_output=True, text=True, env=env, timeout=240)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1] == (
            f"nima train: error: job directory {job} is being trained by another process "
            "(wait for it to end, or stop it first)")
        assert first.poll() is None  # the first trainer was not disturbed
    finally:
        first.kill()
        first.wait()
    # Once the first is gone (here: killed), the lock is free for a resume.
    import fcntl

    with open(job / ".lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
