"""./train-remote: train on a GPU machine's Docker engine over SSH, results copied back.

    ./train-remote --host ssh://ubuntu@gpu-vm \\
        --config-file models/MobileNet/config_aesthetic_gpu.json \\
        --samples-file data/AVA/ava_labels_train.json --image-dir /mnt/ava/images

The laptop needs python3, the docker SDK and `ssh` (keys, ~/.ssh/config and known_hosts are
ssh's own); the remote machine needs Docker (and the NVIDIA Container Toolkit for GPUs) and
the images. The image is built on the remote engine from this checkout (the SDK sends the
build context over SSH; nima.container does the build). Each job lives on the remote disk in a
Docker volume `nima-job-<JOB>`: input/ (config and samples sent from here) and job/ (the job
directory `nima train` writes). The image folder is a remote path, bind-mounted read-only.

The container always runs detached: its log is streamed here, and Ctrl-C or a dropped
connection only stops the streaming; training goes on (--attach JOB to follow it again,
--stop JOB to stop it). When it ends, job/ is copied to train_jobs/<JOB>/ (--fetch JOB does it
any time), and `--resume JOB` continues a stopped or dead job from its last checkpoint.
This module must not import TensorFlow (see nima.container).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from nima import container, jobvolume, launch, options, resolve
from nima.config import Config
from nima.container import LaunchError, RunSpec, one_line
from nima.errors import EXIT_ERROR, EXIT_INTERRUPTED, ConfigError, ModelError
from nima.jobvolume import IMAGES, WORK

try:
    import docker
    import docker.errors
    import docker.types
except ImportError:
    docker = None  # type: ignore[assignment]

PROG = "train-remote"


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
        raise LaunchError(f"no Docker engine answers at {host} ({one_line(e)}); "
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
        raise LaunchError(f"cannot run ssh for {host}: {one_line(e)}") from None
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or [f"ssh exit {r.returncode}"])[-1]
        raise LaunchError(f"no Docker engine answers at {host} ({why}); {hint}")


def _ssh_hint(host: str) -> str:
    url = urlsplit(host)
    target = f"{url.username}@{url.hostname}" if url.username else url.hostname
    return f"check that `ssh {f'-p {url.port} ' if url.port else ''}{target} docker version` works"


# --- the initial model -------------------------------------------------------------------------

def init_model_file(path: Path) -> Path:
    """The model file --init-model names (nima.resolve's rule: a shipped model's name, a job
    or model dir's best or last model, or the file itself); it is sent to the remote."""
    try:
        return resolve.model_file(path)[0]
    except ModelError as e:
        raise LaunchError(f"--init-model: {e}") from None


# --- the training container ---------------------------------------------------------------------

def start(client, job: str, image: str, command: list[str], image_dir: str, gpu: bool):
    """Start `nima <command>` detached on the job volume; returns the container."""
    spec = RunSpec(command=command, binds=jobvolume.binds(job, image_dir),
                   name=container_name(job), labels={"nima.command": "train", "nima.job": job})
    _, started = container.run_container(client, image, spec, gpu=gpu, detach=True, user="nima")
    return started


def follow(client, job: str) -> int | None:
    """Stream the job's log here until it ends; its exit code, or None if we stopped following
    (Ctrl-C, lost connection) while it runs on."""
    trainer = _container(client, job)
    try:
        if trainer.status in ("exited", "dead", "created"):
            sys.stderr.buffer.write(trainer.logs(stdout=True, stderr=True))
        else:
            container.copy_stream(client.api.attach(trainer.id, stdout=True, stderr=True,
                                                    stream=True, logs=True, demux=True))
        code = trainer.wait()["StatusCode"]
    except KeyboardInterrupt:
        say(f"stopped following; job {job} keeps running on the remote machine")
        return None
    except Exception as e:  # the SSH connection dropped, the laptop slept, ...
        say(f"lost the connection ({one_line(e)}); job {job} keeps running")
        return None
    trainer.reload()
    message = container.exit_message(code, trainer.attrs.get("State", {}))
    if message:
        say(message)
    return code


def _container(client, job: str):
    try:
        return client.containers.get(container_name(job))
    except docker.errors.NotFound:
        raise LaunchError(f"job {job} has no container on the remote machine "
                          "(finished and removed? --fetch JOB copies its results)") from None


# --- commands ------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Train in Docker on a remote machine over SSH; results come back "
        "to train_jobs/<JOB>/. Options not listed are passed to `nima train`. See docs/remote.md.")
    p.add_argument("--host", default=os.environ.get("NIMA_REMOTE_HOST"),
                   help="ssh://user@host[:port] of the remote Docker machine "
                   "(default: $NIMA_REMOTE_HOST)")
    sent = [o for o in options.TRAIN if o.dest in ("config_file", "samples_file", "init_model")]
    options.add_options(p, sent, {o.flag: "on this machine; sent to the remote one" for o in sent})
    # Not the local folder of `nima train --image-dir`: a path on the other machine.
    p.add_argument("--image-dir", help="image folder ON THE REMOTE MACHINE (absolute path); with "
                   "--resume, overrides the folder the job was started with")
    options.add_launcher_options(p, detach=True)
    p.add_argument("--jobs-dir", type=Path, default=Path("train_jobs"),
                   help="local folder the job directories are copied to (default train_jobs)")
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


