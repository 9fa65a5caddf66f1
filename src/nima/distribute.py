"""Where training runs: one device, several devices, several machines, on any Keras backend.

A `Distribution` is what the trainer needs from it: a scope to build and compile the model
in, the number of replicas, the input pipelines, and the callbacks and barrier that keep
replicas in step. `nima.train.distribution` picks the backend's:

- TensorFlow backend: tf.distribute (`nima.tfdistribute`): mirrored GPUs, multi-worker
  clusters described by $TF_CONFIG (docs/remote.md).
- JAX backend: keras.distribution.DataParallel over all local GPUs/TPUs. JAX runs one
  program over a global batch split across devices, so BatchNormalization sees the whole
  batch and nothing has to be synchronised by hand. Input: `nima.feed`.
- PyTorch backend: one device.

This module imports no backend; TF_CONFIG is read here because it decides, before anything
starts, which process is the chief.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import keras
import numpy as np

from nima import kerasbackend
from nima.config import Config
from nima.errors import DataError, NimaError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Inputs:
    train: object  # a tf.data.Dataset, a distributed dataset or a keras.utils.PyDataset
    validation: object | None
    steps: int | None  # None: one pass over a finite dataset
    validation_steps: int | None


class Distribution(Protocol):
    replicas: int  # batch_size is per replica: a step takes replicas x batch_size images

    def scope(self) -> AbstractContextManager: ...

    def inputs(self, config: Config, train_set: list, val_set: list) -> Inputs: ...

    def callbacks(self) -> list[keras.callbacks.Callback]: ...

    def barrier(self) -> None: ...


class KerasDistribution:
    """keras.distribution on backends other than TensorFlow.

    "auto": DataParallel when the backend sees more than one GPU/TPU; "mirrored": all GPUs,
    or all CPU devices where there is none (JAX makes several with
    XLA_FLAGS=--xla_force_host_platform_device_count=N); "none": one device.
    """

    def __init__(self, name: str):
        backend = kerasbackend.name()
        workers = len(tf_config().get("cluster", {}).get("worker", []))
        if name == "multi_worker" or workers > 1:
            raise NimaError(f"distribution multi_worker (TF_CONFIG clusters) needs the "
                            f"TensorFlow backend; the {backend} backend trains on the devices "
                            "of one machine (\"mirrored\")")
        devices: list[str] = []
        if name in ("auto", "mirrored"):
            devices = kerasbackend.devices("gpu") or kerasbackend.devices("tpu")
            if name == "mirrored" and not devices:
                devices = kerasbackend.devices("cpu")
        self.distribution = None
        if len(devices) > 1:
            if backend != "jax":
                raise NimaError(f"training on {len(devices)} devices needs the JAX or "
                                f"TensorFlow backend, not {backend} (set \"distribution\": "
                                "\"none\")")
            self.distribution = keras.distribution.DataParallel(devices=devices)
            # Global, not only inside scope(): fit() shards each batch by the distribution
            # in force when it runs.
            keras.distribution.set_distribution(self.distribution)
        self.replicas = len(devices) if self.distribution else 1
        log.info("distribution: %s on %s, %d replica(s)%s", name, backend, self.replicas,
                 f" ({', '.join(devices)})" if self.distribution else "")

    def scope(self) -> AbstractContextManager:
        return self.distribution.scope() if self.distribution else nullcontext()

    def inputs(self, config: Config, train_set: list, val_set: list) -> Inputs:
        from nima import feed

        global_batch = config.batch_size * self.replicas
        several = self.replicas > 1
        if several and len(train_set) < global_batch:
            raise DataError(f"{len(train_set)} training images do not fill one step of "
                            f"{self.replicas} replicas x batch_size {config.batch_size}: "
                            "lower batch_size")
        train = feed.TrainBatches(
            [p for _, p in train_set], np.stack([s.label for s, _ in train_set]),
            input_size=config.model_input_size, resize_size=config.resize_size,
            resize_method=config.resize_method, batch_size=global_batch,
            random_crop=config.random_crop, horizontal_flip=config.horizontal_flip,
            seed=config.seed,
            # Every device needs an equal share of every batch.
            drop_remainder=several)
        validation = None
        if val_set:
            if several:  # topped up to whole batches with repeated images
                val_set = top_up(val_set, -(-len(val_set) // global_batch) * global_batch)
            validation = feed.EvalBatches(
                [p for _, p in val_set], np.stack([s.label for s, _ in val_set]),
                input_size=config.model_input_size, resize_method=config.resize_method,
                batch_size=global_batch, weighted=True)
        # Told the steps with several devices: the trainer counts images per epoch by them.
        return Inputs(train, validation, len(train) if several else None, None)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return []

    def barrier(self) -> None:
        pass


# --- TF_CONFIG and sharding, shared by both ---------------------------------------------------

def shard(items: list, n: int, index: int, equal: bool) -> list:
    """Every n-th item from `index`; with `equal`, cut so all n shards have the same length."""
    part = items[index::n]
    return part[:len(items) // n] if equal else part


def top_up(items: list, n: int) -> list:
    """`items` repeated in order until there are `n` (every replica needs a full batch)."""
    return [items[i % len(items)] for i in range(n)]


def tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError:
        raise NimaError("TF_CONFIG is not valid JSON") from None


def task() -> dict:
    """This process's entry in TF_CONFIG ({"type": "worker", "index": 1}), {} when alone."""
    return tf_config().get("task", {})


def is_chief() -> bool:
    """Only the chief writes job files in multi-worker training (worker 0 when no chief)."""
    config = tf_config()
    task, cluster = config.get("task", {}), config.get("cluster", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index") == 0 and "chief" not in cluster
