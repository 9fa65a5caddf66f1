"""Run `nima train` / `nima predict` in a Docker container: the engine behind ./train-local and
./predict.

The host needs only python3 and the docker SDK (this module must never import TensorFlow or
anything from nima that does). Each host path an argument names is bind-mounted at
`/host/<absolute host path>` (inputs read-only, the job dir / output folder read-write) and the
argument is rewritten to that container path. The mapping is reversible, so a job directory
written in a container (its job.json holds container paths) can be resumed from the host.

Reusable steps for other launchers (e.g. a remote one): `connect(base_url)`,
`ensure_image(client, flavor, ...)`, `run_container(client, image, spec, ...)`; they take a
`docker.DockerClient` and know nothing about argv.

Without a Docker engine (or with --local) the same `nima` command runs in the repository's
.venv, which is created with `pip install -e .` on first use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, NoReturn, Sequence

from nima import __version__, jobs
from nima.errors import NimaError

try:
    import docker
    import docker.errors
    import docker.types
except ImportError:  # the host may not have the SDK yet: see _bootstrap_sdk
    docker = None  # type: ignore[assignment]


REPO = Path(__file__).resolve().parents[2]
HOST_ROOT = PurePosixPath("/host")
# Named volumes that outlive the containers (paths as in Dockerfile.*), one set per user (the
# folders a uid creates in them are its own: a shared volume filled by one uid is read-only
# for the next): Keras' ImageNet weights, and ~/.cache, where nima keeps its TFLite
# conversions and matplotlib its font list.
CACHE_VOLUMES = {"nima-keras-cache": "/home/nima/.keras", "nima-cache": "/home/nima/.cache"}


def cache_volumes(user: str) -> dict[str, dict[str, str]]:
    """The cache volumes of `user` ("uid:gid" or a name) as docker SDK volume binds."""
    who = re.sub(r"[^A-Za-z0-9_.-]", "_", user.split(":")[0])
    return {f"{name}-{who}": {"bind": path, "mode": "rw"} for name, path in CACHE_VOLUMES.items()}
FLAVORS = ("cpu", "gpu")
PROGS = {"train": "train-local", "predict": "predict"}
# Files that make up an image; their hash is part of its tag, so a code change rebuilds it.
IMAGE_INPUTS = ("pyproject.toml", "README.md", "src", "models", ".dockerignore")
EXIT_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 130, 141  # 141: 128 + SIGPIPE


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

def _need_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise LaunchError(f"{what} not found: {path}")
    if not path.is_file():
        raise LaunchError(f"{what} is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise LaunchError(f"{what} is not readable: {path}")
    return path


def _need_dir(path: Path, what: str, writable: bool = False) -> Path:
    if not path.exists():
        raise LaunchError(f"{what} not found: {path}")
    if not path.is_dir():
        raise LaunchError(f"{what} is not a directory: {path}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise LaunchError(f"{what} is not readable: {path}")
    if writable and not os.access(path, os.W_OK | os.X_OK):
        raise LaunchError(f"{what} is not writable: {path}")
    return path


def new_job_dir(root: Path = Path("train_jobs")) -> Path:
    """A free train_jobs/<timestamp>, named like `nima train` names it (not created yet)."""
    return jobs.new_path(root)


def _check_new_job_dir(job: Path) -> Path:
    """A job dir the launcher can create (or an empty one): checked before the image build."""
    return need_creatable(jobs.check_new(job, LaunchError), "job directory")


def need_creatable(path: Path, what: str) -> Path:
    """The nearest existing folder of `path` must take new files: a read-only disk or someone
    else's folder is one line before the work starts, not a traceback after it."""
    parent = Path(os.path.abspath(path))
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise LaunchError(f"cannot create {what} {path}: {parent} is not writable")
    return path


def make_job_dir(job: Path) -> None:
    """Create the job dir as the user, just before its container starts (a bind mount of a
    missing path would be created by the engine, owned by root)."""
    jobs.create(job, LaunchError)


# --- argv: the launcher's own options plus the `nima` options that name paths --------------------

