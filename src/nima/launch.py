"""Run `nima train` / `nima predict` in a Docker container: the engine behind ./train-local and
./predict.

The host needs only python3 and the docker SDK (this module must never import TensorFlow or
anything from nima that does). Each host path an argument names is bind-mounted at
`/host/<absolute host path>` (inputs read-only, the job dir / output folder read-write) and the
argument is rewritten to that container path; which arguments name paths, and what kind, is
said by their definitions in nima.options. The mapping is reversible, so a job directory
written in a container (its job.json holds container paths) can be resumed from the host. The
engine steps themselves (image, mounts, the run) are nima.container's.

Without a Docker engine (or with --local) the same `nima` command runs in the repository's
.venv, which is created with `pip install -e .` on first use (the versions of constraints.txt,
those the tests passed with, where they install).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import NoReturn, Sequence

from nima import container, jobs, options
from nima.container import (REPO, EngineLost, LaunchError, RunSpec, host_path, need_dir,
                            need_file, one_line)
from nima.errors import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED
from nima.options import Names, Option, UsageError

PROGS = {"train": "train-local", "predict": "predict"}
# How the launcher treats what an option names, as its help says.
MOUNT_NOTES = {Names.FILE: "mounted read-only", Names.DIR: "mounted read-only",
               Names.FILE_OR_DIR: "mounted read-only", Names.JOB: "mounted read-write",
               Names.MODEL: "mounted read-only; a model's name is passed on as it is",
               Names.OUTPUT_FILE: "a file's folder is mounted read-write",
               Names.NEW_JOB: "mounted read-write"}


# --- job directories -----------------------------------------------------------------------------

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
    options.add_launcher_options(p, detach=command == "train")
    paths = [o for o in (options.TRAIN if command == "train" else options.PREDICT) if o.names]
    notes = {o.flag: MOUNT_NOTES[o.names] for o in paths}
    if command == "train":
        notes["--config-file"] += "; a name with _gpu implies --gpu"
    options.add_options(p, paths, notes, required=False)  # a missing one: see plan_*
    return p


def gpu_reason(a: argparse.Namespace) -> str | None:
    """Why a run without --gpu/--cpu gets the GPU image, or None. A resumed job's config is
    its config.json (the name is lost): mixed_precision marks the GPU configs, so a GPU job
    does not silently resume on a CPU."""
    if a.gpu or a.cpu:
        return None
    config = getattr(a, "config_file", None)
    if getattr(a, "resume", None) is not None:
        config = a.resume / "config.json"
    return None if config is None else container.gpu_config_reason(config)


def _is_model_name(value: Path) -> bool:
    """A shipped model's name (e.g. `aesthetic`), which nima in the image resolves: one path
    part, no suffix, and nothing of that name here (an existing path always wins)."""
    return len(value.parts) == 1 and not value.suffix and not value.name.startswith(".")


def _mount(spec: RunSpec, option: Option, value: Path) -> str:
    """Check the host path `value` of `option` and mount it; returns the container's argument."""
    what = option.what
    if option.names is Names.FILE:
        return spec.mount(need_file(value, what))
    if option.names is Names.DIR:
        return spec.mount(need_dir(value, what))
    if option.names is Names.FILE_OR_DIR:
        return spec.mount(need_dir(value, what) if value.is_dir() else need_file(value, what))
    if option.names is Names.MODEL:
        if not value.exists():
            if _is_model_name(value):
                return str(value)
            raise LaunchError(f"{what} not found: {value}")
        # nima reads these beside a model file: its description, and the training config a
        # .weights.h5 file needs. Container paths mirror host paths, so they are found there.
        for name in ("metadata.json", "config.json"):
            if value.is_file() and (value.parent / name).is_file():
                spec.mount(value.parent / name)
        return spec.mount(value)
    if option.names is Names.OUTPUT_FILE:
        if value == Path("-"):
            return "-"  # stdout, streamed back by the launcher
        # Written atomically (temp file + rename) next to its final name: mount the folder.
        folder = need_dir(value.parent if str(value.parent) else Path("."),
                          f"{what.removesuffix(' file')} folder", writable=True)
        return str(PurePosixPath(spec.mount(folder, "rw")) / value.name)
    raise AssertionError(f"{option.flag}: {option.names} is mapped by its planner")


