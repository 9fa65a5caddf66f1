"""The two-phase NIMA trainer. Reads top to bottom: data, model, phase 1, phase 2, results.

Phase 1 ("dense") trains the head with the base frozen; phase 2 ("all") fine-tunes every
layer at a lower learning rate. Everything lands in a job directory (`nima.jobs` has its
layout and bookkeeping); `nima.distribute` spreads the work over devices and machines, on
the running Keras backend (TensorFlow by default; JAX and PyTorch too, `nima.kerasbackend`).

`nima train --resume JOB_DIR` continues a killed job from its last completed epoch, in the
right phase, with the optimizer state it had.
"""

from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np

from nima import distribute, files, images, jobs, kerasbackend, labels, plots
from nima.config import Config
from nima.distribute import is_chief, task
from nima.errors import DataError, ImageError, ModelError, NimaError
from nima.model import EMDLoss, build_model, set_base_trainable

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
    job = jobs.new(job_dir) if is_chief() else jobs.worker_dir(task())
    log.info("job directory: %s", job)
    jobs.write_start(job, config, labels.samples_to_json(samples), {
        "samples_file": str(Path(samples_file).resolve()),
        "image_dir": str(image_dir),
        "init_model": str(init_model) if init_model else None,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": kerasbackend.versions(),
    })
    with jobs.holding(job, is_chief()):
        return _run(config, samples, image_dir, job, jobs.Progress(None), source=job,
                    init_model=init_model)


def resume(job_dir: str | Path, image_dir: str | Path | None = None) -> Path:
    """Continue a job from its last completed epoch.

    In multi-worker training every worker reads JOB_DIR (a shared or copied folder); only the
    chief writes to it.
    """
    source = jobs.check_resumable(Path(job_dir))
    config = Config.load(source / jobs.CONFIG)
    samples = labels.load_samples(source / jobs.SAMPLES)
    record = jobs.read_record(source)
    image_dir = Path(image_dir or jobs.recorded_image_dir(source, record))
    progress = jobs.Progress.read(source, [p.name for p in phases(config)])
    state = progress.state
    total = phases(config)[-1].end
    if progress.finished(source, total):
        log.info("%s finished all %d epochs already: nothing to resume", source, total)
        return source
    if state is None:
        log.info("no completed epoch in %s: starting from the beginning", source)
    else:
        log.info("resuming %s after epoch %d (phase %s)", source, state["epoch"], state["phase"])
    job = source if is_chief() else jobs.worker_dir(task())
    # Killed before its first epoch ended, the job starts over from its initial weights.
    init_model = record.get("init_model") if state is None else None
    with jobs.holding(job, is_chief()):
        return _run(config, samples, image_dir, job, progress, source=source,
                    init_model=init_model)


def _run(config: Config, samples: list[labels.Sample], image_dir: Path, job: Path,
         progress: jobs.Progress, source: Path, init_model: str | Path | None = None) -> Path:
    """Train into `job`; a resumed run loads its checkpoint from `source`."""
    t0 = time.monotonic()
    state = progress.state
    # First, before any other TensorFlow op: MultiWorkerMirroredStrategy must configure the
    # runtime's collectives before the eager context starts.
    dist = distribution(config.distribution)

    # Built before the data: a failed ImageNet download or a wrong --init-model shows at once,
    # not after minutes of probing a large image folder.
    # A resumed job's weights all come from its checkpoint, so its base_weights file need not
    # exist any more (another machine, a Docker mount, a fresh clone of the config's build/).
    model = _build_model(config.replace(base_weights=None) if state else config, dist,
                         init_model)

    found, skipped = usable_images(samples, image_dir, job, config.max_missing_fraction)
    train_set, val_set = labels.split(found, config.validation_fraction, config.seed)
    log.info("%d training and %d validation images", len(train_set), len(val_set))

    # --- input pipelines, sharded by worker and batched per replica -----------------------
    # batch_size is per replica: N replicas step on N x batch_size images at once.
    global_batch = config.batch_size * dist.replicas
    inputs = dist.inputs(config, train_set, val_set)

    # --- the two phases --------------------------------------------------------------------
    # Images per epoch over all replicas: fit() steps through `steps` global batches, or
    # through one pass of the training set when it is not told the steps.
    per_epoch = len(train_set) if inputs.steps is None else inputs.steps * global_batch
    recorder = EpochRecorder(job, state, images_per_epoch=per_epoch)
    all_phases = phases(config)
    callbacks = [*dist.callbacks(), recorder, *tensorboard(job)]
    restore_index = [p.name for p in all_phases].index(state["phase"]) if state else -1
    for index, phase in enumerate(all_phases):
        if phase.start == phase.end or index < restore_index:
            continue
        with dist.scope():
            set_base_trainable(model, phase.train_base)
            schedule = keras.optimizers.schedules.InverseTimeDecay(
                phase.learning_rate, decay_steps=1, decay_rate=phase.decay)
            model.compile(optimizer=keras.optimizers.Adam(schedule),
                          loss=EMDLoss(config.emd_r))
            first_epoch = phase.start
            if index == restore_index:
                _restore(model, progress.weights(source))
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
            callbacks=callbacks)

    # --- results ---------------------------------------------------------------------------
    files.save_keras(model, job / "model.keras")
    seconds = time.monotonic() - t0 + (state or {}).get("seconds", 0.0)
    summary = {
        "n_samples": len(samples), "n_skipped": len(skipped), "n_train": len(train_set),
        "n_validation": len(val_set), "epochs": recorder.epochs_done,
        "best_epoch": recorder.best_epoch, "best_" + recorder.monitor: recorder.best,
        "training_seconds": round(seconds, 1),
        "replicas": dist.replicas, "global_batch_size": global_batch,
        "train_images_per_second": throughput(recorder.rows),
    }
    jobs.write_summary(job, summary)
    dist.barrier()
    log.info("done in %.0f s: best %s %.4f at epoch %s; model in %s", seconds, recorder.monitor,
             recorder.best, recorder.best_epoch, job)
    return job


