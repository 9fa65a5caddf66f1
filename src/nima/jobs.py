"""Training job directories: naming and checking them, one trainer per job, what they record.

Everything `nima train` writes lands in a job directory:

    train_jobs/<timestamp>/
      config.json  samples.json  job.json   what was run, on what, with which versions
      skipped.txt                           label rows without a readable image
      checkpoint/epoch-NNNN.weights.h5, state.json   after every epoch: weights + optimizer,
                                            and the epoch, phase and history they belong to
      best.keras                            lowest val_loss so far (loss without validation)
      model.keras                           the model after the last epoch
      history.json  history.csv             one row per epoch, both phases
      history.png                           loss curves, refreshed every epoch
      summary.json                          counts, best epoch, training time
      logs/                                 TensorBoard
      .lock                                 held while a trainer runs: one trainer per job

The trainer (`nima.train`) and the Docker launcher (`nima.launch`, which checks a job
directory before it builds an image or starts a container) share these rules. So this module
imports only the standard library and `nima.files`: the launcher's host has no numpy.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from nima import files
from nima.errors import NimaError

if TYPE_CHECKING:
    from nima.config import Config

log = logging.getLogger(__name__)

CONFIG = "config.json"
SAMPLES = "samples.json"
RECORD = "job.json"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint"
STATE = "state.json"


# --- new and existing job directories -------------------------------------------------------

def new_path(root: Path = Path("train_jobs")) -> Path:
    """A free `root/<timestamp>` (`-2`, `-3`, ... when taken); not created."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    job, n = root / stamp, 1
    while job.exists():
        n += 1
        job = root / f"{stamp}-{n}"
    return job


def check_new(job: Path, error: type[NimaError] = NimaError) -> Path:
    """A new job goes into a missing or empty folder; the rest is a job to resume."""
    if job.exists() and not job.is_dir():
        raise error(f"job directory is a file: {job}")
    if job.exists() and any(job.iterdir()):
        raise error(f"job directory is not empty: {job} (use --resume to continue it)")
    return job


def create(job: Path, error: type[NimaError] = NimaError) -> Path:
    try:
        job.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"cannot create job directory {job}: {e.strerror or e}") from None
    return job


def new(job_dir: str | Path | None) -> Path:
    """The given folder (missing or empty) or a new train_jobs/<timestamp>, created."""
    return create(check_new(Path(job_dir)) if job_dir is not None else new_path())


def check_resumable(job: Path, error: type[NimaError] = NimaError) -> Path:
    if not (job / CONFIG).is_file() or not (job / RECORD).is_file():
        raise error(f"not a training job directory (no {CONFIG}/{RECORD}): {job}")
    return job


def read_record(job: Path, error: type[NimaError] = NimaError) -> dict:
    """job.json: the samples file, image_dir and init_model a job was started with."""
    record = files.read_json(job / RECORD, "job file", 1 << 20, error)
    return record if isinstance(record, dict) else {}


def recorded_image_dir(job: Path, record: dict, error: type[NimaError] = NimaError) -> str:
    recorded = record.get("image_dir")
    if not isinstance(recorded, str):
        raise error(f"{job / RECORD} records no image_dir: give --image-dir")
    return recorded


def write_start(job: Path, config: Config, samples_json: str, record: dict) -> None:
    """What a new job is: its config, its samples and job.json."""
    config.save(job / CONFIG)
    files.write_text(job / SAMPLES, samples_json)
    files.write_json(job / RECORD, record)


def write_summary(job: Path, summary: dict) -> None:
    files.write_json(job / SUMMARY, summary)


# --- the checkpoint: what --resume continues from --------------------------------------------

@dataclass(frozen=True)
class Progress:
    """How far a job got: the last completed epoch's state.json, or None before the first."""

    state: dict | None

    @classmethod
    def read(cls, job: Path, phase_names: list[str]) -> "Progress":
        path = job / CHECKPOINT / STATE
        if not path.is_file():
            return cls(None)
        state = files.read_json(path, "checkpoint state", 1 << 30, NimaError)
        if not (isinstance(state, dict) and isinstance(state.get("epoch"), int)
                and state.get("phase") in phase_names and isinstance(state.get("history"), list)):
            raise NimaError(f"{path} is not a checkpoint state written by nima train")
        return cls(state)

    def finished(self, job: Path, total_epochs: int) -> bool:
        return (self.state is not None and self.state["epoch"] >= total_epochs
                and (job / SUMMARY).is_file())

    def weights(self, job: Path) -> Path:  # only when there is a state
        """The weights file state.json names (jobs of older versions kept one fixed name)."""
        return job / CHECKPOINT / self.state.get("weights", "last.weights.h5")


def save_epoch(job: Path, model: Any, state: dict) -> None:
    """The resumable checkpoint of the epoch `state` describes, `model` (a Keras model) with
    its optimizer.

    Each epoch's weights go to a new file and state.json, written last, names it: a kill at
    any instant leaves a state.json whose weights, epoch and history belong together (a kill
    between the two writes must not pair epoch N's state with epoch N+1's weights, or the
    resumed job would train one epoch twice). Older weights are deleted only after that.
    """
    ckpt = job / CHECKPOINT
    ckpt.mkdir(exist_ok=True)
    weights = f"epoch-{state['epoch']:04d}.weights.h5"
    files.save_keras(model, ckpt / weights, weights_only=True)
    files.write_json(ckpt / STATE, {**state, "weights": weights})
    for old in ckpt.glob("*.weights.h5"):
        if old.name != weights:
            old.unlink(missing_ok=True)


def write_history(job: Path, rows: list[dict]) -> None:
    """history.json and history.csv: one row per epoch."""
    files.write_json(job / "history.json", rows)
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(job / "history.csv", out.getvalue())


# --- who writes: one trainer per job, workers in scratch folders ----------------------------

def worker_dir(task: dict) -> Path:
    """Where a non-chief worker writes its (identical, unwanted) copy of the job files.

    Keras saves through every worker, so each needs somewhere to write: a temporary folder,
    removed at the end, or $NIMA_WORKER_DIR, kept (to check a worker against the chief).
    """
    keep = os.environ.get("NIMA_WORKER_DIR")
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix=f"nima-{task.get('type')}{task.get('index')}-"))
    log.info("not the chief (%s %s): job files go to %s", task.get("type"), task.get("index"),
             path)
    return path


@contextlib.contextmanager
def holding(job: Path, chief: bool) -> Iterator[None]:
    """While training: the chief holds a lock on its job dir, so a second trainer of the same
    job (a `--resume` while it still runs, locally or in a container: bind mounts share the
    lock) is refused instead of rotating checkpoints under the first. A non-chief worker's
    scratch dir is removed at the end."""
    if not chief:
        try:
            yield
        finally:
            if not os.environ.get("NIMA_WORKER_DIR"):
                shutil.rmtree(job, ignore_errors=True)
        return
    fd = os.open(job / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise NimaError(f"job directory {job} is being trained by another process (wait for "
                        "it to end, or stop it first)") from None
    try:
        yield
    finally:
        os.close(fd)