def _map_paths(spec: RunSpec, a: argparse.Namespace, opts: Sequence[Option]) -> None:
    """Mount what the options in `a` name (job dirs aside) and add them to spec.command."""
    for option in opts:
        if option.names in (None, Names.NEW_JOB, Names.JOB):
            continue
        for value in option.values(a):  # every one: a repeated --model makes an ensemble
            spec.command += [option.flag, _mount(spec, option, value)]


def plan_train(a: argparse.Namespace, rest: list[str]) -> tuple[RunSpec, Path]:
    """Check the inputs, choose the job dir, and map everything into the container.

    The caller creates the job dir (`make_job_dir(job)`) just before the container starts.
    """
    try:
        options.check_train(a)
    except UsageError as e:
        raise LaunchError(str(e)) from None
    spec = RunSpec(command=["train"])
    if a.resume:
        job = jobs.check_resumable(need_dir(a.resume, "job directory", writable=True),
                                   LaunchError)
        meta = jobs.read_record(job, LaunchError)
        image_dir = need_dir(a.image_dir or host_path(jobs.recorded_image_dir(job, meta,
                                                                              LaunchError)),
                             "image directory")
        spec.command += ["--resume", spec.mount(job, "rw"),
                         "--image-dir", spec.mount(image_dir)]
        # A job killed before its first epoch ended starts over from its initial model.
        init = host_path(meta["init_model"]) if meta.get("init_model") else None
        if init is not None and init.exists():
            spec.mount(init)
    else:
        _map_paths(spec, a, options.TRAIN)
        job = _check_new_job_dir(a.job_dir or new_job_dir())
        spec.command += ["--job-dir", spec.mount(job, "rw")]
    spec.command += rest
    spec.name = f"nima-train-{re.sub(r'[^A-Za-z0-9_.-]', '_', job.name)}-{secrets.token_hex(2)}"
    spec.labels = {"nima.command": "train", "nima.job-dir": os.path.abspath(job)}
    return spec, job


def plan_predict(a: argparse.Namespace, rest: list[str]) -> RunSpec:
    if a.image_source is None:
        raise LaunchError("predict needs --image-source (an image file or a folder)")
    spec = RunSpec(command=["predict"], labels={"nima.command": "predict"})
    _map_paths(spec, a, options.PREDICT)
    spec.command += rest
    return spec


def _refuse_busy_job(client: "container.docker.DockerClient", label: str, job: Path) -> None:
    """Two trainers in one job dir overwrite each other's checkpoints (e.g. --resume of a job
    that still runs detached): refuse while a container of this launcher writes to it."""
    try:
        busy = client.containers.list(filters={"label": f"nima.job-dir={label}"})
    except container.docker.errors.DockerException:
        return
    if busy:
        name, cli = busy[0].name, container.docker_cli()
        raise LaunchError(f"job directory {job} is still being written by container {name} "
                          f"(follow it: {cli} logs -f {name}; stop it: {cli} stop {name})")



# --- local fallback ------------------------------------------------------------------------------