def distribution(name: str) -> distribute.Distribution:
    """tf.distribute under TensorFlow, keras.distribution under JAX or PyTorch."""
    if kerasbackend.is_tensorflow():
        from nima.tfdistribute import TFDistribution

        return TFDistribution(name)
    return distribute.KerasDistribution(name)


def _build_model(config: Config, dist: distribute.Distribution,
                 init_model: str | Path | None) -> keras.Model:
    """The model under the distribution, from `init_model`'s weights if given."""
    previous_policy = keras.mixed_precision.global_policy()
    if config.mixed_precision and not kerasbackend.has_gpu():
        log.warning("mixed_precision is on but no GPU is visible: float16 on a CPU is slower "
                    "than float32 (set \"mixed_precision\": false, as the *_cpu configs do)")
    if config.mixed_precision:
        # float16 compute, float32 variables; the softmax and the loss stay float32 (model.py,
        # EMDLoss) and compile() wraps the optimizer in a LossScaleOptimizer.
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with dist.scope():
            model = build_model(config.replace(base_weights=None) if init_model else config)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if init_model:
        copy_weights(init_model, config, model)
    model.summary(print_fn=lambda line, **_: log.debug(line))
    return model


def tensorboard(job: Path) -> list[keras.callbacks.Callback]:
    """TensorBoard logs in job/logs where tf.summary exists (TensorFlow installed, any
    backend); history.json/csv/png are written either way."""
    if not kerasbackend.has_tensorboard():
        log.info("TensorFlow is not installed: no TensorBoard logs (history.json has the "
                 "same numbers)")
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(job / "logs"), write_graph=False,
                                        profile_batch=0)]


def _restore(model: keras.Model, weights: Path) -> None:
    """Load a checkpoint (weights and optimizer state) into the compiled model."""
    model.optimizer.build(model.trainable_variables)  # its slots first, so their state loads
    try:
        model.load_weights(weights)
    except (OSError, ValueError) as e:  # missing, truncated, another model's
        raise NimaError(f"cannot resume from {weights}: "
                        f"{str(e).splitlines()[0][:200]}") from None


def usable_images(
    samples: list[labels.Sample], image_dir: Path, job: Path, max_missing_fraction: float
) -> tuple[list[tuple[labels.Sample, Path]], list[str]]:
    """Pair labels with images and drop what cannot be read (listed in skipped.txt); returns
    the pairs and the skipped lines."""
    found, missing = labels.find_images(samples, image_dir)
    unreadable = probe_images([p for _, p in found])
    found = [(s, p) for s, p in found if str(p) not in unreadable]
    skipped = [f"{i}\tmissing" for i in missing] + [f"{p}\t{why}" for p, why in unreadable.items()]
    files.write_text(job / "skipped.txt", "".join(line + "\n" for line in skipped))
    labels.check_missing(len(samples), missing + sorted(unreadable), max_missing_fraction,
                         "have no readable image")
    if not found:
        raise DataError(f"no readable images for the samples in {image_dir}")
    return found, skipped


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
    """After every epoch: history files, best model, and the resumable checkpoint (in that
    order; files are replaced atomically, see `jobs.save_epoch`)."""

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
        jobs.save_epoch(self.job, self.model, {
            "epoch": epoch + 1, "phase": self.phase, "monitor": self.monitor,
            "best": self.best, "best_epoch": self.best_epoch,
            "seconds": time.monotonic() - self.t_start, "history": self.rows})
        jobs.write_history(self.job, self.rows)
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
