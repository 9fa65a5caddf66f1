"""Where training runs: one device, several devices, several machines, on any Keras backend.

A `Distribution` is what the trainer needs from it: a scope to build and compile the model
in, the number of replicas, the input pipelines, and the callbacks and barrier that keep
replicas in step. `nima.train.distribution` picks the backend's:

- TensorFlow backend: tf.distribute (`nima.tfdistribute`): mirrored GPUs, multi-worker
  clusters described by $TF_CONFIG (docs/remote.md).
- JAX backend: keras.distribution.DataParallel over all local GPUs/TPUs, and over the
  devices of every machine of a TF_CONFIG cluster (the same description as TensorFlow's:
  the chief, or worker 0, coordinates). JAX runs one program over a global batch split
  across devices, so BatchNormalization sees the whole batch and nothing has to be
  synchronised by hand. Input: `nima.feed`, each process reading its own slice of the images.
- PyTorch backend: one device.

This module imports no backend at import time; TF_CONFIG is read here because it decides,
before anything starts, which process is the chief.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
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

    "auto": DataParallel when the backend sees more than one GPU/TPU, or when TF_CONFIG names
    several processes (JAX; as TensorFlow's "auto" picks multi-worker then); "mirrored": all
    GPUs of this machine, or all CPU devices where there is none (JAX makes several with
    XLA_FLAGS=--xla_force_host_platform_device_count=N); "multi_worker": every device of the
    TF_CONFIG cluster (JAX); "none": one device.
    """

    def __init__(self, name: str):
        backend = kerasbackend.name()
        addresses, position = cluster()
        if name == "multi_worker" and len(addresses) < 2:
            log.warning("distribution multi_worker without a TF_CONFIG cluster: training on "
                        "this host only")
        joins = name in ("auto", "multi_worker") and len(addresses) > 1
        # Outside a joined cluster ("mirrored" or "none" under a TF_CONFIG) a process is alone.
        self.processes, self.process = (len(addresses), position) if joins else (1, 0)
        if joins:
            if backend != "jax":
                raise NimaError(f"a TF_CONFIG cluster needs the TensorFlow or JAX backend, "
                                f"not {backend}")
            _join_jax_cluster(addresses, self.process)
        devices: list[str] = []
        if name in ("auto", "mirrored", "multi_worker"):
            devices = kerasbackend.devices("gpu") or kerasbackend.devices("tpu")
            if not devices and (name == "mirrored" or joins):
                devices = kerasbackend.devices("cpu")
        self.distribution = None
        if len(devices) > 1:
            if backend != "jax":
                raise NimaError(f"training on {len(devices)} devices needs the JAX or "
                                f"TensorFlow backend, not {backend} (set \"distribution\": "
                                "\"none\")")
            # Each process feeds its own slice (inputs()); Keras must not slice it again.
            self.distribution = keras.distribution.DataParallel(
                devices=devices, auto_shard_dataset=self.processes == 1)
            # Global, not only inside scope(): fit() shards each batch by the distribution
            # in force when it runs.
            keras.distribution.set_distribution(self.distribution)
        self.replicas = len(devices) if self.distribution else 1
        log.info("distribution: %s on %s, %d replica(s)%s%s", name, backend, self.replicas,
                 f" ({', '.join(devices)})" if self.distribution else "",
                 f", process {self.process} of {self.processes}" if joins else "")

    def scope(self) -> AbstractContextManager:
        return self.distribution.scope() if self.distribution else nullcontext()

    def inputs(self, config: Config, train_set: list, val_set: list) -> Inputs:
        """This process's share of every global batch: its own slice of the images, batched
        by its devices (`make_array_from_process_local_data` joins the processes' parts)."""
        from nima import feed

        several = self.replicas > 1
        n, i = self.processes, self.process
        batch = config.batch_size * self.replicas // n  # images this process feeds per step
        train_part = shard(train_set, n, i, equal=True)
        if several and len(train_part) < batch:
            raise DataError(f"{len(train_set)} training images do not fill one step of "
                            f"{self.replicas} replicas x batch_size {config.batch_size}: "
                            "lower batch_size")
        train = feed.TrainBatches(
            [p for _, p in train_part], np.stack([s.label for s, _ in train_part]),
            input_size=config.model_input_size, resize_size=config.resize_size,
            resize_method=config.resize_method, batch_size=batch,
            random_crop=config.random_crop, horizontal_flip=config.horizontal_flip,
            # Each process shuffles and augments its own slice differently.
            seed=config.seed + i,
            # Every device needs an equal share of every batch.
            drop_remainder=several)
        validation = None
        if val_set:
            val_part = shard(val_set, n, i, equal=False) or val_set  # fewer images than processes
            if several:  # topped up to the same whole number of batches in every process
                steps = -(-len(shard(val_set, n, 0, equal=False)) // batch)
                val_part = top_up(val_part, steps * batch)
            validation = feed.EvalBatches(
                [p for _, p in val_part], np.stack([s.label for s, _ in val_part]),
                input_size=config.model_input_size, resize_method=config.resize_method,
                batch_size=batch, weighted=True)
        # Told the steps with several devices: the trainer counts images per epoch by them.
        return Inputs(train, validation, len(train) if several else None, None)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return []

    def barrier(self) -> None:
        """Wait for every process: the coordinator (process 0) exiting first would take the
        cluster down under a process still saving its files."""
        if self.processes > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("nima train: done")


def _join_jax_cluster(addresses: list[str], process: int) -> None:
    """jax.distributed through Keras, before any JAX computation; process 0 coordinates."""
    import jax

    log.info("joining a cluster of %d processes as process %d (coordinator %s)",
             len(addresses), process, addresses[0])
    if process == 0:
        _check_coordinator_port(addresses[0])
    else:
        _wait_for_coordinator(addresses[0])
    # CPU devices of several processes need a collectives library (GPUs use NCCL anyway).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        keras.distribution.initialize(",".join(addresses), len(addresses), process)
    except Exception as e:  # what JAX raises rather than aborting the process
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise NimaError(f"cannot join the TF_CONFIG cluster as process {process} "
                        f"(coordinator {addresses[0]}): {detail}") from None


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not host:
        raise NimaError(f"TF_CONFIG address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def _wait_for_coordinator(address: str, seconds: float = 300.0) -> None:
    """Wait as long as JAX would for the coordinator to listen: JAX ends a process that
    cannot reach it with an abort and a C++ stack trace, this with one error line."""
    host, port = _host_port(address)
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host, port), timeout=5).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise NimaError(f"the cluster's coordinator {address} (TF_CONFIG) did not "
                                f"answer within {seconds:.0f} s: {e.strerror or e}") from None
            time.sleep(1.0)