def pip_install(python: Path, requirements: Sequence[str], prog: str,
                repo: Path = REPO) -> None:
    """pip install REQUIREMENTS with the tested versions of repo/constraints.txt; where those
    cannot be installed (another Python or platform), again without them, and say so."""
    cmd = [str(python), "-m", "pip", "install", "-q", *requirements]
    constraints = repo / "constraints.txt"
    if constraints.is_file():
        if subprocess.run([*cmd, "-c", str(constraints)]).returncode == 0:
            return
        print(f"{prog}: the tested versions of {constraints} do not install here; installing "
              "the newest versions pyproject.toml allows", file=sys.stderr)
    subprocess.run(cmd, check=True)


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
            pip_install(venv / "bin" / "python", ["-e", str(repo)], PROGS[command], repo)
        except (subprocess.CalledProcessError, OSError) as e:
            raise LaunchError(f"could not create {venv}: {one_line(e)}") from None
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
            pip_install(python, ["docker[ssh]>=7"], PROGS[command])
            (venv / ".ok").touch()
        except (subprocess.CalledProcessError, OSError) as e:
            raise LaunchError(f"could not install the docker SDK into {venv}: {one_line(e)}"
                              ) from None
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), NIMA_LAUNCH_BOOTSTRAPPED="1")
    os.execve(python, [str(python), "-m", "nima.launch", command, *argv], env)


def _engine_configured() -> bool:
    return bool(os.environ.get("DOCKER_HOST")) or Path("/var/run/docker.sock").exists()


# --- main ----------------------------------------------------------------------------------------

def _engine_or_local(command: str, a: argparse.Namespace,
                     argv: Sequence[str]) -> "container.docker.DockerClient":
    """A client for the Docker engine; without one (or with --local), exec `nima` locally."""
    prog = PROGS[command]
    # What `nima` itself gets when run locally: everything but the launcher's own options.
    own = {"--docker", "--local", *options.LAUNCHER_FLAGS}
    local_argv = [x for x in argv if x not in own]

    def local() -> NoReturn:
        if getattr(a, "detach", False):
            print(f"{prog}: --detach needs Docker: training runs in the foreground",
                  file=sys.stderr)
        run_local(command, local_argv)

    if a.local:
        local()
    if container.docker is None:
        if a.docker or _engine_configured():
            _bootstrap_sdk(command, list(argv))
        print(f"{prog}: no Docker engine (DOCKER_HOST unset, no /var/run/docker.sock): running "
              f"`nima {command}` locally", file=sys.stderr)
        local()
    try:
        return container.connect()
    except LaunchError as e:
        if a.docker:
            raise
        print(f"{prog}: {e}: running `nima {command}` locally", file=sys.stderr)
        local()


def launch(command: str, argv: Sequence[str]) -> int:
    prog = PROGS[command]
    a, rest = _parser(command).parse_known_args(argv)
    client = _engine_or_local(command, a, argv)
    spec, job = plan_train(a, rest) if command == "train" else (plan_predict(a, rest), None)
    reason = gpu_reason(a)
    gpu = a.gpu or reason is not None
    if reason:
        print(f"{prog}: {reason}: using the GPU image and all GPUs (--cpu to not)",
              file=sys.stderr)
    if job is not None:
        _refuse_busy_job(client, spec.labels["nima.job-dir"], job)
    tag = container.ensure_image(client, "gpu" if gpu else "cpu", rebuild=a.rebuild,
                                 say=lambda s: print(f"{prog}: {s}", file=sys.stderr))
    if job is not None:
        make_job_dir(job)
        print(f"{prog}: job directory {job} (container {spec.name}, image {tag})", file=sys.stderr)
    return _run(prog, client, tag, spec, job, gpu, detach=bool(getattr(a, "detach", False)))


def _run(prog: str, client: "container.docker.DockerClient", tag: str, spec: RunSpec,
         job: Path | None, gpu: bool, detach: bool) -> int:
    """Run the planned container; say what became of the job dir when it did not finish."""
    try:
        code, started = container.run_container(client, tag, spec, gpu=gpu, detach=detach)
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
        cli = container.docker_cli()
        print(f"training in container {started.name}; job directory {job}\n"
              f"  follow: {cli} logs -f {started.name}\n"
              f"  stop:   {cli} stop {started.name}   "
              f"(then ./train-local --resume {job})\n"
              f"  when it is done: {cli} rm {started.name}   "
              "(the stopped container keeps its log and its image until then)")
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
