"""./train-remote: train on a GPU machine's Docker engine over SSH, results copied back.

    ./train-remote --host ssh://ubuntu@gpu-vm \\
        --config-file models/MobileNet/config_aesthetic_gpu.json \\
        --samples-file data/AVA/ava_labels_train.json --image-dir /mnt/ava/images

The laptop needs python3, the docker SDK and `ssh` (keys, ~/.ssh/config and known_hosts are
ssh's own); the remote machine needs Docker (and the NVIDIA Container Toolkit for GPUs) and
the images. The image is built on the remote engine from this checkout (the SDK sends the
build context over SSH; nima.launch does the build). Each job lives on the remote disk in a
Docker volume `nima-job-<JOB>`: input/ (config and samples sent from here) and job/ (the job
directory `nima train` writes). The image folder is a remote path, bind-mounted read-only.

The container always runs detached: its log is streamed here, and Ctrl-C or a dropped
connection only stops the streaming; training goes on (--attach JOB to follow it again,
--stop JOB to stop it). When it ends, job/ is copied to train_jobs/<JOB>/ (--fetch JOB does it
any time), and `--resume JOB` continues a stopped or dead job from its last checkpoint.
This module must not import TensorFlow (see nima.launch).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from nima import launch, resolve
from nima.config import Config
from nima.errors import ConfigError, ModelError
from nima.launch import LaunchError, RunSpec, _one_line

try:
    import docker
    import docker.errors
    import docker.types
except ImportError:
    docker = None  # type: ignore[assignment]

PROG = "train-remote"
WORK = "/work"  # the job's volume in the container: input/, job/
IMAGES = "/data/images"  # the remote image folder in the container
EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


def volume_name(job: str) -> str:
    return f"nima-job-{job}"


def container_name(job: str) -> str:
    return f"nima-train-{job}"


def say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --- connection --------------------------------------------------------------------------------

def connect(host: str, timeout: float = 30) -> "docker.DockerClient":
    """A client for the Docker engine behind ssh://[user@]host[:port], through the ssh binary
    (so ~/.ssh/config, agents and known_hosts apply)."""
    if docker is None:
        raise LaunchError("the docker SDK for Python is not installed: pip install 'docker[ssh]'")
    if not host.startswith("ssh://"):
        raise LaunchError(f"--host must look like ssh://user@host[:port], got {host!r}")
    try:
        import paramiko  # noqa: F401  (the SDK needs it for ssh:// even when it runs `ssh`)
    except ImportError:
        raise LaunchError("ssh:// hosts need paramiko: pip install 'docker[ssh]'") from None
    _probe(host, timeout)
    try:
        client = docker.DockerClient(base_url=host, use_ssh_client=True, timeout=int(timeout))
        client.ping()
    except Exception as e:
        raise LaunchError(f"no Docker engine answers at {host} ({_one_line(e)}); "
                          f"{_ssh_hint(host)}") from None
    client.api.timeout = None  # training may print nothing for a long time
    return client


def _probe(host: str, timeout: float) -> None:
    """Run `docker version` over ssh once, with a deadline. The SDK's ssh transport reads a
    pipe and has no timeout of its own: a host that does not answer (a stopped VM, a
    firewall dropping packets) would hang the launcher for minutes, or for ever."""
    url = urlsplit(host)
    ssh = ["ssh", "-o", f"ConnectTimeout={int(timeout)}"]
    ssh += ["-l", url.username] if url.username else []
    ssh += ["-p", str(url.port)] if url.port else []
    cmd = [*ssh, "--", url.hostname or "", "docker version --format '{{.Server.Version}}'"]
    hint = _ssh_hint(host)
    try:
        # ssh asks for a passphrase on the terminal (/dev/tty): hence the generous limit.
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=4 * timeout)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"no Docker engine answers at {host} (no answer within "
                          f"{int(4 * timeout)} s); {hint}") from None
    except OSError as e:
        raise LaunchError(f"cannot run ssh for {host}: {_one_line(e)}") from None
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or [f"ssh exit {r.returncode}"])[-1]
        raise LaunchError(f"no Docker engine answers at {host} ({why}); {hint}")


def _ssh_hint(host: str) -> str:
    url = urlsplit(host)
    target = f"{url.username}@{url.hostname}" if url.username else url.hostname
    return f"check that `ssh {f'-p {url.port} ' if url.port else ''}{target} docker version` works"


# --- files in and out of the job volume --------------------------------------------------------

def _helper(client, job: str, image: str, mounts: list | None = None):
    """A created (never started) container with the job volume at /work, for copying files."""
    try:
        return client.containers.create(
            image, entrypoint=["true"], command=[], network_mode="none",
            volumes={volume_name(job): {"bind": WORK, "mode": "rw"}}, mounts=mounts or [],
            labels={"nima.helper": job})
    except docker.errors.DockerException as e:
        msg = _one_line(e)
        if "bind source path does not exist" in msg:
            raise LaunchError(f"image directory not found on the remote machine: "
                              f"{mounts[0]['Source'] if mounts else '?'}") from None
        raise LaunchError(f"cannot create a helper container: {msg}") from None


def init_model_file(path: Path) -> Path:
    """The model file --init-model names (nima.resolve's rule: a shipped model's name, a job
    or model dir's best or last model, or the file itself); it is sent to the remote."""
    try:
        return resolve.model_file(path)[0]
    except ModelError as e:
        raise LaunchError(f"--init-model: {e}") from None


def upload_inputs(client, job: str, image: str, config: Path, samples: Path,
                  image_dir: str, init_model: Path | None = None) -> None:
    """Put config.json, samples.json (and the initial model) into the job volume, after
    checking that the remote image folder exists (a bind mount of a missing path would
    silently create it)."""
    helper = _helper(client, job, image, [docker.types.Mount(
        IMAGES, image_dir, type="bind", read_only=True)])
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, mode in (("input", 0o755), ("job", 0o777)):
                # job/ is written by the image's unprivileged user, whatever its uid.
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, int(time.time())
                tar.addfile(info)
            inputs = [(config, "input/config.json"), (samples, "input/samples.json")]
            if init_model is not None:
                inputs.append((init_model, f"input/init{init_model.suffix}"))
            for src, name in inputs:
                info = tar.gettarinfo(str(src), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(src, "rb") as f:
                    tar.addfile(info, f)
        if not helper.put_archive(WORK, buf.getvalue()):
            raise LaunchError(f"could not copy the inputs into volume {volume_name(job)}")
    finally:
        helper.remove(force=True)


def fetch(client, job: str, dest_root: Path) -> Path:
    """Copy the job directory from the remote volume to dest_root/<job> (replacing it)."""
    try:
        volume = client.volumes.get(volume_name(job))
    except docker.errors.NotFound:
        raise LaunchError(f"no job {job!r} on the remote machine (no volume "
                          f"{volume_name(job)})") from None
    image = (volume.attrs.get("Labels") or {}).get("nima.image", "")
    tmp = helper = None
    try:
        dest_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{job}-", dir=dest_root))
        helper = _helper(client, job, image)
        stream, _ = helper.get_archive(f"{WORK}/job")
        with tarfile.open(fileobj=_ChunkReader(stream), mode="r|") as tar:
            for member in tar:
                # The archive is job/...; drop that prefix, own the files, refuse odd entries.
                parts = Path(member.name).parts
                if not parts or parts[0] != "job" or not (member.isfile() or member.isdir()):
                    continue
                member.name = str(Path(*parts[1:])) if len(parts) > 1 else "."
                member.uid, member.gid, member.uname, member.gname = (
                    os.getuid(), os.getgid(), "", "")
                tar.extract(member, tmp, filter="data")
        dest = dest_root / job
        if dest.exists():
            old = dest.with_name(f".{job}.old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
        return dest
    except docker.errors.DockerException as e:
        raise LaunchError(f"cannot copy job {job} back: {_one_line(e)}") from None
    except OSError as e:  # a full or read-only disk here
        raise LaunchError(f"cannot copy job {job} back into {dest_root}: {e.strerror or e} "
                          "(it stays on the remote machine: --fetch JOB --jobs-dir DIR)") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if helper is not None:
            helper.remove(force=True)


class _ChunkReader(io.RawIOBase):
    """A file object over the SDK's chunk iterator, for tarfile's streaming mode."""

    def __init__(self, chunks):
        self.chunks, self.rest = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self.rest:
            try:
                self.rest = next(self.chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self.rest))
        b[:n], self.rest = self.rest[:n], self.rest[n:]
        return n


# --- the training container ---------------------------------------------------------------------

def start(client, job: str, image: str, command: list[str], image_dir: str, gpu: bool):
    """Start `nima <command>` detached on the job volume; returns the container."""
    spec = RunSpec(command=command, name=container_name(job),
                   labels={"nima.command": "train", "nima.job": job})
    spec.binds[volume_name(job)] = {"bind": WORK, "mode": "rw"}
    spec.binds[image_dir] = {"bind": IMAGES, "mode": "ro"}
    _, container = launch.run_container(client, image, spec, gpu=gpu, detach=True, user="nima",
                                        network=os.environ.get("NIMA_DOCKER_NETWORK"))
    return container


def follow(client, job: str) -> int | None:
    """Stream the job's log here until it ends; its exit code, or None if we stopped following
    (Ctrl-C, lost connection) while it runs on."""
    container = _container(client, job)
    try:
        if container.status in ("exited", "dead", "created"):
            sys.stderr.buffer.write(container.logs(stdout=True, stderr=True))
        else:
            launch.copy_stream(client.api.attach(container.id, stdout=True, stderr=True,
                                                 stream=True, logs=True, demux=True))
        code = container.wait()["StatusCode"]
    except KeyboardInterrupt:
        say(f"stopped following; job {job} keeps running on the remote machine")
        return None
    except Exception as e:  # the SSH connection dropped, the laptop slept, ...
        say(f"lost the connection ({_one_line(e)}); job {job} keeps running")
        return None
    container.reload()
    message = launch._exit_message(code, container.attrs.get("State", {}))
    if message:
        say(message)
    return code


def _container(client, job: str):
    try:
        return client.containers.get(container_name(job))
    except docker.errors.NotFound:
        raise LaunchError(f"job {job} has no container on the remote machine "
                          "(finished and removed? --fetch JOB copies its results)") from None


def _job_labels(client, job: str) -> dict:
    try:
        return client.volumes.get(volume_name(job)).attrs.get("Labels") or {}
    except docker.errors.NotFound:
        raise LaunchError(f"no job {job!r} on the remote machine") from None


# --- commands ------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Train in Docker on a remote machine over SSH; results come back "
        "to train_jobs/<JOB>/. Options not listed are passed to `nima train`. See docs/remote.md.")
    p.add_argument("--host", default=os.environ.get("NIMA_REMOTE_HOST"),
                   help="ssh://user@host[:port] of the remote Docker machine "
                   "(default: $NIMA_REMOTE_HOST)")
    p.add_argument("--config-file", type=Path, help="local config JSON (sent to the remote)")
    p.add_argument("--samples-file", type=Path, help="local label JSON (sent to the remote)")
    p.add_argument("--image-dir", help="image folder ON THE REMOTE MACHINE")
    p.add_argument("--init-model", type=Path, metavar="MODEL",
                   help="fine-tune this local NIMA model (.keras, job dir or Keras 2 .hdf5; "
                   "sent to the remote)")
    p.add_argument("--gpu", action="store_true",
                   help="GPU image and all GPUs (default for *_gpu configs)")
    p.add_argument("--cpu", action="store_true", help="CPU image even for a *_gpu config")
    p.add_argument("--rebuild", action="store_true", help="rebuild the image on the remote")
    p.add_argument("--jobs-dir", type=Path, default=Path("train_jobs"),
                   help="local folder the job directories are copied to (default train_jobs)")
    p.add_argument("--detach", action="store_true", help="start and return; training runs on")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--attach", metavar="JOB", help="follow a job's log, then fetch it")
    what.add_argument("--fetch", metavar="JOB", help="copy a job's directory here now")
    what.add_argument("--resume", metavar="JOB", help="continue a stopped job from its last "
                      "completed epoch (on the same remote volume)")
    what.add_argument("--stop", metavar="JOB", help="stop a running job (resumable)")
    what.add_argument("--delete", metavar="JOB", help="remove a job's container and volume from "
                      "the remote machine")
    what.add_argument("--list", action="store_true", help="list the jobs on the remote machine")
    return p


def _image(client, flavor: str, rebuild: bool) -> str:
    return launch.ensure_image(
        client, flavor, base_image=os.environ.get("NIMA_BASE_IMAGE"),
        network=os.environ.get("NIMA_DOCKER_BUILD_NETWORK"), rebuild=rebuild, say=say)


def _finish(client, job: str, a: argparse.Namespace) -> int:
    """Follow the job to its end, then copy it back (unless detached)."""
    if a.detach:
        print(f"job {job} is training on {a.host}\n"
              f"  follow: ./train-remote --host {a.host} --attach {job}\n"
              f"  fetch:  ./train-remote --host {a.host} --fetch {job}\n"
              f"  stop:   ./train-remote --host {a.host} --stop {job}   (then --resume {job})")
        return 0
    code = follow(client, job)
    if code is None:
        say(f"re-attach with: ./train-remote --host {a.host} --attach {job}")
        return EXIT_INTERRUPTED
    dest = fetch(client, job, a.jobs_dir)
    try:
        _container(client, job).remove()
    except (LaunchError, docker.errors.DockerException):
        pass
    if code != 0:
        say(f"training failed (exit {code}); what it wrote is in {dest}; continue with "
            f"./train-remote --host {a.host} --resume {job}")
        return code
    say(f"job directory copied to {dest}")
    print(dest)
    return 0


def run(argv: Sequence[str]) -> int:
    a, rest = _parser().parse_known_args(argv)
    if not a.host:
        raise LaunchError("--host ssh://user@host[:port] is required (or set NIMA_REMOTE_HOST)")
    if not (a.attach or a.fetch or a.resume or a.stop or a.delete or a.list):
        # Bad input is caught here, before anything is sent.
        missing = [f"--{n.replace('_', '-')}" for n in ("config_file", "samples_file", "image_dir")
                   if getattr(a, n) is None]
        if missing:
            raise LaunchError(f"training needs {', '.join(missing)} (or --resume/--attach JOB)")
        launch._need_file(a.samples_file, "samples file")
        try:
            Config.load(a.config_file)
        except ConfigError as e:
            raise LaunchError(str(e)) from None
        if not a.image_dir.startswith("/"):
            raise LaunchError(f"--image-dir must be an absolute path on the remote machine, got "
                              f"{a.image_dir!r}")
    else:
        ignored = [f"--{n.replace('_', '-')}" for n in ("init_model", "config_file", "samples_file")
                   if getattr(a, n) is not None]
        if ignored:  # they would be silently ignored (a config with more epochs does nothing)
            raise LaunchError(f"{', '.join(ignored)} starts a new job; it does not go with "
                              "--attach, --fetch, --resume, --stop, --delete or --list")
    init = init_model_file(a.init_model) if a.init_model is not None else None
    if not (a.list or a.stop or a.delete):  # these copy nothing back
        launch.need_creatable(a.jobs_dir, "jobs directory")
    client = connect(a.host)

    if a.list:
        for v in client.volumes.list(filters={"label": "nima.job"}):
            job = v.attrs["Labels"]["nima.job"]
            try:
                state = client.containers.get(container_name(job)).status
            except docker.errors.NotFound:
                state = "no container"
            print(f"{job}\t{state}\t{v.attrs['Labels'].get('nima.image-dir', '')}")
        return 0
    if a.fetch:
        print(fetch(client, a.fetch, a.jobs_dir))
        return 0
    if a.attach:
        _job_labels(client, a.attach)
        return _finish(client, a.attach, argparse.Namespace(**{**vars(a), "detach": False}))
    if a.stop:
        container = _container(client, a.stop)
        container.stop(timeout=30)
        say(f"stopped {a.stop}; continue with ./train-remote --host {a.host} --resume {a.stop}")
        return 0
    if a.delete:
        try:
            _container(client, a.delete).remove(force=True)
        except LaunchError:
            pass
        try:
            client.volumes.get(volume_name(a.delete)).remove()
        except docker.errors.NotFound:
            raise LaunchError(f"no job {a.delete!r} on the remote machine") from None
        say(f"deleted job {a.delete} from {a.host}")
        return 0

    if a.resume:
        job = a.resume
        labels = _job_labels(client, job)
        try:
            container = client.containers.get(container_name(job))
            if container.status == "running":
                raise LaunchError(f"job {job} is still running: --attach {job} to follow it")
            container.remove()
        except docker.errors.NotFound:
            pass
        gpu = labels.get("nima.flavor") == "gpu"
        image_dir = a.image_dir or labels["nima.image-dir"]
        image = _image(client, "gpu" if gpu else "cpu", a.rebuild)
        command = ["train", "--resume", f"{WORK}/job", "--image-dir", IMAGES, *rest]
    else:
        gpu = (a.gpu or launch._is_gpu_config(a.config_file)) and not a.cpu
        image_dir = a.image_dir
        image = _image(client, "gpu" if gpu else "cpu", a.rebuild)
        job = launch.new_job_dir(a.jobs_dir).name
        while True:  # also free on the remote machine
            try:
                client.volumes.get(volume_name(job))
                job += "-r"
            except docker.errors.NotFound:
                break
        client.volumes.create(volume_name(job), labels={
            "nima.job": job, "nima.image-dir": image_dir, "nima.image": image,
            "nima.flavor": "gpu" if gpu else "cpu"})
        try:
            upload_inputs(client, job, image, a.config_file, a.samples_file, image_dir, init)
        except LaunchError:
            client.volumes.get(volume_name(job)).remove()
            raise
        command = ["train", "--config-file", f"{WORK}/input/config.json", "--samples-file",
                   f"{WORK}/input/samples.json", "--image-dir", IMAGES, "--job-dir",
                   f"{WORK}/job", *rest]
        if init is not None:
            command += ["--init-model", f"{WORK}/input/init{init.suffix}"]
    start(client, job, image, command, image_dir, gpu)
    say(f"job {job} started on {a.host} ({'GPU' if gpu else 'CPU'} image {image})")
    return _finish(client, job, a)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(list(sys.argv[1:] if argv is None else argv))
    except LaunchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