def _image(client, gpu: bool, rebuild: bool) -> str:
    return container.ensure_image(client, "gpu" if gpu else "cpu", rebuild=rebuild, say=say)


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
    dest = jobvolume.fetch(client, job, a.jobs_dir)
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


def _check(a: argparse.Namespace) -> None:
    """Bad input is caught here, before anything is sent."""
    if not a.host:
        raise LaunchError("--host ssh://user@host[:port] is required (or set NIMA_REMOTE_HOST)")
    if a.attach or a.fetch or a.resume or a.stop or a.delete or a.list:
        ignored = options.given(a, ("init_model", "config_file", "samples_file"))
        if ignored:  # they would be silently ignored (a config with more epochs does nothing)
            raise LaunchError(f"{', '.join(ignored)} starts a new job; it does not go with "
                              "--attach, --fetch, --resume, --stop, --delete or --list")
        return
    missing = options.missing(a, options.NEW_JOB_INPUTS)
    if missing:
        raise LaunchError(f"training needs {', '.join(missing)} (or --resume/--attach JOB)")
    container.need_file(a.samples_file, "samples file")
    try:
        Config.load(a.config_file)
    except ConfigError as e:
        raise LaunchError(str(e)) from None
    if not a.image_dir.startswith("/"):
        raise LaunchError(f"--image-dir must be an absolute path on the remote machine, got "
                          f"{a.image_dir!r}")


def run(argv: Sequence[str]) -> int:
    a, rest = _parser().parse_known_args(argv)
    _check(a)
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
        print(jobvolume.fetch(client, a.fetch, a.jobs_dir))
        return 0
    if a.attach:
        jobvolume.labels(client, a.attach)
        return _finish(client, a.attach, argparse.Namespace(**{**vars(a), "detach": False}))
    if a.stop:
        _container(client, a.stop).stop(timeout=30)
        say(f"stopped {a.stop}; continue with ./train-remote --host {a.host} --resume {a.stop}")
        return 0
    if a.delete:
        try:
            _container(client, a.delete).remove(force=True)
        except LaunchError:
            pass
        try:
            client.volumes.get(jobvolume.name(a.delete)).remove()
        except docker.errors.NotFound:
            raise LaunchError(f"no job {a.delete!r} on the remote machine") from None
        say(f"deleted job {a.delete} from {a.host}")
        return 0
    job, image, image_dir, gpu, command = (_restart(client, a) if a.resume
                                           else _new_job(client, a, init))
    start(client, job, image, [*command, *rest], image_dir, gpu)
    say(f"job {job} started on {a.host} ({'GPU' if gpu else 'CPU'} image {image})")
    return _finish(client, job, a)


def _restart(client, a: argparse.Namespace) -> tuple[str, str, str, bool, list[str]]:
    """(job, image, image dir, gpu, command) to continue job a.resume on its volume."""
    job = a.resume
    labels = jobvolume.labels(client, job)
    try:
        stopped = client.containers.get(container_name(job))
        if stopped.status == "running":
            raise LaunchError(f"job {job} is still running: --attach {job} to follow it")
        stopped.remove()
    except docker.errors.NotFound:
        pass
    gpu = labels.get("nima.flavor") == "gpu"
    image = _image(client, gpu, a.rebuild)
    command = ["train", "--resume", f"{WORK}/job", "--image-dir", IMAGES]
    return job, image, a.image_dir or labels["nima.image-dir"], gpu, command


def _new_job(client, a: argparse.Namespace,
             init: Path | None) -> tuple[str, str, str, bool, list[str]]:
    """(job, image, image dir, gpu, command) of a new job, its volume made and filled."""
    gpu = a.gpu or (not a.cpu and container.gpu_config_reason(a.config_file) is not None)
    image = _image(client, gpu, a.rebuild)
    job = jobvolume.create(client, launch.new_job_dir(a.jobs_dir).name, labels={
        "nima.image-dir": a.image_dir, "nima.image": image, "nima.flavor": "gpu" if gpu else "cpu"})
    try:
        sent = jobvolume.upload_inputs(client, job, image, a.config_file, a.samples_file,
                                       a.image_dir, init)
    except LaunchError:
        client.volumes.get(jobvolume.name(job)).remove()
        raise
    command = ["train", *sent, "--image-dir", IMAGES, "--job-dir", f"{WORK}/job"]
    return job, image, a.image_dir, gpu, command


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
