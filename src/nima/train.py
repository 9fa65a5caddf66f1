"""The two-phase NIMA trainer. Reads top to bottom: data, model, phase 1, phase 2, results.

Phase 1 ("dense") trains the head with the base frozen; phase 2 ("all") fine-tunes every
layer at a lower learning rate. Everything lands in a job directory:

    train_jobs/<timestamp>/
      config.json  samples.json  job.json   what was run, on what, with which versions
      skipped.txt                           label rows without a readable image
      checkpoint/last.weights.h5, state.json   after every epoch: weights + optimizer + epoch
      best.keras                            lowest val_loss so far (loss without validation)
      model.keras                           the model after the last epoch
      history.json  history.csv             one row per epoch, both phases
      history.png                           loss curves, refreshed every epoch
      summary.json                          counts, best epoch, training time
      logs/                                 TensorBoard

`nima train --resume JOB_DIR` continues a killed job from its last completed epoch, in the
right phase, with the optimizer state it had.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import sys
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
from nima.errors import DataError, ImageError, NimaError
from nima.model import EMDLoss, build_model, input_size_for, set_base_trainable

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
) -> Path:
    """Train a new model; returns the job directory."""
    samples = labels.load_samples(samples_file)
    image_dir = Path(image_dir).resolve()
    job = new_job_dir(job_dir)
    log.info("job directory: %s", job)
    if is_chief():
        config.save(job / "config.json")
        files.write_text(job / "samples.json", labels.samples_to_json(samples))
        files.write_json(job / "job.json", {
            "samples_file": str(Path(samples_file).resolve()),
            "image_dir": str(image_dir),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        })
    return _run(config, samples, image_dir, job, state=None)


def resume(job_dir: str | Path, image_dir: str | Path | None = None) -> Path:
    """Continue a job from its last completed epoch."""
    job = Path(job_dir)
    if not (job / "config.json").is_file():
        raise NimaError(f"not a training job directory (no config.json): {job}")
    config = Config.load(job / "config.json")
    samples = labels.load_samples(job / "samples.json")
    meta = json.loads((job / "job.json").read_text())
    image_dir = Path(image_dir or meta["image_dir"])
    state_file = job / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else None
    if state is None:
        log.info("no completed epoch in %s: starting from the beginning", job)
    else:
        log.info("resuming %s after epoch %d (phase %s)", job, state["epoch"], state["phase"])
    return _run(config, samples, image_dir, job, state=state)


def _run(config: Config, samples: list[labels.Sample], image_dir: Path, job: Path,
         state: dict | None) -> Path:
    t0 = time.monotonic()

    # --- data: pair labels with images, drop what cannot be read, split -------------------
    found, missing = labels.find_images(samples, image_dir)
    unreadable = probe_images([p for _, p in found])
    found = [(s, p) for s, p in found if str(p) not in unreadable]
    skipped = [f"{i}\tmissing" for i in missing] + [f"{p}\t{why}" for p, why in unreadable.items()]
    if is_chief():
        files.write_text(job / "skipped.txt", "".join(line + "\n" for line in skipped))
    labels.check_missing(len(samples), missing + sorted(unreadable), config.max_missing_fraction,
                         "have no readable image")
    if not found:
        raise DataError(f"no readable images for the samples in {image_dir}")
    train_set, val_set = labels.split(found, config.validation_fraction, config.seed)
    log.info("%d training and %d validation images", len(train_set), len(val_set))

    # --- model and input pipelines, under the distribution strategy -----------------------
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = make_strategy(config.distribution)
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    size = input_size_for(config)
    train_ds = pipeline.train_dataset(
        [p for _, p in train_set], np.stack([s.label for s, _ in train_set]),
        input_size=size, resize_size=config.resize_size, batch_size=global_batch,
        random_crop=config.random_crop, horizontal_flip=config.horizontal_flip,
        seed=config.seed)
    val_ds = None
    if val_set:
        val_ds = pipeline.eval_dataset(
            [p for _, p in val_set], np.stack([s.label for s, _ in val_set]),
            input_size=size, batch_size=global_batch, weighted=True)
    with strategy.scope():
        model = build_model(config)
    model.summary(print_fn=lambda line, **_: log.debug(line))

    # --- the two phases --------------------------------------------------------------------
    recorder = EpochRecorder(job, state)
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
                model.load_weights(job / "checkpoint" / "last.weights.h5")
                first_epoch = state["epoch"]
        if first_epoch >= phase.end:
            continue
        log.info("phase %s: epochs %d-%d, base %s, lr %g, decay %g", phase.name,
                 first_epoch + 1, phase.end, "trainable" if phase.train_base else "frozen",
                 phase.learning_rate, phase.decay)
        recorder.phase = phase.name
        model.fit(
            train_ds, validation_data=val_ds, initial_epoch=first_epoch, epochs=phase.end,
            shuffle=False,  # the dataset reshuffles itself every epoch
            verbose=1 if sys.stdout.isatty() else 2,
            callbacks=[recorder, keras.callbacks.TensorBoard(
                log_dir=str(job / "logs"), write_graph=False, profile_batch=0)])

    # --- results ---------------------------------------------------------------------------
    if is_chief():
        with files.atomic_path(job / "model.keras", suffix=".keras") as tmp:
            model.save(tmp)
    seconds = time.monotonic() - t0 + (state or {}).get("seconds", 0.0)
    summary = {
        "n_samples": len(samples), "n_skipped": len(skipped), "n_train": len(train_set),
        "n_validation": len(val_set), "epochs": recorder.epochs_done,
        "best_epoch": recorder.best_epoch, "best_" + recorder.monitor: recorder.best,
        "training_seconds": round(seconds, 1),
        "replicas": strategy.num_replicas_in_sync, "global_batch_size": global_batch,
    }
    if is_chief():
        files.write_json(job / "summary.json", summary)
    log.info("done in %.0f s: best %s %.4f at epoch %s; model in %s", seconds, recorder.monitor,
             recorder.best, recorder.best_epoch, job)
    return job


class EpochRecorder(keras.callbacks.Callback):
    """After every epoch: history files, best model, and the resumable checkpoint.

    Files are replaced atomically, weights before state, so a kill at any instant leaves a
    state.json that points at a complete checkpoint.
    """

    def __init__(self, job: Path, state: dict | None):
        super().__init__()
        self.job = job
        self.phase = ""
        self.rows: list[dict] = list((state or {}).get("history", []))
        self.best = (state or {}).get("best", float("inf"))
        self.best_epoch = (state or {}).get("best_epoch")
        self.monitor = (state or {}).get("monitor", "val_loss")
        self.epochs_done = (state or {}).get("epoch", 0)
        self.t_start = time.monotonic() - (state or {}).get("seconds", 0.0)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if "val_loss" not in logs:
            self.monitor = "loss"
        lr = self.model.optimizer.learning_rate
        row = {"epoch": epoch + 1, "phase": self.phase,
               **{k: float(v) for k, v in logs.items() if np.isscalar(v) or np.ndim(v) == 0},
               "learning_rate": float(lr.numpy() if hasattr(lr, "numpy") else lr)}
        self.rows.append(row)
        self.epochs_done = epoch + 1
        value = row.get(self.monitor, float("inf"))
        improved = value < self.best
        if improved:
            self.best, self.best_epoch = float(value), epoch + 1
        if not is_chief():  # workers keep identical weights; one copy on disk is enough
            return
        if improved:
            with files.atomic_path(self.job / "best.keras", suffix=".keras") as tmp:
                self.model.save(tmp)
        ckpt = self.job / "checkpoint"
        ckpt.mkdir(exist_ok=True)
        with files.atomic_path(ckpt / "last.weights.h5", suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)
        files.write_json(ckpt / "state.json", {
            "epoch": epoch + 1, "phase": self.phase, "monitor": self.monitor,
            "best": self.best, "best_epoch": self.best_epoch,
            "seconds": time.monotonic() - self.t_start, "history": self.rows})
        files.write_json(self.job / "history.json", self.rows)
        files.write_text(self.job / "history.csv", _csv(self.rows))
        plots.write_history_plot(self.job / "history.png", self.rows)  # never raises


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
    """Header-check every image in parallel (cheap); return {path: reason} for the bad ones.

    Files that pass the header check but fail to decode are dropped later by the pipeline.
    """
    def probe(path: Path) -> str | None:
        try:
            images.open_image(path).close()
            return None
        except ImageError as e:
            return str(e)

    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(probe, paths, chunksize=64)
        return {str(p): why for p, why in zip(paths, results) if why}


def new_job_dir(job_dir: str | Path | None) -> Path:
    if job_dir is not None:
        job = Path(job_dir)
        if job.exists() and any(job.iterdir()):
            raise NimaError(f"job directory is not empty: {job} (use --resume to continue it)")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        job = Path("train_jobs") / stamp
        n = 1
        while job.exists():
            n += 1
            job = Path("train_jobs") / f"{stamp}-{n}"
    job.mkdir(parents=True, exist_ok=True)
    return job


# --- distribution -----------------------------------------------------------------------------

def _tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError:
        raise NimaError("TF_CONFIG is not valid JSON") from None


def is_chief() -> bool:
    """Only the chief writes job files in multi-worker training (worker 0 when no chief)."""
    task = _tf_config().get("task", {})
    cluster = _tf_config().get("cluster", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index") == 0 and "chief" not in cluster


def make_strategy(name: str) -> tf.distribute.Strategy:
    """"auto": multi-worker when TF_CONFIG names several workers, mirrored with >1 GPU, else none."""
    cluster = _tf_config().get("cluster", {})
    n_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    if name == "auto":
        if n_workers > 1:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "none"
    if name == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    log.info("distribution: %s, %d replica(s)", name, strategy.num_replicas_in_sync)
    return strategy
