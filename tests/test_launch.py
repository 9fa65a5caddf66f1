"""The launcher's host side, without a Docker engine: argv and mount mapping, input checks,
image tags, the GPU request, and the local fallback of ./predict when no engine answers.
(tests/docker/ runs the same launcher against a real engine.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, make_images, tiny_config
from nima import container, launch
from nima.container import LaunchError, container_path, host_path


def _args(command: str, *argv: str):
    return launch._parser(command).parse_known_args(list(argv))


@pytest.fixture
def inputs(tmp_path: Path):
    images = tmp_path / "images"
    rows = make_images(images, 4)
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps(rows))
    config = tmp_path / "cfg" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(tiny_config()))
    return samples, images, config


def test_container_paths_round_trip(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert container_path("/data/ava images") == "/host/data/ava images"
    assert container_path("rel/x.json") == f"/host{tmp_path}/rel/x.json"
    assert host_path(container_path("/a/b")) == Path("/a/b")
    # A job made without Docker records host paths: they stay as they are.
    assert host_path("/data/images") == Path("/data/images")


def test_plan_train_mounts_inputs_read_only_and_job_read_write(inputs, tmp_path, monkeypatch):
    samples, images, config = inputs
    monkeypatch.chdir(tmp_path)
    a, rest = _args("train", "--config-file", str(config), "--samples-file", "samples.json",
                    "--image-dir", str(images), "--gpu")
    assert a.gpu
    spec, job = launch.plan_train(a, rest)
    assert job.parent == Path("train_jobs") and not job.exists()
    modes = {Path(src): b["mode"] for src, b in spec.binds.items()}
    assert modes == {config: "ro", samples: "ro", images: "ro", job.resolve(): "rw"}
    cmd = spec.command
    assert cmd[0] == "train"
    for opt, host in [("--config-file", config), ("--samples-file", samples),
                      ("--image-dir", images), ("--job-dir", job.resolve())]:
        assert cmd[cmd.index(opt) + 1] == f"/host{host}"
    assert spec.labels["nima.job-dir"] == str(job.resolve())


def test_plan_train_resume_maps_recorded_container_paths_back(inputs, tmp_path, monkeypatch):
    _, images, _ = inputs
    job = tmp_path / "train_jobs" / "20260101-000000"
    job.mkdir(parents=True)
    (job / "config.json").write_text(json.dumps(tiny_config()))
    # As written by `nima train` inside a container: container paths.
    (job / "job.json").write_text(json.dumps({"image_dir": container_path(images)}))
    a, rest = _args("train", "--resume", str(job), "--detach")
    spec, got = launch.plan_train(a, rest)
    assert got == job and a.detach
    assert spec.command == ["train", "--resume", f"/host{job}", "--image-dir", f"/host{images}"]
    assert spec.binds[str(job)]["mode"] == "rw" and spec.binds[str(images)]["mode"] == "ro"


def test_plan_train_mounts_the_init_model_read_only(inputs, tmp_path, monkeypatch):
    samples, images, config = inputs
    monkeypatch.chdir(tmp_path)
    init = tmp_path / "weights_mobilenet_aesthetic_0.07.hdf5"
    init.write_bytes(b"x")
    args = ("train", "--config-file", str(config), "--samples-file", str(samples),
            "--image-dir", str(images))
    spec, _ = launch.plan_train(*_args(*args, "--init-model", str(init)))
    assert spec.command[spec.command.index("--init-model") + 1] == f"/host{init}"
    assert spec.binds[str(init)]["mode"] == "ro"
    with pytest.raises(LaunchError, match="init model not found"):
        launch.plan_train(*_args(*args, "--init-model", str(tmp_path / "nope.keras")))


def test_plan_train_resume_mounts_the_recorded_init_model(inputs, tmp_path):
    _, images, _ = inputs
    init = tmp_path / "prev" / "best.keras"
    init.parent.mkdir()
    init.write_bytes(b"x")
    job = tmp_path / "train_jobs" / "20260101-000000"
    job.mkdir(parents=True)
    (job / "config.json").write_text(json.dumps(tiny_config()))
    (job / "job.json").write_text(json.dumps({"image_dir": container_path(images),
                                              "init_model": container_path(init)}))
    spec, _ = launch.plan_train(*_args("train", "--resume", str(job)))
    assert spec.binds[str(init)]["mode"] == "ro"  # at the path job.json names, in the container
    with pytest.raises(LaunchError, match="--init-model starts a new job"):
        launch.plan_train(*_args("train", "--resume", str(job), "--init-model", str(init)))
    # A new config (say, more epochs) was silently ignored by --resume.
    with pytest.raises(LaunchError, match="--resume continues a job with the config.json and "
                       "samples.json in its directory: --config-file does not go with it"):
        launch.plan_train(*_args("train", "--resume", str(job), "--config-file", str(init)))


@pytest.mark.parametrize("broken, message", [
    ("samples", "samples file not found"),
    ("images", "image directory not found"),
    ("config", "config file not found"),
])
def test_plan_train_rejects_missing_inputs(inputs, tmp_path, monkeypatch, broken, message):
    samples, images, config = inputs
    monkeypatch.chdir(tmp_path)
    paths = {"samples": samples, "images": images, "config": config}
    paths[broken] = tmp_path / "nope"
    a, rest = _args("train", "--config-file", str(paths["config"]), "--samples-file",
                    str(paths["samples"]), "--image-dir", str(paths["images"]))
    with pytest.raises(LaunchError, match=message):
        launch.plan_train(a, rest)
    assert not (tmp_path / "train_jobs").exists()  # nothing created for a bad command


def test_plan_train_rejects_non_empty_job_dir_and_non_job_resume(inputs, tmp_path):
    samples, images, config = inputs
    a, rest = _args("train", "--config-file", str(config), "--samples-file", str(samples),
                    "--image-dir", str(images), "--job-dir", str(images))
    with pytest.raises(LaunchError, match="job directory is not empty"):
        launch.plan_train(a, rest)
    with pytest.raises(LaunchError, match="not a training job directory"):
        launch.plan_train(*_args("train", "--resume", str(images)))


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A folder no one can create anything in: a read-only bind mount as root, else chmod."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.getuid() != 0:
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    r = subprocess.run(f"mount --bind '{ro}' '{ro}' && mount -o remount,ro,bind '{ro}'",
                       shell=True, capture_output=True)
    if r.returncode != 0:
        subprocess.run(["umount", str(ro)], capture_output=True)
        pytest.skip(f"cannot make a read-only mount here: {r.stderr.decode().strip()}")
    yield ro
    subprocess.run(["umount", "-l", str(ro)], check=True)  # -l: a test may still be in it


def test_plan_train_rejects_a_job_dir_it_cannot_create(inputs, tmp_path, monkeypatch,
                                                       read_only_dir):
    """Before the image build and the container, not as a traceback from mkdir after them."""
    samples, images, config = inputs
    args = ("train", "--config-file", str(config), "--samples-file", str(samples),
            "--image-dir", str(images))
    with pytest.raises(LaunchError, match=f"cannot create job directory {read_only_dir}/job/x: "
                       f"{read_only_dir} is not writable"):
        launch.plan_train(*_args(*args, "--job-dir", str(read_only_dir / "job" / "x")))
    monkeypatch.chdir(read_only_dir)  # the default train_jobs/<timestamp> lands here
    with pytest.raises(LaunchError, match="cannot create job directory train_jobs/"):
        launch.plan_train(*_args(*args))
    with pytest.raises(LaunchError, match="cannot create job directory"):
        launch.make_job_dir(read_only_dir / "job")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LaunchError, match="job directory is a file"):
        launch.plan_train(*_args(*args, "--job-dir", str(tmp_path / "afile")))


@pytest.mark.skipif(os.getuid() == 0, reason="root reads any directory")
def test_plan_train_rejects_unreadable_image_dir(inputs, tmp_path):
    samples, images, config = inputs
    images.chmod(0)
    try:
        a, rest = _args("train", "--config-file", str(config), "--samples-file", str(samples),
                        "--image-dir", str(images))
        with pytest.raises(LaunchError, match="image directory is not readable"):
            launch.plan_train(a, rest)
    finally:
        images.chmod(0o755)


def test_plan_predict_output_folder_is_the_only_writable_mount(inputs, tmp_path):
    _, images, config = inputs
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    a, rest = _args("predict", "--image-source", str(images), "--model", str(model),
                    "--predictions-file", str(out / "p.json"), "--format", "jsonl")
    spec = launch.plan_predict(a, rest)
    assert {Path(s): b["mode"] for s, b in spec.binds.items()} == {
        images: "ro", model: "ro", out: "rw"}
    assert spec.command == ["predict", "--image-source", f"/host{images}", "--weights-file",
                            f"/host{model}", "--predictions-file", f"/host{out}/p.json",
                            "--format", "jsonl"]
    spec = launch.plan_predict(*_args("predict", "--image-source", str(images),
                                      "--predictions-file", "-"))
    assert spec.command[-2:] == ["--predictions-file", "-"] and list(spec.binds) == [str(images)]
    with pytest.raises(LaunchError, match="predictions folder not found"):
        launch.plan_predict(*_args("predict", "--image-source", str(images),
                                   "--predictions-file", str(tmp_path / "no" / "p.json")))
    with pytest.raises(LaunchError, match="image source not found"):
        launch.plan_predict(*_args("predict", "--image-source", str(tmp_path / "none")))


def test_plan_predict_mounts_every_model_of_an_ensemble(inputs, tmp_path):
    _, images, _ = inputs
    models = [tmp_path / "a.keras", tmp_path / "job"]
    models[0].write_bytes(b"x")
    models[1].mkdir()
    spec = launch.plan_predict(*_args("predict", "--image-source", str(images), "--model",
                                      str(models[0]), "--weights-file", str(models[1])))
    assert spec.command == ["predict", "--image-source", f"/host{images}", "--weights-file",
                            f"/host{models[0]}", "--weights-file", f"/host{models[1]}"]
    assert {Path(s): b["mode"] for s, b in spec.binds.items()} == {
        images: "ro", models[0]: "ro", models[1]: "ro"}
    with pytest.raises(LaunchError, match="weights file not found"):
        launch.plan_predict(*_args("predict", "--image-source", str(images), "--model",
                                   str(models[0]), "--model", str(tmp_path / "gone.keras")))


def test_plan_predict_mounts_what_nima_reads_beside_a_model_file(inputs, tmp_path):
    _, images, _ = inputs
    folder = tmp_path / "mymodel"
    folder.mkdir()
    weights = folder / "final.weights.h5"
    for f in (weights, folder / "config.json", folder / "metadata.json", folder / "notes.txt"):
        f.write_bytes(b"x")
    spec = launch.plan_predict(*_args("predict", "--image-source", str(images), "--model",
                                      str(weights)))
    assert {Path(s): b["bind"] for s, b in spec.binds.items()} == {
        images: f"/host{images}", weights: f"/host{weights}",
        folder / "config.json": f"/host{folder}/config.json",
        folder / "metadata.json": f"/host{folder}/metadata.json"}
    assert all(b["mode"] == "ro" for b in spec.binds.values())


def test_plan_predict_passes_a_model_name_on_unmounted(inputs, tmp_path, monkeypatch):
    """`--model aesthetic` names a model shipped in the image: neither refused nor mounted.
    A path that exists is still mounted, even one with a bare name; a missing path is refused."""
    _, images, _ = inputs
    monkeypatch.chdir(tmp_path)
    spec = launch.plan_predict(*_args("predict", "--image-source", str(images), "--model",
                                      "aesthetic", "--model", "technical"))
    assert spec.command == ["predict", "--image-source", f"/host{images}", "--weights-file",
                            "aesthetic", "--weights-file", "technical"]
    assert list(spec.binds) == [str(images)]
    (tmp_path / "aesthetic").mkdir()
    spec = launch.plan_predict(*_args("predict", "--image-source", str(images), "--model",
                                      "aesthetic"))
    assert spec.command[-1] == f"/host{tmp_path}/aesthetic"
    for missing in ("gone.keras", "models/aesthetic"):
        with pytest.raises(LaunchError, match=f"weights file not found: {missing}"):
            launch.plan_predict(*_args("predict", "--image-source", str(images), "--model",
                                       missing))


def test_a_predict_option_is_one_line_in_nima_options(inputs, tmp_path):
    """--also is one line in options.PREDICT: it reaches `nima predict` and the launcher,
    which checks and mounts what it names (a repeatable extra model, or a shipped model's
    name, passed through) with no other change."""
    from nima import cli

    _, images, _ = inputs
    extra = tmp_path / "extra.keras"
    extra.write_bytes(b"x")
    a = cli.build_parser().parse_args(["predict", "--image-source", str(images), "--also",
                                       str(extra), "--also", "technical"])
    assert a.also == [extra, Path("technical")]
    assert "--also MODEL" in launch._parser("predict").format_help()
    spec = launch.plan_predict(*_args("predict", "--image-source", str(images), "--also",
                                      str(extra), "--also", "technical", "--format", "csv"))
    assert spec.command == ["predict", "--image-source", f"/host{images}", "--also",
                            f"/host{extra}", "--also", "technical", "--format", "csv"]
    assert spec.binds[str(extra)]["mode"] == "ro"
    with pytest.raises(LaunchError, match="model not found: .*nope.keras"):
        launch.plan_predict(*_args("predict", "--image-source", str(images), "--also",
                                   str(tmp_path / "nope.keras")))


def test_binds_become_mounts_that_allow_a_colon_in_a_path():
    pytest.importorskip("docker")
    got = container.mounts({
        "/data/shots 10:15": {"bind": "/host/data/shots 10:15", "mode": "ro"},
        "/data/job": {"bind": "/host/data/job", "mode": "rw"},
        "nima-cache-1000": {"bind": "/home/nima/.cache", "mode": "rw"}})
    assert [(m["Type"], m["Source"], m["Target"], m["ReadOnly"]) for m in got] == [
        ("bind", "/data/shots 10:15", "/host/data/shots 10:15", True),
        ("bind", "/data/job", "/host/data/job", False),
        ("volume", "nima-cache-1000", "/home/nima/.cache", False)]


def test_same_path_mounted_read_write_wins():
    spec = container.RunSpec(command=[])
    spec.mount("/data/x", "ro")
    spec.mount("/data/x", "rw")
    spec.mount("/data/x", "ro")
    assert spec.binds == {"/data/x": {"bind": "/host/data/x", "mode": "rw"}}


def test_gpu_image_for_gpu_configs_and_for_resuming_a_gpu_job(inputs, tmp_path):
    """A job started with a *_gpu config resumes on the GPU image too (it went to the CPU image,
    silently: config.json in the job dir has lost the _gpu name); --cpu overrides."""
    samples, images, config = inputs
    gpu_cfg = tmp_path / "config_aesthetic_gpu.json"
    gpu_cfg.write_text(json.dumps({**tiny_config(), "mixed_precision": True}))
    new = ("train", "--samples-file", str(samples), "--image-dir", str(images), "--config-file")
    assert launch.gpu_reason(_args(*new, str(gpu_cfg))[0]) == (
        "config_aesthetic_gpu.json is a *_gpu config")
    assert launch.gpu_reason(_args(*new, str(config))[0]) is None
    assert launch.gpu_reason(_args(*new, str(gpu_cfg), "--cpu")[0]) is None
    assert launch.gpu_reason(_args(*new, str(gpu_cfg), "--gpu")[0]) is None  # asked for
    job = tmp_path / "train_jobs" / "20260101-000000"
    job.mkdir(parents=True)
    (job / "config.json").write_text(gpu_cfg.read_text())  # as nima train saves it
    assert launch.gpu_reason(_args("train", "--resume", str(job))[0]) == (
        f"{job / 'config.json'} sets mixed_precision (a GPU setting)")
    assert launch.gpu_reason(_args("train", "--resume", str(job), "--cpu")[0]) is None
    (job / "config.json").write_text(json.dumps(tiny_config()))
    assert launch.gpu_reason(_args("train", "--resume", str(job))[0]) is None
    with pytest.raises(SystemExit):  # argparse: not allowed with argument --gpu
        _args("predict", "--gpu", "--cpu")


def test_gpu_config_names_and_device_request():
    assert container.is_gpu_config(Path("models/MobileNet/config_aesthetic_gpu.json"))
    assert not container.is_gpu_config(Path("config_aesthetic_cpu.json"))
    assert not container.is_gpu_config(Path("gpux.json"))
    req = container.gpu_request()
    assert req["Count"] == -1 and req["Capabilities"] == [["gpu"]]


def test_image_tag_follows_the_source(tmp_path: Path):
    repo = tmp_path / "repo"
    (repo / "src" / "nima").mkdir(parents=True)
    (repo / "src" / "nima" / "a.py").write_text("x = 1\n")
    (repo / "Dockerfile.cpu").write_text("FROM x\n")
    t1 = container.image_tag("cpu", repo)
    assert t1.startswith("nima-cpu:") and t1 == container.image_tag("cpu", repo)
    assert container.image_tag("cpu", repo, base_image="other:1") != t1
    (repo / "src" / "nima" / "a.py").write_text("x = 2\n")
    t2 = container.image_tag("cpu", repo)
    assert t2 != t1
    (repo / "constraints.txt").write_text("numpy==2.4.6\n")  # new pins: a new image
    assert container.image_tag("cpu", repo) != t2


def test_launcher_does_not_import_tensorflow():
    code = ("import sys, nima.launch; bad = [m for m in ('tensorflow', 'keras', 'numpy') "
            "if m in sys.modules]; sys.exit(f'imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def _run(script: str, *argv: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / script), *argv], capture_output=True, text=True,
                          env={**os.environ, "NIMA_LAUNCH_PYTHON": sys.executable, **env},
                          timeout=300)


def test_without_an_engine_predict_runs_locally_and_docker_mode_refuses(tmp_path: Path):
    from nima.config import Config
    from nima.model import build_model

    model = tmp_path / "tiny.keras"
    build_model(Config.from_dict(tiny_config())).save(model)
    make_images(tmp_path / "imgs", 3)
    nowhere = f"unix://{tmp_path}/no-engine.sock"
    r = _run("predict", "--image-source", str(tmp_path / "imgs"), "--weights-file", str(model),
             DOCKER_HOST=nowhere)
    assert r.returncode == 0, r.stderr
    assert f"no Docker engine answers at {nowhere}" in r.stderr
    assert "running `nima predict` locally" in r.stderr
    results = json.loads(r.stdout)
    assert sorted(x["image_id"] for x in results) == ["img0000", "img0001", "img0002"]
    assert all(1 <= x["mean_score_prediction"] <= 10 for x in results)

    r = _run("predict", "--docker", "--image-source", str(tmp_path / "imgs"),
             DOCKER_HOST=nowhere)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and r.stdout == "" and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"predict: error: no Docker engine answers at {nowhere}")


def test_local_training_says_that_detach_needs_docker(tmp_path: Path):
    r = _run("train-local", "--local", "--detach", "--config-file", str(tmp_path / "none.json"),
             "--samples-file", str(tmp_path / "s.json"), "--image-dir", str(tmp_path))
    lines = r.stderr.strip().splitlines()
    assert "train-local: --detach needs Docker: training runs in the foreground" in lines
    assert r.returncode == 1 and lines[-1].startswith("nima train: error: ")


@pytest.mark.parametrize("ssh_script, why", [
    ("exec sleep 30", "(no answer within 4 s)"),  # a stopped VM, dropped packets
    ('echo "ubuntu@gpu-vm: Permission denied (publickey)." >&2; exit 255',
     "(ubuntu@gpu-vm: Permission denied (publickey).)"),
])
def test_train_remote_gives_up_on_an_ssh_host_that_does_not_answer(tmp_path, ssh_script, why):
    """The SDK's ssh transport has no timeout: without a probe this waited for ever."""
    pytest.importorskip("docker")
    pytest.importorskip("paramiko")
    (tmp_path / "ssh").write_text(f"#!/bin/sh\n{ssh_script}\n")
    (tmp_path / "ssh").chmod(0o755)
    code = ("from nima import remote\n"
            "try: remote.connect('ssh://ubuntu@gpu-vm:2222', timeout=1)\n"
            "except remote.LaunchError as e: print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert r.stdout.strip() == (f"no Docker engine answers at ssh://ubuntu@gpu-vm:2222 {why}; "
                                "check that `ssh -p 2222 ubuntu@gpu-vm docker version` works")


