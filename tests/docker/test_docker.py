"""./train-local and ./predict against a real Docker engine (see tests/docker/README.md).

Runs when NIMA_DOCKER_TESTS=1 (./run-tests sets it when CI=true) and as root. The harness
starts its own dockerd (engine.sh), imports a stand-in for the TensorFlow base image
(standin.sh), and runs the real scripts, which build the real Dockerfile.cpu/.gpu from it. The
launcher runs as an unprivileged uid, like a user in the docker group.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, base_weights, finetune_config, make_images, tiny_config

HERE = Path(__file__).resolve().parent
UID = GID = 4242
CACHE = Path(os.environ.get("NIMA_DOCKER_CI_CACHE", Path.home() / ".cache" / "nima-docker-ci"))

if os.environ.get("NIMA_DOCKER_TESTS") != "1":
    pytest.skip("SKIPPED: Docker engine tests need NIMA_DOCKER_TESTS=1 (./run-tests sets it "
                "when CI=true)", allow_module_level=True)
if os.getuid() != 0:
    pytest.skip("SKIPPED: Docker engine tests start their own dockerd and need root",
                allow_module_level=True)

pytestmark = pytest.mark.docker
docker = pytest.importorskip("docker")


def _sh(*cmd, **kw) -> str:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout.strip()


@pytest.fixture(scope="module")
def engine():
    """(DOCKER_HOST, stand-in base image tag) of a private engine, stopped afterwards."""
    run = Path(tempfile.mkdtemp(prefix="nimadk-", dir="/tmp"))  # short: socket path limit
    run.chmod(0o711)  # the unprivileged launcher reaches the socket (mode 666) in here
    CACHE.mkdir(parents=True, exist_ok=True)
    # The cached data-root keeps the imported base image between runs; a second harness
    # running at the same time gets a throwaway one.
    lock = open(CACHE / "engine.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        data = CACHE / "engine"
    except OSError:
        data = run / "data"
    try:
        host = _sh(HERE / "engine.sh", "start", run, data, timeout=900)
        env = dict(os.environ, DOCKER_HOST=host)
        base = _sh(HERE / "standin.sh", env=env, timeout=1200).splitlines()[-1]
        client = docker.DockerClient(base_url=host, timeout=900)  # deleting GBs takes a while
        # Images of earlier runs go, so the real Dockerfiles are built by this one, and so do
        # stand-ins for older requirement lists (2-3 GB each).
        old = lambda prefixes: [i for i in client.images.list() if any(  # noqa: E731
            t.startswith(prefixes) and t != base for t in i.tags)]
        for image in old(("nima-cpu:", "nima-gpu:")):
            client.images.remove(image.id, force=True)
        client.images.prune()  # untagged leftovers, e.g. the builder stage
        for image in old(("nima-standin:",)):
            try:
                client.images.remove(image.id, force=True)
            except docker.errors.APIError:  # still a parent of something: harmless
                pass
        yield host, base, client
        client.close()
    finally:
        subprocess.run([HERE / "engine.sh", "stop", run])
        shutil.rmtree(run, ignore_errors=True)
        lock.close()


@pytest.fixture(scope="module")
def world(engine):
    """A copy of the launcher files and the docker SDK readable by the unprivileged uid (the
    checkout may live under /root), a work dir owned by that uid, and generated data."""
    host, base, client = engine
    root = Path(tempfile.mkdtemp(prefix="nimaw-", dir="/tmp"))
    repo = root / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("src", "models"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, repo / name, ignore=ignore)
    for name in ("pyproject.toml", "constraints.txt", "README.md", "Dockerfile.cpu",
                 "Dockerfile.gpu", ".dockerignore", "train-local", "predict"):
        shutil.copy2(REPO / name, repo / name)
    sdk = root / "sdk"
    import certifi, charset_normalizer, idna, requests, urllib3  # noqa: E401 (the SDK's deps)
    for mod in (docker, requests, urllib3, idna, certifi, charset_normalizer):
        shutil.copytree(Path(mod.__file__).parent, sdk / mod.__name__, ignore=ignore)
    work = root / "work"
    images = work / "images"
    rows = make_images(images, 24)
    (work / "samples.json").write_text(json.dumps(rows))
    (work / "config.json").write_text(json.dumps(tiny_config()))
    (work / "out").mkdir()
    os.chmod(root, 0o755)
    for p in [work, *work.rglob("*")]:
        os.chown(p, UID, GID)
    python = _python_for(UID, sdk)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "DOCKER_HOST": host,
           "PYTHONPATH": str(sdk), "NIMA_LAUNCH_PYTHON": python,
           "NIMA_BASE_IMAGE": base, "NIMA_DOCKER_BUILD_NETWORK": "host",
           "NIMA_DOCKER_NETWORK": "none", "TF_CPP_MIN_LOG_LEVEL": "2"}
    yield {"repo": repo, "work": work, "env": env, "client": client, "images": images}
    shutil.rmtree(root, ignore_errors=True)


def _python_for(uid: int, sdk: Path) -> str:
    """A python3 the unprivileged uid can run (the test's own may live under /root)."""
    for python in (os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            subprocess.run([python, "-c", "import docker"], user=uid, group=uid, extra_groups=[],
                           env={"PYTHONPATH": str(sdk)}, capture_output=True, cwd="/", check=True)
            return python
        except (OSError, subprocess.CalledProcessError):
            continue
    pytest.fail(f"no python3 that uid {uid} can run with the docker SDK (tried the test's own, "
                "/usr/bin/python3, /usr/local/bin/python3)")


def launch(world, script, *argv, wait=True, env=None):
    """Run ./train-local or ./predict as the unprivileged user, in its work dir (--docker: no
    silent fallback to local mode)."""
    cmd = [str(world["repo"] / script), "--docker", *map(str, argv)]
    kw = dict(cwd=world["work"], env=env or world["env"], user=UID, group=GID, extra_groups=[],
              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if not wait:
        return subprocess.Popen(cmd, **kw)
    return subprocess.run(cmd, timeout=900, **kw)


def jobs(world) -> list[Path]:
    root = world["work"] / "train_jobs"
    return sorted(root.iterdir()) if root.is_dir() else []


def test_train_builds_the_image_and_writes_a_job_dir_owned_by_the_user(world):
    w = world["work"]
    r = launch(world, "train-local", "--config-file", "config.json", "--samples-file",
               "samples.json", "--image-dir", "images")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not found: building it from Dockerfile.cpu" in r.stderr
    assert "nima.train: done in" in r.stderr  # the container's log was streamed
    [job] = jobs(world)
    for name in ("config.json", "samples.json", "job.json", "best.keras", "model.keras",
                 "history.json", "history.csv", "summary.json", "checkpoint/state.json"):
        assert (job / name).is_file(), name
    history = json.loads((job / "history.json").read_text())
    assert len(history) == 2  # 1 + 1 epochs
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in [job, *job.rglob("*")]}
    assert owners == {(UID, GID)}
    # job.json records container paths, which the launcher maps back on --resume.
    assert json.loads((job / "job.json").read_text())["image_dir"] == f"/host{w}/images"
    assert world["client"].volumes.get(f"nima-keras-cache-{UID}")


def test_predict_writes_json_and_prints_to_stdout(world):
    [job] = jobs(world)
    out = world["work"] / "out" / "preds.json"
    r = launch(world, "predict", "--image-source", "images", "--weights-file", job,
               "--predictions-file", out)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())
    assert sorted(x["image"] for x in results) == sorted(
        p.name for p in world["images"].iterdir())
    for x in results:
        assert abs(sum(x["predictions"]) - 1) < 1e-4 and 1 <= x["mean_score_prediction"] <= 10
    assert (out.stat().st_uid, out.stat().st_gid) == (UID, GID)
    # A single file, results on stdout.
    r = launch(world, "predict", "--image-source", "images/img0003.jpg", "--weights-file", job)
    assert r.returncode == 0, r.stderr[-3000:]
    [one] = json.loads(r.stdout)
    [same] = [x for x in results if x["image_id"] == "img0003"]
    assert abs(one["mean_score_prediction"] - same["mean_score_prediction"]) < 1e-4
    if (world["repo"] / "models" / "technical").is_dir():
        # No --weights-file: the shipped model copied into the image ($NIMA_MODELS_DIR).
        r = launch(world, "predict", "--image-source", "images/img0003.jpg")
        assert r.returncode == 0, r.stderr[-3000:]
        [shipped] = json.loads(r.stdout)
        assert shipped["image_id"] == "img0003" and 1 <= shipped["mean_score_prediction"] <= 10
        # Shipped models by name, two scores from one decode: names pass the launcher as they
        # are and resolve inside the image.
        r = launch(world, "predict", "--image-source", "images/img0003.jpg", "--model",
                   "technical", "--also", "aesthetic")
        assert r.returncode == 0, r.stderr[-3000:]
        [both] = json.loads(r.stdout)
        assert sorted(both["scores"]) == ["aesthetic", "technical"]
        assert both["scores"]["aesthetic"]["predictions"] == shipped["predictions"]
        assert both["mean_score_prediction"] == both["scores"]["technical"]["mean_score_prediction"]


def test_the_tflite_conversion_is_cached_between_containers(world):
    """~/.cache is the named volume nima-cache-<uid>: a second ./predict does not convert again
    (11 s for one image here, 0.8 s with the cache). Another user's runs (own volume) do not
    make it read-only."""
    one = ["--image-source", "images/img0001.jpg", "--weights-file", jobs(world)[0] / "best.keras"]
    other = subprocess.run([str(world["repo"] / "predict"), "--docker", *map(str, one)],
                           cwd=world["work"], env=world["env"], user=UID + 1, group=GID + 1,
                           extra_groups=[], capture_output=True, text=True, timeout=900)
    assert other.returncode == 0, other.stderr[-3000:]
    first = launch(world, "predict", *one)
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch(world, "predict", *one)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "backend tflite" in second.stderr
    assert "converting the model to TFLite" not in second.stderr, second.stderr[-3000:]
    assert json.loads(first.stdout) == json.loads(second.stdout)
    assert world["client"].volumes.get(f"nima-cache-{UID}")
    assert world["client"].volumes.get(f"nima-cache-{UID + 1}")


def test_paths_with_a_colon_space_and_unicode_are_mounted(world):
    """A `-v src:dst:mode` spec cannot hold "shots 10:15"; the launcher uses Mounts."""
    w = world["work"]
    folder = w / "shots 10:15 ü"
    folder.mkdir()
    for name in ("img0001.jpg", "img0002.jpg"):
        shutil.copy(world["images"] / name, folder / name)
    for p in [folder, *folder.iterdir()]:
        os.chown(p, UID, GID)
    r = launch(world, "predict", "--image-source", folder.name, "--weights-file",
               jobs(world)[0] / "best.keras", "--predictions-file", f"{folder.name}/p.json")
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((folder / "p.json").read_text())
    assert [x["image"] for x in got] == ["img0001.jpg", "img0002.jpg"]


def test_predict_into_a_closed_pipe_stops_quietly(world):
    """`./predict ... | head`: when the reader goes away, the container is stopped and the
    launcher exits 141 (128 + SIGPIPE) without a BrokenPipeError traceback."""
    [job, *_] = jobs(world)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first result line
    try:
        r = subprocess.run([str(world["repo"] / "predict"), "--docker", "--image-source",
                            "images", "--weights-file", str(job)], stdout=write,
                           stderr=subprocess.PIPE, text=True, cwd=world["work"],
                           env=world["env"], user=UID, group=GID, extra_groups=[], timeout=900)
    finally:
        os.close(write)
    assert r.returncode == 141, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr[-3000:]
    assert not world["client"].containers.list(all=True, filters={"label": "nima.command"})


def test_inputs_are_read_only_and_the_job_dir_writable_in_the_container(world, capfd):
    from nima import container
    from nima import launch as L

    w = world["work"]
    a, rest = L._parser("train").parse_known_args(
        ["--config-file", str(w / "config.json"), "--samples-file", str(w / "samples.json"),
         "--image-dir", str(w / "images"), "--job-dir", str(w / "rw-probe")])
    spec, job = L.plan_train(a, rest)
    job.mkdir()
    os.chown(job, UID, GID)
    probe = ("import errno, sys\n"
             "for p in sys.argv[1:4]:\n"
             "    try: open(p, 'a'); sys.exit(f'wrote to {p}')\n"
             "    except OSError as e: assert e.errno == errno.EROFS, e\n"
             "open(sys.argv[4] + '/written', 'w').write('ok')\n")
    c = spec.command
    spec.entrypoint = ["python3", "-c", probe]
    spec.command = [c[c.index("--config-file") + 1], c[c.index("--samples-file") + 1],
                    c[c.index("--image-dir") + 1] + "/new.jpg", c[c.index("--job-dir") + 1]]
    image = container.image_tag("cpu", world["repo"], world["env"]["NIMA_BASE_IMAGE"])
    code, _ = container.run_container(world["client"], image, spec, network="none",
                                      user=f"{UID}:{GID}")
    assert code == 0, capfd.readouterr().err
    assert (job / "written").read_text() == "ok"
    assert (job / "written").stat().st_uid == UID
    assert not (w / "images" / "new.jpg").exists()


@pytest.mark.parametrize("change, message", [
    ({"--samples-file": "missing.json"}, "train-local: error: samples file not found: "
                                         "missing.json"),
    ({"--image-dir": "nowhere"}, "train-local: error: image directory not found: nowhere"),
    ({"--image-dir": "secret"}, "train-local: error: image directory is not readable: secret"),
])
def test_bad_input_is_one_line_before_any_container(world, change, message):
    (world["work"] / "secret").mkdir(mode=0o700, exist_ok=True)  # root's, not the user's
    args = {"--config-file": "config.json", "--samples-file": "samples.json",
            "--image-dir": "images", **change}
    before = jobs(world)
    r = launch(world, "train-local", *[x for kv in args.items() for x in kv])
    assert r.returncode == 1
    assert r.stderr.strip() == message
    assert jobs(world) == before


def test_a_failing_run_exits_non_zero_and_keeps_the_job_dir(world):
    w = world["work"]
    (w / "bad.json").write_text('[{"image_id": "img0000", "label": [1, 2]}]')
    os.chown(w / "bad.json", UID, GID)
    before = jobs(world)
    r = launch(world, "train-local", "--config-file", "config.json", "--samples-file",
               "bad.json", "--image-dir", "images")
    assert r.returncode == 1
    assert "nima train: error:" in r.stderr
    assert "training failed (exit 1); job directory kept" in r.stderr
    [job] = sorted(set(jobs(world)) - set(before))
    assert job.is_dir()


def test_a_killed_container_keeps_the_job_and_resume_finishes_it_detached(world):
    w, client = world["work"], world["client"]
    cfg = tiny_config(epochs_train_dense=1, epochs_train_all=2)
    (w / "long.json").write_text(json.dumps(cfg))
    os.chown(w / "long.json", UID, GID)
    before = jobs(world)
    proc = launch(world, "train-local", "--config-file", "long.json", "--samples-file",
                  "samples.json", "--image-dir", "images", wait=False)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            new = sorted(set(jobs(world)) - set(before))
            if new and (new[0] / "checkpoint" / "state.json").exists():
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        [job] = new
        [container] = client.containers.list(
            filters={"label": f"nima.job-dir={job}"})
        container.kill()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 137, err[-3000:]
    assert "the container was killed" in err
    assert f"job directory kept: train_jobs/{job.name}" in err
    done = json.loads((job / "checkpoint" / "state.json").read_text())["epoch"]
    assert done < 3 and not (job / "model.keras").exists()

    r = launch(world, "train-local", "--resume", f"train_jobs/{job.name}", "--detach")
    assert r.returncode == 0, r.stderr[-3000:]
    name = r.stdout.split()[3].rstrip(";")
    assert f"logs -f {name}" in r.stdout and f"stop {name}" in r.stdout
    container = client.containers.get(name)
    # A second trainer in the same job dir would overwrite the first one's checkpoints.
    again = launch(world, "train-local", "--resume", f"train_jobs/{job.name}")
    cli = f"docker -H {world['env']['DOCKER_HOST']}"
    assert again.returncode == 1 and again.stderr.strip() == (
        f"train-local: error: job directory train_jobs/{job.name} is still being written by "
        f"container {name} (follow it: {cli} logs -f {name}; stop it: {cli} stop {name})")
    try:
        assert container.wait(timeout=600)["StatusCode"] == 0, container.logs()[-3000:]
        # The removal the launcher printed works as printed.
        rm = next(x for x in r.stdout.splitlines() if x.strip().startswith("when it is done:"))
        command = rm.split(":", 1)[1].split("(")[0].split()
        assert command == [*cli.split(), "rm", name]
        subprocess.run(command, check=True, capture_output=True, timeout=60)
        assert name not in [c.name for c in client.containers.list(all=True)]
    finally:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
    assert (job / "model.keras").is_file()
    assert len(json.loads((job / "history.json").read_text())) == 3


@pytest.mark.parametrize("sig", ["SIGHUP", "SIGTERM"])
def test_closing_the_terminal_or_killing_the_launcher_stops_its_container(world, sig):
    """SIGHUP left the container training unwatched and never removed."""
    import signal

    w, client = world["work"], world["client"]
    (w / "endless.json").write_text(json.dumps(tiny_config(epochs_train_all=500)))
    os.chown(w / "endless.json", UID, GID)
    before = jobs(world)
    proc = launch(world, "train-local", "--config-file", "endless.json", "--samples-file",
                  "samples.json", "--image-dir", "images", wait=False)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            new = sorted(set(jobs(world)) - set(before))
            if new and client.containers.list(filters={"label": f"nima.job-dir={new[0]}"}):
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert f"interrupted; job directory kept: train_jobs/{new[0].name}" in err
    assert not client.containers.list(all=True, filters={"label": f"nima.job-dir={new[0]}"})


class _EngineProxy:
    """A unix socket forwarding to the engine's, closed on demand: to the launcher, the engine
    dies (connections reset, the socket refuses) while its container runs on."""

    def __init__(self, engine: str, path: Path):
        import socket
        import threading

        self.engine, self.path, self.conns = engine, path, []
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        path.chmod(0o666)
        self.server.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.engine)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass

    def kill(self) -> None:
        import socket

        self.server.close()
        self.path.unlink()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()


