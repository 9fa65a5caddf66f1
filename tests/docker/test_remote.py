"""./train-remote end to end over a real SSH connection to a real, private Docker engine.

Everything is on 127.0.0.1: the engine of test_docker's harness (own dockerd, stand-in base
image), and an OpenSSH server started here on a free port with throwaway host and client keys,
whose sessions get DOCKER_HOST pointing at that engine (the docker SDK runs `ssh HOST docker
system dial-stdio`). The `ssh` the launcher runs is the system one behind a wrapper that adds
`-F` with the test's key and known_hosts file (what a user's ~/.ssh/config does). Runs when
NIMA_DOCKER_TESTS=1, as root; everything started is stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, base_weights, finetune_config, make_images, tiny_config

if os.environ.get("NIMA_DOCKER_TESTS") != "1":
    pytest.skip("SKIPPED: ./train-remote tests (sshd + private Docker engine) need "
                "NIMA_DOCKER_TESTS=1 (./run-tests sets it when CI=true)", allow_module_level=True)
if os.getuid() != 0:
    pytest.skip("SKIPPED: ./train-remote tests start dockerd and sshd and need root",
                allow_module_level=True)

from test_docker import _sh, engine  # noqa: E402, F401  (the private engine fixture)

docker = pytest.importorskip("docker")
pytestmark = pytest.mark.docker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(engine):  # noqa: F811
    """ssh://root@127.0.0.1:PORT whose sessions talk to the private engine; stopped after."""
    host, _, _ = engine
    if not Path("/usr/sbin/sshd").exists():
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-qq"], check=True,
                       timeout=600)
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq",
                        "--no-install-recommends", "openssh-server"], check=True, timeout=900,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    d = Path(tempfile.mkdtemp(prefix="nimassh-"))
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "host_key")
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "client_key")
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"SetEnv DOCKER_HOST={host}\n")
    (d / "ssh_config").write_text(
        f"Host *\n  IdentityFile {d}/client_key\n  IdentitiesOnly yes\n  BatchMode yes\n"
        f"  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking accept-new\n")
    bindir = d / "bin"
    bindir.mkdir()
    (bindir / "ssh").write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {d}/ssh_config "$@"\n')
    (bindir / "ssh").chmod(0o755)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", d / "sshd_config"],
                            stderr=open(d / "sshd.log", "w"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, (d / "sshd.log").read_text()
                assert time.monotonic() < deadline, "sshd did not listen within 30 s"
                time.sleep(0.2)
        yield {"url": f"ssh://root@127.0.0.1:{port}", "path": f"{bindir}:{os.environ['PATH']}",
               "dir": d}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def remote(engine, sshd):  # noqa: F811
    """Data: label and config files here, the images in a folder 'on the remote machine'
    (the same disk; world-readable for the image's unprivileged user)."""
    _, base, client = engine
    root = Path(tempfile.mkdtemp(prefix="nimaremote-", dir="/tmp"))
    os.chmod(root, 0o755)
    images = root / "remote-images"
    rows = make_images(images, 24)
    for p in [images, *images.iterdir()]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    local = root / "laptop"
    local.mkdir()
    (local / "samples.json").write_text(json.dumps(rows))
    (local / "config.json").write_text(json.dumps(tiny_config()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "TF_CONFIG"))}
    env.update(PATH=sshd["path"], NIMA_LAUNCH_PYTHON=sys.executable, NIMA_BASE_IMAGE=base,
               NIMA_DOCKER_BUILD_NETWORK="host", NIMA_DOCKER_NETWORK="none")
    yield {"client": client, "url": sshd["url"], "images": images, "local": local, "env": env}
    for c in client.containers.list(all=True, filters={"label": "nima.job"}):
        c.remove(force=True)
    for v in client.volumes.list(filters={"label": "nima.job"}):
        v.remove(force=True)
    shutil.rmtree(root, ignore_errors=True)


def train_remote(remote, *argv, timeout=900):
    return subprocess.run([str(REPO / "train-remote"), "--host", remote["url"], *map(str, argv)],
                          cwd=remote["local"], env=remote["env"], text=True, timeout=timeout,
                          capture_output=True)


