"""Running `nima` in a Docker container, for the launchers (nima.launch: ./train-local and
./predict; nima.remote: ./train-remote): the engine connection, the image (tagged by a hash of
its sources, built on first use), host paths mapped into the container, and a container run
whose output is streamed here and which Ctrl-C stops cleanly.

Every step takes a `docker.DockerClient` and knows nothing about argv. This module must never
import TensorFlow or anything from nima that does: the launchers' host has python3 and the
docker SDK only.

Environment: NIMA_BASE_IMAGE (the Dockerfiles' BASE_IMAGE), NIMA_DOCKER_BUILD_NETWORK (network
of image builds), NIMA_DOCKER_NETWORK (network of containers), NIMA_IMAGE_CPU/_GPU (an image
tag to use instead of building one); see docs/docker.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from nima import __version__
from nima.errors import NimaError

try:
    import docker
    import docker.errors
    import docker.types
except ImportError:  # the host may not have the SDK yet: see nima.launch
    docker = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[2]
HOST_ROOT = PurePosixPath("/host")
# Files that make up an image; their hash is part of its tag, so a code change rebuilds it.
IMAGE_INPUTS = ("pyproject.toml", "constraints.txt", "README.md", "src", "models",
                ".dockerignore")
# Named volumes that outlive the containers (paths as in Dockerfile.*), one set per user (the
# folders a uid creates in them are its own: a shared volume filled by one uid is read-only
# for the next): Keras' ImageNet weights, and ~/.cache, where nima keeps its TFLite
# conversions and matplotlib its font list.
CACHE_VOLUMES = {"nima-keras-cache": "/home/nima/.keras", "nima-cache": "/home/nima/.cache"}


def cache_volumes(user: str) -> dict[str, dict[str, str]]:
    """The cache volumes of `user` ("uid:gid" or a name) as docker SDK volume binds."""
    who = re.sub(r"[^A-Za-z0-9_.-]", "_", user.split(":")[0])
    return {f"{name}-{who}": {"bind": path, "mode": "rw"} for name, path in CACHE_VOLUMES.items()}


class LaunchError(NimaError):
    """The container could not be built, started or run (one sentence, shown to the user)."""


class EngineLost(LaunchError):
    """The engine went away while a container ran (which may run on without us)."""


# --- host <-> container paths ------------------------------------------------------------------

def container_path(host: str | Path) -> str:
    """/host/<absolute path>: the same place seen from inside the container."""
    return str(HOST_ROOT / Path(os.path.abspath(host)).relative_to("/"))


def host_path(path: str | Path) -> Path:
    """Inverse of container_path; paths outside /host (a job made without Docker) stay."""
    p = PurePosixPath(path)
    if p.is_relative_to(HOST_ROOT):
        return Path("/") / p.relative_to(HOST_ROOT)
    return Path(p)


@dataclass
class RunSpec:
    """What to run in a container: `nima` arguments and the bind mounts they need."""

    command: list[str]
    entrypoint: list[str] | None = None  # None: the image's `python3 -m nima`
    binds: dict[str, dict[str, str]] = field(default_factory=dict)  # host -> {bind, mode}
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def mount(self, host: str | Path, mode: str = "ro") -> str:
        """Bind-mount a host path; returns its container path. rw wins over ro."""
        src = os.path.abspath(host)
        if self.binds.get(src, {}).get("mode") != "rw":
            self.binds[src] = {"bind": container_path(src), "mode": mode}
        return self.binds[src]["bind"]


# --- bad input is caught on the host, before any container starts -------------------------------

def need_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise LaunchError(f"{what} not found: {path}")
    if not path.is_file():
        raise LaunchError(f"{what} is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise LaunchError(f"{what} is not readable: {path}")
    return path


def need_dir(path: Path, what: str, writable: bool = False) -> Path:
    if not path.exists():
        raise LaunchError(f"{what} not found: {path}")
    if not path.is_dir():
        raise LaunchError(f"{what} is not a directory: {path}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise LaunchError(f"{what} is not readable: {path}")
    if writable and not os.access(path, os.W_OK | os.X_OK):
        raise LaunchError(f"{what} is not writable: {path}")
    return path


# --- which image: cpu or gpu --------------------------------------------------------------------

def is_gpu_config(path: Path | None) -> bool:
    return path is not None and bool(re.search(r"_gpu\b|_gpu[._]", path.name))


def gpu_config_reason(config: Path) -> str | None:
    """Why training with `config` wants the GPU image, or None: a *_gpu name, or (for a job's
    config.json, whose name says nothing) mixed_precision, which only the GPU configs set."""
    if is_gpu_config(config):
        return f"{config.name} is a *_gpu config"
    try:
        settings = json.loads(config.read_text())
    except (OSError, ValueError):  # reported later, by the checks or by nima itself
        return None
    if isinstance(settings, dict) and settings.get("mixed_precision") is True:
        return f"{config} sets mixed_precision (a GPU setting)"
    return None


# --- the engine ---------------------------------------------------------------------------------

def connect(base_url: str | None = None, timeout: float = 10) -> "docker.DockerClient":
    """A client for the engine at base_url (default: DOCKER_HOST or the local socket).

    Raises LaunchError when it does not answer within `timeout` seconds. The returned client has
    no read timeout: a container may print nothing for a long time.
    """
    if docker is None:
        raise LaunchError("the docker SDK for Python is not installed (pip install docker)")
    try:
        client = (docker.DockerClient(base_url=base_url, timeout=int(timeout)) if base_url
                  else docker.from_env(timeout=int(timeout)))
        client.ping()
    except Exception as e:  # DockerException, requests' ConnectionError, FileNotFoundError ...
        where = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        raise LaunchError(f"no Docker engine answers at {where} ({one_line(e)})") from None
    client.api.timeout = None
    return client


def one_line(e: BaseException) -> str:
    """An exception as one short line, for an error message."""
    text = getattr(e, "explanation", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())[:300]


# --- images --------------------------------------------------------------------------------------

def source_hash(repo: Path, flavor: str, base_image: str | None) -> str:
    """Hash of everything that goes into the image, so a changed tree gets a new tag."""
    h = hashlib.sha256(f"{flavor}\0{base_image or ''}\0".encode())
    files = [repo / f"Dockerfile.{flavor}"]
    for name in IMAGE_INPUTS:
        p = repo / name
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                            and ".egg-info" not in str(f) and f.suffix != ".pyc")
        elif p.is_file():
            files.append(p)
    for f in files:
        h.update(str(f.relative_to(repo)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def image_tag(flavor: str, repo: Path = REPO, base_image: str | None = None) -> str:
    """$NIMA_IMAGE_<FLAVOR> if set, else nima-<flavor>:<version>-<source hash>."""
    override = os.environ.get(f"NIMA_IMAGE_{flavor.upper()}")
    if override:
        return override
    return f"nima-{flavor}:{__version__}-{source_hash(repo, flavor, base_image)}"


def build_image(client: "docker.DockerClient", flavor: str, tag: str, repo: Path = REPO,
                base_image: str | None = None, network: str | None = None,
                out: Callable[[str], None] = lambda s: sys.stderr.write(s)) -> None:
    """docker build -f Dockerfile.<flavor> -t tag repo, streaming the build output to `out`."""
    dockerfile = repo / f"Dockerfile.{flavor}"
    if not dockerfile.is_file():
        raise LaunchError(f"cannot build {tag}: {dockerfile} is missing")
    args = {"BASE_IMAGE": base_image} if base_image else {}
    try:
        stream = client.api.build(path=str(repo), dockerfile=dockerfile.name, tag=tag,
                                  buildargs=args, network_mode=network, rm=True, forcerm=True,
                                  decode=True, labels={"nima.version": __version__,
                                                       "nima.checkout": str(repo.resolve())})
        last = ""
        for chunk in stream:
            if "stream" in chunk:
                out(chunk["stream"])
                last = chunk["stream"].strip() or last
            if "error" in chunk:
                raise LaunchError(f"building {tag} from {dockerfile.name} failed: "
                                  f"{one_line(Exception(chunk['error']))}")
    except docker.errors.DockerException as e:
        raise LaunchError(f"building {tag} from {dockerfile.name} failed: {one_line(e)}") from None
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        raise LaunchError(f"building {tag} failed without an error message ({last})") from None


def ensure_image(client: "docker.DockerClient", flavor: str, rebuild: bool = False,
                 say: Callable[[str], None] = print, repo: Path = REPO) -> str:
    """The image tag for `flavor`, built from Dockerfile.<flavor> first if the engine lacks it
    (on $NIMA_BASE_IMAGE, with network $NIMA_DOCKER_BUILD_NETWORK, when they are set)."""
    base_image = os.environ.get("NIMA_BASE_IMAGE")
    tag = image_tag(flavor, repo, base_image)
    if not rebuild:
        try:
            client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        say(f"image {tag} not found: building it from Dockerfile.{flavor} "
            "(the first build downloads the TensorFlow base image, a few GB)")
    else:
        say(f"rebuilding image {tag} from Dockerfile.{flavor}")
    build_image(client, flavor, tag, repo, base_image, os.environ.get("NIMA_DOCKER_BUILD_NETWORK"))
    if not os.environ.get(f"NIMA_IMAGE_{flavor.upper()}"):
        remove_older_images(client, flavor, tag, repo, say)
    return tag


def remove_older_images(client: "docker.DockerClient", flavor: str, keep: str, repo: Path,
                        say: Callable[[str], None] = print) -> None:
    """Remove the tags this checkout built for `flavor` before `keep`, and with the last tag an
    image's own layers: every code change makes a new tag, and the old ones would pile up
    (about 15 MB each beyond the shared layers). Images of other checkouts on the same engine
    stay, and so does an image a container still uses, stopped ones included (the engine
    refuses): a detached job keeps its image until its container is removed."""
    removed = []
    label = f"nima.checkout={repo.resolve()}"
    try:
        for image in client.images.list(name=f"nima-{flavor}", filters={"label": label}):
            for tag in image.tags:
                if tag == keep or not tag.startswith(f"nima-{flavor}:"):
                    continue
                try:
                    client.images.remove(tag)
                except docker.errors.APIError:  # in use by a container, or already gone
                    continue
                removed.append(tag)
    except docker.errors.DockerException as e:  # tidying up must never fail a run
        say(f"could not remove older nima-{flavor} images: {one_line(e)}")
        return
    if removed:
        say(f"removed {len(removed)} older image(s) of this checkout: {', '.join(sorted(removed))}")


# --- containers ----------------------------------------------------------------------------------

def docker_cli() -> str:
    """The docker command line that reaches the engine the launcher uses."""
    host = os.environ.get("DOCKER_HOST")
    return f"docker -H {host}" if host else "docker"


def gpu_request() -> "docker.types.DeviceRequest":
    """All GPUs, like `docker run --gpus all`."""
    return docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])


def exit_message(code: int, state: dict) -> str | None:
    if state.get("OOMKilled"):
        return f"the container ran out of memory and was killed (exit {code})"
    if code == 137:
        return "the container was killed (SIGKILL, e.g. docker kill or the OOM killer; exit 137)"
    if code == 143:
        return "the container was stopped (SIGTERM; exit 143)"
    return None


def copy_stream(stream) -> None:
    """Relay a demuxed (stdout, stderr) container stream to ours as it arrives."""
    for out, err in stream:
        if out:
            sys.stdout.buffer.write(out)
            sys.stdout.flush()
        if err:
            sys.stderr.buffer.write(err)
            sys.stderr.flush()


def mounts(binds: dict[str, dict[str, str]]) -> list["docker.types.Mount"]:
    """SDK-style binds ({host path or volume name: {bind, mode}}) as Mounts: a `-v` spec
    (src:dst:mode) cannot hold a path with a colon, such as "photos 10:15"."""
    return [docker.types.Mount(b["bind"], src, type="bind" if src.startswith("/") else "volume",
                               read_only=b["mode"] == "ro") for src, b in binds.items()]


def run_container(client: "docker.DockerClient", image: str, spec: RunSpec, gpu: bool = False,
                  network: str | None = None, detach: bool = False,
                  user: str | None = None) -> tuple[int, "docker.models.containers.Container"]:
    """Run `nima <spec.command>` in `image`; stream its output; return (exit code, container).

    With detach=True it returns (0, container) as soon as the container runs. Ctrl-C sends the
    container SIGINT (nima stops cleanly, the job dir keeps the last completed epoch), then
    stops it if it has not exited within 30 s. The container is removed unless detached.
    network: its network_mode (default $NIMA_DOCKER_NETWORK, else the engine's default); user:
    "uid:gid" or a name (default ours).
    """
    network = network or os.environ.get("NIMA_DOCKER_NETWORK")
    uid_gid = user or f"{os.getuid()}:{os.getgid()}"
    kwargs: dict = dict(image=image, command=spec.command, user=uid_gid,
                        mounts=mounts({**spec.binds, **cache_volumes(uid_gid)}),
                        name=spec.name, labels=spec.labels, detach=True, network_mode=network,
                        entrypoint=spec.entrypoint)
    if gpu:
        kwargs["device_requests"] = [gpu_request()]
    try:
        container = client.containers.create(**kwargs)
    except docker.errors.DockerException as e:
        raise LaunchError(f"cannot create the container: {one_line(e)}") from None
    # Attach before starting, as `docker run` does: nothing is lost, and the stream ends when
    # the container exits (attaching to an already exited container can hang).
    stream = None if detach else client.api.attach(container.id, stdout=True, stderr=True,
                                                   stream=True, logs=False, demux=True)
    try:
        container.start()
    except docker.errors.APIError as e:
        container.remove(force=True)
        msg = one_line(e)
        if gpu and ("device driver" in msg or "nvidia" in msg.lower() or "gpu" in msg.lower()):
            raise LaunchError(f"the Docker engine cannot provide GPUs ({msg}): install the NVIDIA "
                              "Container Toolkit on the host, or use --cpu") from None
        raise LaunchError(f"cannot start the container: {msg}") from None
    if stream is None:
        return 0, container
    try:
        try:
            copy_stream(stream)
            code = container.wait()["StatusCode"]
            container.reload()
        except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, or `./predict | head` is done
            interrupt(container)
            raise
        except Exception as e:  # requests' ConnectionError ...: the engine restarted or died
            raise EngineLost(f"lost the Docker engine while container {container.name} ran "
                              f"({one_line(e)}); it may still be running") from None
        message = exit_message(code, container.attrs.get("State", {}))
        if message:
            print(message, file=sys.stderr)
        return code, container
    finally:
        try:
            container.remove(force=True)
        except Exception:  # gone already, or no engine to ask
            pass


def interrupt(container) -> None:
    """Stop a container as Ctrl-C would stop nima (SIGINT: it saves and exits), or for good."""
    try:
        container.kill(signal="SIGINT")
        container.wait(timeout=30)
    except Exception:
        try:
            container.stop(timeout=5)
        except docker.errors.DockerException:
            pass