def test_an_engine_that_dies_mid_run_is_one_line(world):
    """Was a 200-line requests traceback; the container may run on without the launcher."""
    w, client = world["work"], world["client"]
    (w / "endless.json").write_text(json.dumps(tiny_config(epochs_train_all=500)))
    os.chown(w / "endless.json", UID, GID)
    sock_dir = Path(tempfile.mkdtemp(prefix="nimapx-", dir="/tmp"))
    sock_dir.chmod(0o755)
    proxy = _EngineProxy(world["env"]["DOCKER_HOST"].removeprefix("unix://"),
                         sock_dir / "docker.sock")
    env = dict(world["env"], DOCKER_HOST=f"unix://{sock_dir}/docker.sock")
    before = jobs(world)
    proc = launch(world, "train-local", "--config-file", "endless.json", "--samples-file",
                  "samples.json", "--image-dir", "images", wait=False, env=env)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            new = sorted(set(jobs(world)) - set(before))
            if new and client.containers.list(filters={"label": f"nima.job-dir={new[0]}"}):
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        [container] = client.containers.list(filters={"label": f"nima.job-dir={new[0]}"})
        proxy.kill()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        for c in client.containers.list(all=True, filters={"label": "nima.command"}):
            c.remove(force=True)
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"train-local: error: lost the Docker engine while container "
                           f"{container.name} ran (")
    assert last.endswith(f"); it may still be running; job directory kept: "
                         f"train_jobs/{new[0].name}")