def _parser(command: str) -> argparse.ArgumentParser:
    prog = PROGS[command]
    p = argparse.ArgumentParser(
        prog=prog, description=f"Run `nima {command}` in a Docker container (or locally when no "
        "engine answers). Options not listed here are passed to `nima " + command + "`. "
        "See docs/docker.md.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--docker", action="store_true", help="fail instead of running locally "
                       "when no Docker engine answers")
    where.add_argument("--local", action="store_true",
                       help="run in the local Python environment (.venv), not in Docker")
    device = p.add_mutually_exclusive_group()
    device.add_argument("--gpu", action="store_true", help="use the GPU image and all GPUs "
                        "(default for a *_gpu or mixed_precision config, and for resuming one)")
    device.add_argument("--cpu", action="store_true", help="use the CPU image even for a *_gpu "
                        "or mixed_precision config")
    p.add_argument("--rebuild", action="store_true", help="rebuild the image even if it exists")
    if command == "train":
        p.add_argument("--detach", action="store_true",
                       help="leave training running in the background and print how to follow it")
        p.add_argument("--config-file", type=Path, help="JSON config (mounted read-only); a "
                       "name with _gpu implies --gpu")
        p.add_argument("--samples-file", type=Path, help="label JSON (mounted read-only)")
        p.add_argument("--image-dir", type=Path, help="image folder (mounted read-only)")
        p.add_argument("--job-dir", type=Path, help="output folder, mounted read-write "
                       "(default: train_jobs/<timestamp>)")
        p.add_argument("--resume", type=Path, metavar="JOB_DIR",
                       help="continue a stopped or killed job")
        p.add_argument("--init-model", type=Path, metavar="MODEL",
                       help="fine-tune this NIMA model (.keras, job dir or Keras 2 .hdf5; "
                       "mounted read-only)")
    else:
        p.add_argument("--image-source", type=Path, help="image file or folder (read-only)")
        p.add_argument("--weights-file", "--model", dest="weights_file", type=Path,
                       action="append", help="model file or job dir (default: the shipped "
                       "model in the image); repeat for an ensemble")
        p.add_argument("--config-file", type=Path, help="config for a .weights.h5 file")
        p.add_argument("--predictions-file", type=Path,
                       help="write results here; its folder is mounted read-write")
    return p


def _is_gpu_config(path: Path | None) -> bool:
    return path is not None and bool(re.search(r"_gpu\b|_gpu[._]", path.name))


def gpu_reason(a: argparse.Namespace) -> str | None:
    """Why a run without --gpu/--cpu gets the GPU image, or None. A resumed job's config is
    its config.json (the name is lost): mixed_precision marks the GPU configs, so a GPU job
    does not silently resume on a CPU."""
    if a.gpu or a.cpu:
        return None
    config = getattr(a, "config_file", None)
    if getattr(a, "resume", None) is not None:
        config = a.resume / "config.json"
    if config is None:
        return None
    if _is_gpu_config(config):
        return f"{config.name} is a *_gpu config"
    try:
        settings = json.loads(config.read_text())
    except (OSError, ValueError):  # reported later, by the checks or by nima itself
        return None
    if isinstance(settings, dict) and settings.get("mixed_precision") is True:
        return f"{config} sets mixed_precision (a GPU setting)"
    return None


