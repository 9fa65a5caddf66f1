"""The two-phase NIMA trainer. Reads top to bottom: data, model, phase 1, phase 2, results.

Phase 1 ("dense") trains the head with the base frozen; phase 2 ("all") fine-tunes every
layer at a lower learning rate. Everything lands in a job directory:

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

`nima train --resume JOB_DIR` continues a killed job from its last completed epoch, in the
right phase, with the optimizer state it had.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from nima import files, images, labels, pipeline, plots
from nima.config import Config
from nima.errors import DataError, ImageError, ModelError, NimaError
from nima.model import EMDLoss, build_model, set_base_trainable
from nima.scores import N_BINS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    name: str
    train_base: bool
    learning_rate: float
    decay: float
    start: int  # first epoch (0-based, global across phases)
    end: int  # one past the last epoch


def phases(cfg: Config) -> list[Phase]:
    e1, e2 = cfg.epochs_train_dense, cfg.epochs_train_all
    return [
        Phase("dense", False, cfg.learning_rate_dense, cfg.decay_dense, 0, e1),
        Phase("all", True, cfg.learning_rate_all, cfg.decay_all, e1, e1 + e2),
    ]


def train(
    config: Config,
    samples_file: str | Path,
    image_dir: str | Path,
    job_dir: str | Path | None = None,
    init_model: str | Path | None = None,
) -> Path:
    """Train a new model; returns the job directory (a worker's scratch dir on non-chiefs).

    `init_model` starts from a trained NIMA model's weights instead of the config's
    `base_weights`: a `.keras` model, a job or model directory, or Keras 2 `.hdf5` weights.
    """
    samples = labels.load_samples(samples_file)
    image_dir = Path(image_dir).resolve()
    if not image_dir.is_dir():  # before a job dir is made for nothing
        raise DataError(f"image directory not found (or not a directory): {image_dir}")
    if init_model is not None:
        init_model = _init_model_file(init_model)
    job = new_job_dir(job_dir) if is_chief() else worker_dir()
    log.info("job directory: %s", job)
    config.save(job / "config.json")
    files.write_text(job / "samples.json", labels.samples_to_json(samples))
    files.write_json(job / "job.json", {
        "samples_file": str(Path(samples_file).resolve()),
        "image_dir": str(image_dir),
        "init_model": str(init_model) if init_model else None,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    })
    with _holding(job):
        return _run(config, samples, image_dir, job, state=None, source=job,
                    init_model=init_model)


def resume(job_dir: str | Path, image_dir: str | Path | None = None) -> Path:
    """Continue a job from its last completed epoch.

    In multi-worker training every worker reads JOB_DIR (a shared or copied folder); only the
    chief writes to it.
    """
    source = Path(job_dir)
    if not (source / "config.json").is_file():
        raise NimaError(f"not a training job directory (no config.json): {source}")
    config = Config.load(source / "config.json")
    samples = labels.load_samples(source / "samples.json")
    meta = labels.read_json_file(source / "job.json", "job file", 1 << 20, NimaError)
    recorded = meta.get("image_dir") if isinstance(meta, dict) else None
    if not (image_dir or isinstance(recorded, str)):
        raise NimaError(f"{source / 'job.json'} records no image_dir: give --image-dir")
    image_dir = Path(image_dir or recorded)
    state_file = source / "checkpoint" / "state.json"
    state = (labels.read_json_file(state_file, "checkpoint state", 1 << 30, NimaError)
             if state_file.is_file() else None)
    if state is not None and not (isinstance(state, dict)
                                  and isinstance(state.get("epoch"), int)
                                  and state.get("phase") in [p.name for p in phases(config)]
                                  and isinstance(state.get("history"), list)):
        raise NimaError(f"{state_file} is not a checkpoint state written by nima train")
    total = phases(config)[-1].end
    if state is not None and state["epoch"] >= total and (source / "summary.json").is_file():
        log.info("%s finished all %d epochs already: nothing to resume", source, total)
        return source
    if state is None:
        log.info("no completed epoch in %s: starting from the beginning", source)
    else:
        log.info("resuming %s after epoch %d (phase %s)", source, state["epoch"], state["phase"])
    job = source if is_chief() else worker_dir()
    # Killed before its first epoch ended, the job starts over from its initial weights.
    init_model = meta.get("init_model") if state is None else None
    with _holding(job):
        return _run(config, samples, image_dir, job, state=state, source=source,
                    init_model=init_model)


def _run(config: Config, samples: list[labels.Sample], image_dir: Path, job: Path,
         state: dict | None, source: Path, init_model: str | Path | None = None) -> Path:
    """Train into `job`; a resumed run loads its checkpoint from `source`."""
    t0 = time.monotonic()
    # First, before any other TensorFlow op: MultiWorkerMirroredStrategy must configure the
    # runtime's collectives before the eager context starts.
    strategy = make_strategy(config.distribution)

    # --- model, under the distribution strategy --------------------------------------------
    # Built before the data: a failed ImageNet download or a wrong --init-model shows at once,
    # not after minutes of probing a large image folder.
    previous_policy = keras.mixed_precision.global_policy()
    if config.mixed_precision and not tf.config.list_logical_devices("GPU"):
        log.warning("mixed_precision is on but no GPU is visible: float16 on a CPU is slower "
                    "than float32 (set \"mixed_precision\": false, as the *_cpu configs do)")
    if config.mixed_precision:
        # float16 compute, float32 variables; the softmax and the loss stay float32 (model.py,
        # EMDLoss) and compile() wraps the optimizer in a LossScaleOptimizer.
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            model = build_model(config.replace(base_weights=None) if init_model else config)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if init_model:
        copy_weights(init_model, config, model)
    model.summary(print_fn=lambda line, **_: log.debug(line))

    # --- data: pair labels with images, drop what cannot be read, split -------------------
    found, missing = labels.find_images(samples, image_dir)
    unreadable = probe_images([p for _, p in found])
    found = [(s, p) for s, p in found if str(p) not in unreadable]
    skipped = [f"{i}\tmissing" for i in missing] + [f"{p}\t{why}" for p, why in unreadable.items()]
    files.write_text(job / "skipped.txt", "".join(line + "\n" for line in skipped))
    labels.check_missing(len(samples), missing + sorted(unreadable), config.max_missing_fraction,
                         "have no readable image")
    if not found:
        raise DataError(f"no readable images for the samples in {image_dir}")
    train_set, val_set = labels.split(found, config.validation_fraction, config.seed)
    log.info("%d training and %d validation images", len(train_set), len(val_set))

    # --- input pipelines, sharded by worker and batched per replica -----------------------
    # batch_size is per replica: N replicas step on N x batch_size images at once.
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    inputs = distributed_datasets(strategy, config, train_set, val_set, global_batch)

    # --- the two phases --------------------------------------------------------------------
    # Images per epoch over all replicas: fit() steps through `steps` global batches, or
    # through one pass of the training set when it is not told the steps.
    per_epoch = len(train_set) if inputs.steps is None else inputs.steps * global_batch
    recorder = EpochRecorder(job, state, images_per_epoch=per_epoch)
    all_phases = phases(config)
    restore_index = [p.name for p in all_phases].index(state["phase"]) if state else -1
    for index, phase in enumerate(all_phases):
        if phase.start == phase.end or index < restore_index:
            continue
        with strategy.scope():
            set_base_trainable(model, phase.train_base)
            schedule = keras.optimizers.schedules.InverseTimeDecay(
                phase.learning_rate, decay_steps=1, decay_rate=phase.decay)
            model.compile(optimizer=keras.optimizers.Adam(schedule),
                          loss=EMDLoss(config.emd_r))
            first_epoch = phase.start
            if index == restore_index:
                # Build the optimizer's slots first so its saved state loads too.
                model.optimizer.build(model.trainable_variables)
                weights = source / "checkpoint" / state.get("weights", "last.weights.h5")
                try:
                    model.load_weights(weights)
                except (OSError, ValueError) as e:  # missing, truncated, another model's
                    raise NimaError(f"cannot resume from {weights}: "
                                    f"{str(e).splitlines()[0][:200]}") from None
                first_epoch = state["epoch"]
        if first_epoch >= phase.end:
            continue
        log.info("phase %s: epochs %d-%d, base %s, lr %g, decay %g", phase.name,
                 first_epoch + 1, phase.end, "trainable" if phase.train_base else "frozen",
                 phase.learning_rate, phase.decay)
        recorder.phase = phase.name
        model.fit(
            inputs.train, validation_data=inputs.validation, initial_epoch=first_epoch,
            epochs=phase.end, steps_per_epoch=inputs.steps,
            validation_steps=inputs.validation_steps,
            shuffle=False,  # the dataset reshuffles itself every epoch
            verbose=1 if sys.stdout.isatty() else 2,
            callbacks=[SyncMovingStatistics(strategy), recorder, keras.callbacks.TensorBoard(
                log_dir=str(job / "logs"), write_graph=False, profile_batch=0)])

    # --- results ---------------------------------------------------------------------------
    files.save_keras(model, job / "model.keras")
    seconds = time.monotonic() - t0 + (state or {}).get("seconds", 0.0)
    summary = {
        "n_samples": len(samples), "n_skipped": len(skipped), "n_train": len(train_set),
        "n_validation": len(val_set), "epochs": recorder.epochs_done,
        "best_epoch": recorder.best_epoch, "best_" + recorder.monitor: recorder.best,
        "training_seconds": round(seconds, 1),
        "replicas": strategy.num_replicas_in_sync, "global_batch_size": global_batch,
        "train_images_per_second": throughput(recorder.rows),
    }
    files.write_json(job / "summary.json", summary)
    _barrier(strategy)
    log.info("done in %.0f s: best %s %.4f at epoch %s; model in %s", seconds, recorder.monitor,
             recorder.best, recorder.best_epoch, job)
    return job


def _init_model_file(source: str | Path) -> Path:
    from nima import resolve

    path = resolve.model_file(source)[0].resolve()  # a name, job or model dir -> a file
    if path.name.endswith(".weights.h5"):
        raise ModelError(f"--init-model takes a .keras model, a job or model directory, or "
                         f"Keras 2 .hdf5 weights, not a .weights.h5 file: {path}")
    return path


def copy_weights(source: str | Path, config: Config, model: keras.Model) -> None:
    """Start `model` from the weights of the NIMA model in `source` (same base model)."""
    from nima import legacy
    from nima.model import load_model, model_resize

    source = Path(source)
    if source.suffix == ".keras":
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")
        try:
            init = load_model(source)
        finally:
            keras.mixed_precision.set_global_policy(previous)
    elif legacy.is_keras2_weights(source):
        init = legacy.load_keras2_weights(source, config)
    else:
        raise ModelError(f"--init-model {source}: not a .keras model nor Keras 2 HDF5 weights")
    theirs_resize = "nearest" if source.suffix != ".keras" else model_resize(init)
    if theirs_resize != config.resize_method:
        log.warning("--init-model %s was trained on %s-resized images, this config resizes "
                    "with %s (set \"resize_method\": \"%s\" to keep what it learned on)",
                    source, theirs_resize, config.resize_method, theirs_resize)
    ours, theirs = model.weights, init.weights
    mismatch = next(((a.path, tuple(a.shape), tuple(b.shape)) for a, b in zip(ours, theirs)
                     if tuple(a.shape) != tuple(b.shape)), None)
    if len(ours) != len(theirs) or mismatch:
        why = (f"{mismatch[0]} is {mismatch[1]} here, {mismatch[2]} there" if mismatch
               else f"{len(ours)} weight arrays here, {len(theirs)} there")
        raise ModelError(f"--init-model {source} does not fit the config's "
                         f"{config.base_model_name} {config.base_model_args or ''}: {why}")
    for ours_var, value in zip(ours, init.get_weights()):
        ours_var.assign(value)
    log.info("initial weights from %s", source)


class EpochRecorder(keras.callbacks.Callback):
    """After every epoch: history files, best model, and the resumable checkpoint.

    Files are replaced atomically. Each epoch's weights go to a new file and state.json,
    written last, names it: a kill at any instant leaves a state.json whose weights, epoch
    and history belong together (a kill between the two writes must not pair epoch N's
    state with epoch N+1's weights, or the resumed job would train one epoch twice).
    """

    def __init__(self, job: Path, state: dict | None, images_per_epoch: int = 0):
        super().__init__()
        self.job = job
        self.phase = ""
        self.images_per_epoch = images_per_epoch
        self.t_epoch = self.t_train_end = 0.0
        self.rows: list[dict] = list((state or {}).get("history", []))
        self.best = (state or {}).get("best", float("inf"))
        self.best_epoch = (state or {}).get("best_epoch")
        self.monitor = (state or {}).get("monitor", "val_loss")
        self.epochs_done = (state or {}).get("epoch", 0)
        self.t_start = time.monotonic() - (state or {}).get("seconds", 0.0)

    def on_epoch_begin(self, epoch, logs=None):
        self.t_epoch, self.t_train_end = time.monotonic(), 0.0

    def on_test_begin(self, logs=None):
        # Validation runs inside the epoch: the training steps end where it begins.
        self.t_train_end = self.t_train_end or time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        train_seconds = max((self.t_train_end or now) - self.t_epoch, 1e-6)
        logs = dict(logs or {})
        if "val_loss" not in logs:
            self.monitor = "loss"
        lr = self.model.optimizer.learning_rate
        row = {"epoch": epoch + 1, "phase": self.phase,
               **{k: float(v) for k, v in logs.items() if np.isscalar(v) or np.ndim(v) == 0},
               "learning_rate": float(lr.numpy() if hasattr(lr, "numpy") else lr),
               # Timings are this process's own (workers differ); the first epoch of a run
               # includes tracing and compilation.
               "seconds": round(now - self.t_epoch, 3),
               "train_seconds": round(train_seconds, 3),
               "train_images_per_second": round(self.images_per_epoch / train_seconds, 2)}
        self.rows.append(row)
        self.epochs_done = epoch + 1
        value = row.get(self.monitor, float("inf"))
        improved = value < self.best
        if improved:
            self.best, self.best_epoch = float(value), epoch + 1
            files.save_keras(self.model, self.job / "best.keras")
        ckpt = self.job / "checkpoint"
        ckpt.mkdir(exist_ok=True)
        weights = f"epoch-{epoch + 1:04d}.weights.h5"
        files.save_keras(self.model, ckpt / weights, weights_only=True)
        files.write_json(ckpt / "state.json", {
            "epoch": epoch + 1, "phase": self.phase, "weights": weights, "monitor": self.monitor,
            "best": self.best, "best_epoch": self.best_epoch,
            "seconds": time.monotonic() - self.t_start, "history": self.rows})
        for old in ckpt.glob("*.weights.h5"):  # only now are older checkpoints unneeded
            if old.name != weights:
                old.unlink(missing_ok=True)
        files.write_json(self.job / "history.json", self.rows)
        files.write_text(self.job / "history.csv", _csv(self.rows))
        plots.write_history_plot(self.job / "history.png", self.rows)  # never raises


def throughput(rows: list[dict]) -> dict[str, float]:
    """Training images per second of each phase: the median over its epochs, leaving out the
    first epoch of a phase when there are more (it includes tracing and compilation)."""
    result = {}
    for name in dict.fromkeys(r["phase"] for r in rows):
        rates = [r["train_images_per_second"] for r in rows
                 if r["phase"] == name and "train_images_per_second" in r]
        if rates:
            result[name] = float(np.median(rates[1:] if len(rates) > 1 else rates))
    return result


def _csv(rows: list[dict]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def probe_images(paths: list[Path], workers: int = 8) -> dict[str, str]:
    """Check every image in parallel; return {path: reason} for the bad ones.

    A full decode at a small size (JPEG at 1/8 scale), so truncated and corrupt files are
    listed in skipped.txt and counted against max_missing_fraction before the first epoch.
    """
    def probe(path: Path) -> str | None:
        try:
            images.check_image(path)
            return None
        except ImageError as e:
            return str(e)

    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(probe, paths, chunksize=64)
        return {str(p): why for p, why in zip(paths, results) if why}


def new_job_dir(job_dir: str | Path | None) -> Path:
    if job_dir is not None:
        job = Path(job_dir)
        if job.exists() and not job.is_dir():
            raise NimaError(f"job directory is a file: {job}")
        if job.exists() and any(job.iterdir()):
            raise NimaError(f"job directory is not empty: {job} (use --resume to continue it)")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        job = Path("train_jobs") / stamp
        n = 1
        while job.exists():
            n += 1
            job = Path("train_jobs") / f"{stamp}-{n}"
    try:
        job.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NimaError(f"cannot create job directory {job}: {e.strerror or e}") from None
    return job


# --- distribution -----------------------------------------------------------------------------
#
# One code path for every strategy: `distribute_datasets_from_function` calls the dataset
# function once per input pipeline (one per worker), which takes its own slice of the file list
# *before* decoding (tf.data's auto-sharding of a from_tensor_slices dataset falls back to the
# DATA policy: every worker decodes every image and throws most away) and batches it per
# replica. With more than one replica, every replica needs a full batch at every step (the
# empty batches tf.distribute pads with crash BatchNormalization, and Keras averages the first
# batches of all replicas to build the model), and Keras counts per-replica batches as steps.
# So workers get equally long slices streamed as endless full batches, and fit() is told the
# steps per epoch; validation slices are topped up to whole steps with repeated images.

@dataclass(frozen=True)
class Inputs:
    train: object  # a tf.data.Dataset or a distributed dataset
    validation: object | None
    steps: int | None  # None: one pass over a finite dataset
    validation_steps: int | None


def distributed_datasets(strategy: tf.distribute.Strategy, config: Config,
                         train_set: list, val_set: list, global_batch: int) -> Inputs:
    """Training and validation inputs, sharded by worker, batched per replica."""
    size = config.model_input_size
    replicas = strategy.num_replicas_in_sync
    batch = config.batch_size
    # Every worker has the same number of replicas (tf.distribute requires it).
    workers = max(1, len(_tf_config().get("cluster", {}).get("worker", []))
                  + len(_tf_config().get("cluster", {}).get("chief", [])))
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        workers = 1
    worker_step = batch * (replicas // workers)  # images one worker consumes per step
    steps = (len(train_set) // workers) // worker_step
    if replicas > 1 and steps == 0:
        raise DataError(f"{len(train_set)} training images do not fill one step of {replicas} "
                        f"replicas x batch_size {batch}: lower batch_size")
    val_steps = -(-len(shard(val_set, workers, 0, equal=False)) // worker_step)

    def train_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        part = shard(train_set, ctx.num_input_pipelines, ctx.input_pipeline_id, equal=True)
        ds = pipeline.train_dataset(
            [p for _, p in part], np.stack([s.label for s, _ in part]),
            input_size=size, resize_size=config.resize_size, resize_method=config.resize_method,
            batch_size=ctx.get_per_replica_batch_size(global_batch),
            random_crop=config.random_crop, horizontal_flip=config.horizontal_flip,
            # Each worker shuffles and augments its own slice differently.
            seed=config.seed + ctx.input_pipeline_id)
        if replicas == 1:
            return ds  # one pass per epoch, last batch smaller
        # Reshuffled pass after pass, cut into full batches: no image is always the one left
        # over, and epochs are `steps` long.
        return ds.unbatch().repeat().batch(batch, drop_remainder=True).prefetch(2)

    def val_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        part = shard(val_set, ctx.num_input_pipelines, ctx.input_pipeline_id, equal=False)
        if replicas > 1:
            part = part or val_set  # fewer images than workers
            part = [part[i % len(part)] for i in range(val_steps * worker_step)]
        ds = pipeline.eval_dataset(
            [p for _, p in part], np.stack([s.label for s, _ in part]),
            input_size=size, resize_method=config.resize_method,
            batch_size=ctx.get_per_replica_batch_size(global_batch), weighted=True)
        # fit() keeps one validation iterator for all epochs: each epoch takes one pass.
        return ds if replicas == 1 else ds.repeat()

    return Inputs(
        strategy.distribute_datasets_from_function(train_fn),
        strategy.distribute_datasets_from_function(val_fn) if val_set else None,
        steps if replicas > 1 else None,
        val_steps if replicas > 1 and val_set else None)


def shard(items: list, n: int, index: int, equal: bool) -> list:
    """Every n-th item from `index`; with `equal`, cut so all n shards have the same length."""
    part = items[index::n]
    return part[:len(items) // n] if equal else part


def _tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError:
        raise NimaError("TF_CONFIG is not valid JSON") from None


def is_chief() -> bool:
    """Only the chief writes job files in multi-worker training (worker 0 when no chief)."""
    config = _tf_config()
    task, cluster = config.get("task", {}), config.get("cluster", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index") == 0 and "chief" not in cluster


def worker_dir() -> Path:
    """Where a non-chief worker writes its (identical, unwanted) copy of the job files.

    Keras saves through every worker, so each needs somewhere to write: a temporary folder,
    removed at the end, or $NIMA_WORKER_DIR, kept (to check a worker against the chief).
    """
    task = _tf_config().get("task", {})
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
def _holding(job: Path):
    """While training: the chief holds a lock on its job dir, so a second trainer of the same
    job (a `--resume` while it still runs, locally or in a container: bind mounts share the
    lock) is refused instead of rotating checkpoints under the first. A non-chief worker's
    scratch dir is removed at the end."""
    if not is_chief():
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


def make_strategy(name: str) -> tf.distribute.Strategy:
    """"auto": multi-worker when TF_CONFIG names several workers, mirrored with >1 GPU, else none.

    "mirrored" replicates over all local GPUs, or over all logical CPU devices on a machine
    without GPUs (one unless configured otherwise). "multi_worker" needs TF_CONFIG on every
    worker; each replicates over its own GPUs.
    """
    cluster = _tf_config().get("cluster", {})
    n_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    if name == "auto":
        # Checked before listing devices: that would start the runtime MultiWorkerMirrored-
        # Strategy has to configure first.
        if n_workers > 1:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "none"
    if name == "multi_worker":
        if n_workers < 1:
            log.warning("distribution multi_worker without TF_CONFIG: training on this host only")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _reduce_nested(strategy)
    elif name == "mirrored":
        devices = (tf.config.list_logical_devices("GPU")
                   or tf.config.list_logical_devices("CPU"))
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    else:
        strategy = tf.distribute.get_strategy()
    log.info("distribution: %s, %d replica(s)", name, strategy.num_replicas_in_sync)
    return strategy


class SyncMovingStatistics(keras.callbacks.Callback):
    """Average BatchNormalization's moving mean and variance over all replicas.

    Keras 3 updates them replica by replica (aggregation "none"), so with more than one
    replica every copy drifts with its own batches, and the chief would save and validate with
    its own. Each epoch starts from one value and the moving averages are linear, so averaging
    before validation and at the end of each epoch gives what syncing every step would.
    """

    def __init__(self, strategy: tf.distribute.Strategy):
        super().__init__()
        self.strategy = strategy
        self._sync = None

    def _run(self) -> None:
        if self.strategy.num_replicas_in_sync == 1:
            return
        if self._sync is None:
            stats = [v for v in self.model.variables
                     if v.path.endswith(("/moving_mean", "/moving_variance"))]

            def average():
                return tf.distribute.get_replica_context().all_reduce(
                    "MEAN", [tf.identity(v.value) for v in stats])

            def sync():
                # Assigned outside the replica context: the value is the same everywhere, and
                # an in-replica assign to these variables fails under the multi-worker strategy.
                for v, mean in zip(stats, self.strategy.run(average)):
                    v.assign(self.strategy.experimental_local_results(mean)[0])

            self._sync = tf.function(sync, autograph=False)
        self._sync()

    def on_test_begin(self, logs=None):
        self._run()

    def on_epoch_end(self, epoch, logs=None):
        self._run()


def _barrier(strategy: tf.distribute.Strategy) -> None:
    """Wait until every worker gets here: one that exits while another still saves its files
    stops sending heartbeats, and TensorFlow aborts the others' collectives."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        def one():
            return tf.constant(1.0)

        strategy.reduce("SUM", tf.function(lambda: strategy.run(one), autograph=False)(),
                        axis=None)


def _reduce_nested(strategy: tf.distribute.Strategy) -> None:
    """Make MultiWorkerMirroredStrategy.reduce take what Keras 3 (3.15) hands it.

    With more than one worker, Keras calls `strategy.reduce` (1) on the first batch, an
    (x, y, weight) tuple, to build the model, and (2) with axis=0 on each scalar metric after
    every step. MirroredStrategy accepts both; the multi-worker strategy fails with "Attempt to
    convert a value (PerReplica ...)" and "Invalid reduction dimension 0 for input with 0
    dimensions". Reducing leaf by leaf, scalars across replicas only, is what Keras means.
    """
    reduce = strategy.reduce

    def reduce_each(reduce_op, value, axis=None):
        def one(v):
            scalar = strategy.experimental_local_results(v)[0].shape.rank == 0
            return reduce(reduce_op, v, axis=None if scalar else axis)

        return tf.nest.map_structure(one, value)

    strategy.reduce = reduce_each