def test_gpu_run_builds_the_gpu_image_and_says_why_no_gpu_can_be_had(world):
    [job, *_] = jobs(world)
    r = launch(world, "predict", "--gpu", "--image-source", "images", "--weights-file", job)
    assert "building it from Dockerfile.gpu" in r.stderr
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("predict: error: the Docker engine cannot provide GPUs (")
    assert "NVIDIA Container Toolkit" in last
    assert not world["client"].containers.list(all=True, filters={"label": "nima.command"})
    # Training: the same line, and no empty job dir left behind for a container never started.
    before = jobs(world)
    r = launch(world, "train-local", "--gpu", "--config-file", "config.json", "--samples-file",
               "samples.json", "--image-dir", "images")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(
        "train-local: error: the Docker engine cannot provide GPUs (")
    assert jobs(world) == before


def test_a_code_change_rebuilds_the_image_without_reinstalling_the_requirements(world):
    """The requirements have their own layer: on the official TensorFlow image (which lacks
    scikit-learn, scipy, matplotlib, ...) every code change re-downloaded them."""
    from nima import container as L

    client, base = world["client"], world["env"]["NIMA_BASE_IMAGE"]
    repo = Path(tempfile.mkdtemp(prefix="nimarepo-", dir="/tmp")) / "repo"
    shutil.copytree(world["repo"], repo)
    tags = []
    try:
        logs = []
        for change in ("", "\n# a code change\n"):
            with open(repo / "src" / "nima" / "errors.py", "a") as f:
                f.write(change)
            tags.append(L.image_tag("cpu", repo, base))
            out: list[str] = []
            L.build_image(client, "cpu", tags[-1], repo, base, "host", out=out.append)
            logs.append("".join(out))
        assert tags[0] != tags[1]
        step = logs[1].split("-r /tmp/requirements.txt", 1)[1]
        assert step.split("\n")[1].strip() == "---> Using cache", logs[1][-3000:]
        assert "import nima.launch, nima.cli" in logs[1]  # the wheel itself is reinstalled
    finally:
        for tag in tags:
            try:
                client.images.remove(tag, force=True)
            except docker.errors.APIError:
                pass
        shutil.rmtree(repo.parent, ignore_errors=True)