def test_train_remote_builds_trains_streams_and_fetches(remote):
    r = train_remote(remote, "--config-file", "config.json", "--samples-file", "samples.json",
                     "--image-dir", remote["images"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "building it from Dockerfile.cpu" in r.stderr
    assert "nima.train: done in" in r.stderr  # the remote log was streamed here
    job = Path(r.stdout.strip().splitlines()[-1])
    assert job.parent.name == "train_jobs" and (remote["local"] / job).is_dir()
    job = remote["local"] / job
    for name in ("config.json", "samples.json", "job.json", "best.keras", "model.keras",
                 "history.json", "summary.json", "checkpoint/state.json"):
        assert (job / name).is_file(), name
    assert len(json.loads((job / "history.json").read_text())) == 2
    state = json.loads((job / "checkpoint" / "state.json").read_text())
    assert (job / "checkpoint" / state["weights"]).is_file()
    assert json.loads((job / "summary.json").read_text())["n_train"] == 19
    assert {p.stat().st_uid for p in job.rglob("*")} == {os.getuid()}
    # The job stays on the remote machine (resumable, fetchable), its container is gone.
    client = remote["client"]
    assert client.volumes.get(f"nima-job-{job.name}")
    assert not client.containers.list(all=True, filters={"name": f"nima-train-{job.name}"})
    r = train_remote(remote, "--list")
    assert r.returncode == 0 and job.name in r.stdout


def test_detach_stop_resume_attach_fetch(remote):
    cfg = remote["local"] / "long.json"
    # 5 epochs: on an idle machine a tiny epoch takes under a second, so the kill below lands
    # somewhere in epochs 2-4; the test checks whatever epoch the checkpoint reached.
    cfg.write_text(json.dumps(tiny_config(epochs_train_dense=4, epochs_train_all=1)))
    r = train_remote(remote, "--config-file", cfg, "--samples-file", "samples.json",
                     "--image-dir", remote["images"], "--detach")
    assert r.returncode == 0, r.stderr[-3000:]
    job = r.stdout.split()[1]
    assert f"--attach {job}" in r.stdout
    client = remote["client"]
    container = client.containers.get(f"nima-train-{job}")
    # Kill it after its first epoch: a dead remote job.
    deadline = time.monotonic() + 300
    while b"Epoch 2/4" not in container.logs() and time.monotonic() < deadline:
        assert container.status != "exited", container.logs()[-3000:]
        time.sleep(0.2)
        container.reload()
    container.kill()
    r = train_remote(remote, "--fetch", job)
    assert r.returncode == 0, r.stderr[-3000:]
    fetched = remote["local"] / "train_jobs" / job
    state = json.loads((fetched / "checkpoint" / "state.json").read_text())
    done = state["epoch"]
    assert 1 <= done < 5 and not (fetched / "model.keras").exists(), done

    r = train_remote(remote, "--resume", job, "--detach")
    assert r.returncode == 0, r.stderr[-3000:]
    r = train_remote(remote, "--attach", job)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {'/work/job'} after epoch {done}" in r.stderr
    history = json.loads((fetched / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]
    assert [row["phase"] for row in history] == ["dense"] * 4 + ["all"]
    assert (fetched / "model.keras").is_file()


def test_bad_input_is_one_line(remote):
    r = train_remote(remote, "--config-file", "config.json", "--samples-file", "samples.json",
                     "--image-dir", "/no/such/dir")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "train-remote: error: image directory not found on the remote machine: /no/such/dir")
    assert not remote["client"].volumes.list(filters={"label": "nima.image-dir=/no/such/dir"})
    r = train_remote(remote, "--attach", "19990101-000000")
    assert r.returncode == 1 and "no job '19990101-000000'" in r.stderr
    env = remote["env"]
    r = subprocess.run([str(REPO / "train-remote"), "--host", "ssh://root@127.0.0.1:1",
                        "--list"], env=env, text=True, capture_output=True, timeout=120)
    assert r.returncode == 1 and "no Docker engine answers at ssh://root@127.0.0.1:1" in r.stderr


def test_init_model_is_sent_to_the_remote(remote):
    local = remote["local"]
    (local / "finetune.json").write_text(json.dumps(finetune_config()))
    init = REPO / "models" / "technical"  # a model directory: its model.keras is sent
    r = train_remote(remote, "--config-file", "finetune.json", "--samples-file", "samples.json",
                     "--image-dir", remote["images"], "--init-model", init)
    assert r.returncode == 0, r.stderr[-3000:]
    job = local / r.stdout.strip().splitlines()[-1]
    assert json.loads((job / "job.json").read_text())["init_model"] == "/work/input/init.keras"
    for a, b in zip(base_weights(job / "model.keras"), base_weights(init / "model.keras")):
        np.testing.assert_array_equal(a, b)
    r = train_remote(remote, "--fetch", job.name, "--init-model", init)
    assert r.returncode == 1 and "--init-model starts a new job" in r.stderr