def plan_train(a: argparse.Namespace, rest: list[str]) -> tuple[RunSpec, Path]:
    """Check the inputs, choose the job dir, and map everything into the container.

    The caller creates the job dir (`make_job_dir(job)`) just before the container starts.
    """
    spec = RunSpec(command=["train"])
    if a.resume:
        job = jobs.check_resumable(_need_dir(a.resume, "job directory", writable=True),
                                   LaunchError)
        if a.init_model is not None:
            raise LaunchError("--init-model starts a new job; --resume continues one")
        ignored = [f"--{n.replace('_', '-')}" for n in ("config_file", "samples_file", "job_dir")
                   if getattr(a, n) is not None]
        if ignored:  # they were silently ignored: e.g. a config with more epochs did nothing
            raise LaunchError(f"--resume continues a job with the config.json and samples.json "
                              f"in its directory: {', '.join(ignored)} does not go with it")
        meta = jobs.read_record(job, LaunchError)
        image_dir = _need_dir(a.image_dir or host_path(jobs.recorded_image_dir(job, meta,
                                                                               LaunchError)),
                              "image directory")
        spec.command += ["--resume", spec.mount(job, "rw"),
                         "--image-dir", spec.mount(image_dir)]
        # A job killed before its first epoch ended starts over from its initial model.
        init = host_path(meta["init_model"]) if meta.get("init_model") else None
        if init is not None and init.exists():
            spec.mount(init)
    else:
        missing = [f"--{n.replace('_', '-')}" for n in ("config_file", "samples_file", "image_dir")
                   if getattr(a, n) is None]
        if missing:
            raise LaunchError(f"train needs {', '.join(missing)} (or --resume JOB_DIR)")
        config = _need_file(a.config_file, "config file")
        samples = _need_file(a.samples_file, "samples file")
        image_dir = _need_dir(a.image_dir, "image directory")
        job = _check_new_job_dir(a.job_dir or new_job_dir())
        spec.command += ["--config-file", spec.mount(config), "--samples-file", spec.mount(samples),
                         "--image-dir", spec.mount(image_dir), "--job-dir", spec.mount(job, "rw")]
        if a.init_model is not None:
            if not a.init_model.exists():
                raise LaunchError(f"init model not found: {a.init_model}")
            spec.command += ["--init-model", spec.mount(a.init_model)]
    spec.command += rest
    spec.name = f"nima-train-{re.sub(r'[^A-Za-z0-9_.-]', '_', job.name)}-{secrets.token_hex(2)}"
    spec.labels = {"nima.command": "train", "nima.job-dir": os.path.abspath(job)}
    return spec, job


def plan_predict(a: argparse.Namespace, rest: list[str]) -> RunSpec:
    if a.image_source is None:
        raise LaunchError("predict needs --image-source (an image file or a folder)")
    spec = RunSpec(command=["predict"], labels={"nima.command": "predict"})
    source = a.image_source
    if source.is_dir():
        _need_dir(source, "image source")
    else:
        _need_file(source, "image source")
    spec.command += ["--image-source", spec.mount(source)]
    for model in a.weights_file or ():  # every one: repeated, they make an ensemble
        if not model.exists():
            raise LaunchError(f"weights file not found: {model}")
        spec.command += ["--weights-file", spec.mount(model)]
        # nima reads these beside a model file: its description, and the training config a
        # .weights.h5 file needs. Container paths mirror host paths, so they are found there.
        for name in ("metadata.json", "config.json"):
            if model.is_file() and (model.parent / name).is_file():
                spec.mount(model.parent / name)
    if a.config_file is not None:
        spec.command += ["--config-file", spec.mount(_need_file(a.config_file, "config file"))]
    if a.predictions_file == Path("-"):
        spec.command += ["--predictions-file", "-"]  # stdout, streamed back by the launcher
    elif a.predictions_file is not None:
        # Written atomically (temp file + rename) next to its final name: mount the folder.
        out = a.predictions_file
        folder = _need_dir(out.parent if str(out.parent) else Path("."),
                           "predictions folder", writable=True)
        spec.command += ["--predictions-file",
                         str(PurePosixPath(spec.mount(folder, "rw")) / out.name)]
    spec.command += rest
    return spec


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
        raise LaunchError(f"no Docker engine answers at {where} ({_one_line(e)})") from None
    client.api.timeout = None
    return client


def _one_line(e: BaseException) -> str:
    text = getattr(e, "explanation", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())[:300]


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
                                  decode=True, labels={"nima.version": __version__})
        last = ""
        for chunk in stream:
            if "stream" in chunk:
                out(chunk["stream"])
                last = chunk["stream"].strip() or last
            if "error" in chunk:
                raise LaunchError(f"building {tag} from {dockerfile.name} failed: "
                                  f"{_one_line(Exception(chunk['error']))}")
    except docker.errors.DockerException as e:
        raise LaunchError(f"building {tag} from {dockerfile.name} failed: {_one_line(e)}") from None
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        raise LaunchError(f"building {tag} failed without an error message ({last})") from None


def ensure_image(client: "docker.DockerClient", flavor: str, repo: Path = REPO,
                 base_image: str | None = None, network: str | None = None,
                 rebuild: bool = False, say: Callable[[str], None] = print) -> str:
    """The image tag for `flavor`, built from Dockerfile.<flavor> first if the engine lacks it."""
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
    build_image(client, flavor, tag, repo, base_image, network)
    return tag


