"""A remote training job's home on the remote engine: the Docker volume `nima-job-<JOB>`, with
input/ (the config, samples and initial model sent from here) and job/ (the job directory
`nima train` writes there), and copying files into and out of it through a helper container
that is created but never started (./train-remote: nima.remote).

Like the launchers, this module must not import TensorFlow (see nima.container).
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from nima.container import LaunchError, one_line

try:
    import docker
    import docker.errors
    import docker.types
except ImportError:
    docker = None  # type: ignore[assignment]

WORK = "/work"  # the job's volume in the containers: input/, job/
IMAGES = "/data/images"  # the remote image folder in the containers


def name(job: str) -> str:
    return f"nima-job-{job}"


def create(client, job: str, labels: dict[str, str]) -> str:
    """Create the volume of a new job named `job`, or `job`-r... if the remote machine has one
    of that name already; returns the name the job got."""
    while True:
        try:
            client.volumes.get(name(job))
            job += "-r"
        except docker.errors.NotFound:
            break
    client.volumes.create(name(job), labels={**labels, "nima.job": job})
    return job


def binds(job: str, image_dir: str) -> dict[str, dict[str, str]]:
    """The training container's mounts: the job volume, and the remote image folder."""
    return {name(job): {"bind": WORK, "mode": "rw"}, image_dir: {"bind": IMAGES, "mode": "ro"}}


def labels(client, job: str) -> dict:
    try:
        return client.volumes.get(name(job)).attrs.get("Labels") or {}
    except docker.errors.NotFound:
        raise LaunchError(f"no job {job!r} on the remote machine") from None


def _helper(client, job: str, image: str, mounts: list | None = None):
    """A created (never started) container with the job volume at /work, for copying files."""
    try:
        return client.containers.create(
            image, entrypoint=["true"], command=[], network_mode="none",
            volumes={name(job): {"bind": WORK, "mode": "rw"}}, mounts=mounts or [],
            labels={"nima.helper": job})
    except docker.errors.DockerException as e:
        msg = one_line(e)
        if "bind source path does not exist" in msg:
            raise LaunchError(f"image directory not found on the remote machine: "
                              f"{mounts[0]['Source'] if mounts else '?'}") from None
        raise LaunchError(f"cannot create a helper container: {msg}") from None


def upload_inputs(client, job: str, image: str, config: Path, samples: Path,
                  image_dir: str, init_model: Path | None = None) -> list[str]:
    """Put config.json, samples.json (and the initial model) into the job volume, after
    checking that the remote image folder exists (a bind mount of a missing path would
    silently create it); returns the `nima train` options that name them in the container."""
    helper = _helper(client, job, image, [docker.types.Mount(
        IMAGES, image_dir, type="bind", read_only=True)])
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for folder, mode in (("input", 0o755), ("job", 0o777)):
                # job/ is written by the image's unprivileged user, whatever its uid.
                info = tarfile.TarInfo(folder)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, int(time.time())
                tar.addfile(info)
            inputs = [("--config-file", config, "input/config.json"),
                      ("--samples-file", samples, "input/samples.json")]
            if init_model is not None:
                inputs.append(("--init-model", init_model, f"input/init{init_model.suffix}"))
            for _, src, arcname in inputs:
                info = tar.gettarinfo(str(src), arcname=arcname)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(src, "rb") as f:
                    tar.addfile(info, f)
        if not helper.put_archive(WORK, buf.getvalue()):
            raise LaunchError(f"could not copy the inputs into volume {name(job)}")
    finally:
        helper.remove(force=True)
    return [x for flag, _, arcname in inputs for x in (flag, f"{WORK}/{arcname}")]


def fetch(client, job: str, dest_root: Path) -> Path:
    """Copy the job directory from the remote volume to dest_root/<job> (replacing it)."""
    try:
        volume = client.volumes.get(name(job))
    except docker.errors.NotFound:
        raise LaunchError(f"no job {job!r} on the remote machine (no volume "
                          f"{name(job)})") from None
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
        raise LaunchError(f"cannot copy job {job} back: {one_line(e)}") from None
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