def test_a_rebuild_removes_the_older_images_of_its_own_checkout(world, monkeypatch):
    """Every code change makes a new tag; the old ones go, except one a container still uses
    and those another checkout built on the same engine."""
    from nima import container as L

    client = world["client"]
    monkeypatch.setenv("NIMA_BASE_IMAGE", world["env"]["NIMA_BASE_IMAGE"])
    monkeypatch.setenv("NIMA_DOCKER_BUILD_NETWORK", "host")
    root = Path(tempfile.mkdtemp(prefix="nimarepo-", dir="/tmp"))
    mine, other = root / "mine", root / "other"
    shutil.copytree(world["repo"], mine)
    shutil.copytree(world["repo"], other)
    said: list[str] = []
    tags, held = [], None
    try:
        tags.append(L.ensure_image(client, "cpu", say=said.append, repo=other))
        for n in range(3):
            with open(mine / "src" / "nima" / "errors.py", "a") as f:
                f.write(f"\n# code change {n}\n")
            tags.append(L.ensure_image(client, "cpu", say=said.append, repo=mine))
            if n == 1:  # a stopped container of the second image keeps it
                held = client.containers.create(tags[-1], ["--help"])
        others, first, second, third = tags
        present = {t for i in client.images.list(name="nima-cpu") for t in i.tags}
        assert {others, second, third} <= present and first not in present, present
        removed = [line for line in said if line.startswith("removed ")]
        assert removed == [f"removed 1 older image(s) of this checkout: {first}"], said
    finally:
        if held is not None:
            held.remove(force=True)
        for tag in tags:
            try:
                client.images.remove(tag, force=True)
            except docker.errors.APIError:
                pass
        shutil.rmtree(root, ignore_errors=True)


def test_a_failed_image_build_is_one_line(world):
    env = dict(world["env"], NIMA_BASE_IMAGE="localhost:1/no-such-base:1")
    r = launch(world, "predict", "--image-source", "images", env=env)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("predict: error: building nima-cpu:") and "failed:" in last


def test_train_fine_tunes_the_shipped_model(world):
    """--init-model: the model file is mounted read-only; phase 1 keeps its base as it was."""
    w = world["work"]
    shutil.copy(REPO / "models" / "technical" / "model.keras", w / "default.keras")
    (w / "finetune.json").write_text(json.dumps(finetune_config()))
    r = launch(world, "train-local", "--config-file", "finetune.json", "--samples-file",
               "samples.json", "--image-dir", "images", "--job-dir", "finetuned",
               "--init-model", "default.keras")
    assert r.returncode == 0, r.stderr[-3000:]
    job = w / "finetuned"
    assert json.loads((job / "job.json").read_text())["init_model"] == f"/host{w}/default.keras"
    for a, b in zip(base_weights(job / "model.keras"), base_weights(w / "default.keras")):
        np.testing.assert_array_equal(a, b)