def _refuse_busy_job(client: "docker.DockerClient", label: str, job: Path) -> None:
    """Two trainers in one job dir overwrite each other's checkpoints (e.g. --resume of a job
    that still runs detached): refuse while a container of this launcher writes to it."""
    try:
        busy = client.containers.list(filters={"label": f"nima.job-dir={label}"})
    except docker.errors.DockerException:
        return
    if busy:
        name, cli = busy[0].name, _docker_cli()
        raise LaunchError(f"job directory {job} is still being written by container {name} "
                          f"(follow it: {cli} logs -f {name}; stop it: {cli} stop {name})")


def _docker_cli() -> str:
    """The docker command line that reaches the engine the launcher uses."""
    host = os.environ.get("DOCKER_HOST")
    return f"docker -H {host}" if host else "docker"


def gpu_request() -> "docker.types.DeviceRequest":
    """All GPUs, like `docker run --gpus all`."""
    return docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])


def _exit_message(code: int, state: dict) -> str | None:
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
    """
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
        raise LaunchError(f"cannot create the container: {_one_line(e)}") from None
    # Attach before starting, as `docker run` does: nothing is lost, and the stream ends when
    # the container exits (attaching to an already exited container can hang).
    stream = None if detach else client.api.attach(container.id, stdout=True, stderr=True,
                                                   stream=True, logs=False, demux=True)
    try:
        container.start()
    except docker.errors.APIError as e:
        container.remove(force=True)
        msg = _one_line(e)
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
            _interrupt(container)
            raise
        except Exception as e:  # requests' ConnectionError ...: the engine restarted or died
            raise EngineLost(f"lost the Docker engine while container {container.name} ran "
                              f"({_one_line(e)}); it may still be running") from None
        message = _exit_message(code, container.attrs.get("State", {}))
        if message:
            print(message, file=sys.stderr)
        return code, container
    finally:
        try:
            container.remove(force=True)
        except Exception:  # gone already, or no engine to ask
            pass


def _interrupt(container) -> None:
    try:
        container.kill(signal="SIGINT")
        container.wait(timeout=30)
    except Exception:
        try:
            container.stop(timeout=5)
        except docker.errors.DockerException:
            pass


# --- local fallback -------------------------------------------------------------------------------

def run_local(command: str, argv: list[str], repo: Path = REPO) -> NoReturn:
    """exec `nima COMMAND ARGV` from repo/.venv, creating it with `pip install -e .` if needed."""
    venv = repo / ".venv"
    nima = venv / "bin" / "nima"
    if not nima.exists():
        base = getattr(sys, "_base_executable", None) or sys.executable
        print(f"{PROGS[command]}: creating {venv} with `pip install -e .` (first run, a few "
              "minutes)", file=sys.stderr)
        try:
            if not (venv / "bin" / "python").exists():
                subprocess.run([base, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-e",
                            str(repo)], check=True)
        except (subprocess.CalledProcessError, OSError) as e:
            raise LaunchError(f"could not create {venv}: {_one_line(e)}") from None
    sys.stdout.flush()
    os.execv(nima, [str(nima), command, *argv])


def _bootstrap_sdk(command: str, argv: list[str]) -> NoReturn:
    """Re-run this launcher from a small venv with the docker SDK (made on first use)."""
    venv = REPO / ".venv-launch"
    python = venv / "bin" / "python"
    if os.environ.get("NIMA_LAUNCH_BOOTSTRAPPED"):
        raise LaunchError(f"{python} cannot import the docker SDK: remove {venv} and retry")
    if not (venv / ".ok").exists():
        print(f"{PROGS[command]}: installing the docker SDK into {venv} (first use)",
              file=sys.stderr)
        try:
            subprocess.run([getattr(sys, "_base_executable", None) or sys.executable, "-m", "venv",
                            str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "docker[ssh]>=7"], check=True)
            (venv / ".ok").touch()
        except (subprocess.CalledProcessError, OSError) as e:
            raise LaunchError(f"could not install the docker SDK into {venv}: {_one_line(e)}"
                              ) from None
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), NIMA_LAUNCH_BOOTSTRAPPED="1")
    os.execve(python, [str(python), "-m", "nima.launch", command, *argv], env)


def _engine_configured() -> bool:
    return bool(os.environ.get("DOCKER_HOST")) or Path("/var/run/docker.sock").exists()


# --- main -------------------------------------------------------------------------------------------

def launch(command: str, argv: Sequence[str]) -> int:
    prog = PROGS[command]
    a, rest = _parser(command).parse_known_args(argv)
    # What `nima` itself gets when run locally: everything but the launcher's own options.
    own = {"--docker", "--local", "--gpu", "--cpu", "--rebuild", "--detach"}
    local_argv = [x for x in argv if x not in own]

    def local() -> NoReturn:
        if getattr(a, "detach", False):
            print(f"{prog}: --detach needs Docker: training runs in the foreground",
                  file=sys.stderr)
        run_local(command, local_argv)

    if a.local:
        local()
    if docker is None:
        if a.docker or _engine_configured():
            _bootstrap_sdk(command, list(argv))
        print(f"{prog}: no Docker engine (DOCKER_HOST unset, no /var/run/docker.sock): running "
              f"`nima {command}` locally", file=sys.stderr)
        local()
    try:
        client = connect()
    except LaunchError as e:
        if a.docker:
            raise
        print(f"{prog}: {e}: running `nima {command}` locally", file=sys.stderr)
        local()

    if command == "train":
        spec, job = plan_train(a, rest)
    else:
        spec, job = plan_predict(a, rest), None
    reason = gpu_reason(a)
    gpu = a.gpu or reason is not None
    if reason:
        print(f"{prog}: {reason}: using the GPU image and all GPUs (--cpu to not)",
              file=sys.stderr)
    if job is not None:
        _refuse_busy_job(client, spec.labels["nima.job-dir"], job)
    flavor = "gpu" if gpu else "cpu"
    tag = ensure_image(client, flavor, base_image=os.environ.get("NIMA_BASE_IMAGE"),
                       network=os.environ.get("NIMA_DOCKER_BUILD_NETWORK"), rebuild=a.rebuild,
                       say=lambda s: print(f"{prog}: {s}", file=sys.stderr))
    network = os.environ.get("NIMA_DOCKER_NETWORK")
    detach = bool(getattr(a, "detach", False))
    if job is not None:
        make_job_dir(job)
        print(f"{prog}: job directory {job} (container {spec.name}, image {tag})", file=sys.stderr)
    try:
        code, container = run_container(client, tag, spec, gpu=gpu, network=network,
                                        detach=detach)
    except EngineLost as e:
        raise LaunchError(f"{e}" + (f"; job directory kept: {job}" if job else "")) from None
    except LaunchError:
        if job is not None and not any(job.iterdir()):
            job.rmdir()  # made a moment ago for a container that never started
        raise
    except KeyboardInterrupt:
        print(f"{prog}: interrupted" + (f"; job directory kept: {job} (continue with "
              f"./train-local --resume {job})" if job else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our stdout went away: stop quietly, as a command killed by SIGPIPE does
        # (and keep Python from reporting the pipe again when it flushes stdout at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if job is not None:
            print(f"{prog}: output closed, training stopped; job directory kept: {job} "
                  f"(continue with ./train-local --resume {job})", file=sys.stderr)
        return EXIT_BROKEN_PIPE
    if detach:
        cli = _docker_cli()
        print(f"training in container {container.name}; job directory {job}\n"
              f"  follow: {cli} logs -f {container.name}\n"
              f"  stop:   {cli} stop {container.name}   "
              f"(then ./train-local --resume {job})")
        return 0
    if code != 0 and job is not None:
        print(f"{prog}: training failed (exit {code}); job directory kept: {job}",
              file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in PROGS:
        print("usage: python -m nima.launch {train|predict} [ARGS...]", file=sys.stderr)
        return 2
    command = argv.pop(0)
    try:
        return launch(command, argv)
    except LaunchError as e:
        print(f"{PROGS[command]}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # e.g. during an image build
        print(f"{PROGS[command]}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _terminate(signum, frame) -> None:
    # `kill` of the launcher, or its terminal closing (SIGHUP), stops its container like Ctrl-C
    # does, instead of leaving it running unwatched and never removed (--detach is for that).
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    sys.exit(main())