def test_cache_volumes_are_per_user():
    """What one uid creates in a cache volume, another cannot extend: one set per user."""
    assert container.cache_volumes("4242:4242") == {
        "nima-keras-cache-4242": {"bind": "/home/nima/.keras", "mode": "rw"},
        "nima-cache-4242": {"bind": "/home/nima/.cache", "mode": "rw"}}
    assert set(container.cache_volumes("nima")) == {"nima-keras-cache-nima", "nima-cache-nima"}


def test_train_remote_refuses_a_jobs_dir_it_cannot_write_before_connecting(inputs, tmp_path,
                                                                           read_only_dir):
    """Found after training, the job could not be copied back: a traceback from mkdir."""
    samples, _, config = inputs
    r = _run("train-remote", "--host", "ssh://ubuntu@gpu-vm", "--config-file", str(config),
             "--samples-file", str(samples), "--image-dir", "/mnt/images", "--jobs-dir",
             str(read_only_dir / "jobs"))
    assert r.returncode == 1 and r.stderr.strip() == (
        f"train-remote: error: cannot create jobs directory {read_only_dir / 'jobs'}: "
        f"{read_only_dir} is not writable")


def test_train_remote_refuses_new_job_options_with_resume(inputs):
    """--resume JOB --config-file C ran the job's own config: C was silently ignored."""
    _, _, config = inputs
    r = _run("train-remote", "--host", "ssh://ubuntu@gpu-vm", "--resume", "20260101-000000",
             "--config-file", str(config))
    assert r.returncode == 1 and r.stderr.strip() == (
        "train-remote: error: --config-file starts a new job; it does not go with --attach, "
        "--fetch, --resume, --stop, --delete or --list")
