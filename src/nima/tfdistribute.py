"""tf.distribute under the TensorFlow backend: one device, several GPUs or several machines;
the input pipelines sharded by worker, and what Keras 3 needs to train correctly under it.

A cluster is described the TensorFlow way, by $TF_CONFIG on every worker (docs/remote.md).
`nima.distribute` picks this or keras.distribution by backend.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager

import keras
import numpy as np
import tensorflow as tf

from nima import pipeline
from nima.config import Config
from nima.distribute import Inputs, shard, tf_config, top_up
from nima.errors import DataError

log = logging.getLogger(__name__)


# --- input pipelines -------------------------------------------------------------------------
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

def distributed_datasets(strategy: tf.distribute.Strategy, config: Config,
                         train_set: list, val_set: list, global_batch: int) -> Inputs:
    """Training and validation inputs, sharded by worker, batched per replica."""
    size = config.model_input_size
    replicas = strategy.num_replicas_in_sync
    batch = config.batch_size
    # Every worker has the same number of replicas (tf.distribute requires it).
    workers = max(1, len(tf_config().get("cluster", {}).get("worker", []))
                  + len(tf_config().get("cluster", {}).get("chief", [])))
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
            part = top_up(part, val_steps * worker_step)
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


# --- the strategy ------------------------------------------------------------------------------

def make_strategy(name: str) -> tf.distribute.Strategy:
    """"auto": multi-worker when TF_CONFIG names several workers, mirrored with >1 GPU, else none.

    "mirrored" replicates over all local GPUs, or over all logical CPU devices on a machine
    without GPUs (one unless configured otherwise). "multi_worker" needs TF_CONFIG on every
    worker; each replicates over its own GPUs.
    """
    cluster = tf_config().get("cluster", {})
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
    # Says what TensorFlow's own "GPU will not be used" line said (the CLI drops that line).
    gpus = len(tf.config.list_logical_devices("GPU"))
    log.info("distribution: %s, %d replica(s), %s", name, strategy.num_replicas_in_sync,
             f"{gpus} GPU(s)" if gpus else "no GPU visible: on the CPU")
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


def barrier(strategy: tf.distribute.Strategy) -> None:
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


class TFDistribution:
    """`nima.distribute.Distribution` on a tf.distribute strategy."""

    def __init__(self, name: str):
        self.strategy = make_strategy(name)
        self.replicas = self.strategy.num_replicas_in_sync

    def scope(self) -> AbstractContextManager:
        return self.strategy.scope()

    def inputs(self, config: Config, train_set: list, val_set: list) -> Inputs:
        return distributed_datasets(self.strategy, config, train_set, val_set,
                                    config.batch_size * self.replicas)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return [SyncMovingStatistics(self.strategy)]

    def barrier(self) -> None:
        barrier(self.strategy)