def _check_coordinator_port(address: str) -> None:
    """JAX's coordinator service crashes the process (a segfault) when its port is taken:
    check first, so that is one error line."""
    _, port = _host_port(address)
    try:  # where the service listens: [::] (IPv4 too), or 0.0.0.0 without IPv6
        probe = socket.socket(socket.AF_INET6)
        host = "::"
    except OSError:
        probe, host = socket.socket(socket.AF_INET), "0.0.0.0"
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise NimaError(f"cannot start the cluster's coordinator on port {port} "
                            f"({address} in TF_CONFIG): {e.strerror}") from None


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


def cluster() -> tuple[list[str], int]:
    """The TF_CONFIG cluster as processes: addresses (chief first, then workers by index) and
    this process's position; ([], 0) without one."""
    config = tf_config()
    nodes = config.get("cluster", {})
    addresses = [*nodes.get("chief", []), *nodes.get("worker", [])]
    me = config.get("task", {})
    if len(addresses) < 2 or not me:
        return [], 0
    chiefs = len(nodes.get("chief", []))
    position = me.get("index", 0) + (chiefs if me.get("type") == "worker" else 0)
    if me.get("type") not in ("chief", "worker") or not 0 <= position < len(addresses):
        raise NimaError(f"TF_CONFIG task {me} is not one of its cluster's chief or workers")
    return addresses, position


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
