"""Backend-neutral input: keras.utils.PyDataset batches from the Pillow decoder, threaded.

The counterpart of `nima.pipeline` (tf.data) for Keras backends other than TensorFlow (JAX,
PyTorch) and for machines without TensorFlow. Same decode and resize (`nima.images`), same
augmentation rules (a random crop out of `resize_size`, a horizontal flip), same treatment
of a file that fails to decode: zeros plus weight 0 in training, an error string in
evaluation, logged; a long run never stops over one file.

Pillow releases the GIL while it decodes and resizes, so worker threads (one batch each)
use every core; numbers in bench/README.md ("Input pipelines").
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
from pathlib import Path
from typing import Iterator, Sequence

import keras
import numpy as np

from nima import images
from nima.errors import ImageError
from nima.runtime import cpu_threads
from nima.scores import N_BINS

log = logging.getLogger(__name__)


def _decode(path: str | Path, size: int, method: str) -> tuple[np.ndarray, str]:
    try:
        return images.load_image(path, size, method), ""
    except ImageError as e:
        log.warning("%s", e)
        return np.zeros((size, size, 3), np.uint8), str(e)


class _Batches(keras.utils.PyDataset):
    """Batches of (image float32 0..255, label, third) over `paths`, in `order`."""

    def __init__(self, paths: Sequence[str | Path], labels: np.ndarray, *, load_size: int,
                 resize_method: str, batch_size: int, drop_remainder: bool,
                 workers: int | None):
        images.check_resize(resize_method)
        # Threads, not processes: decoding releases the GIL, and threads share the file list.
        super().__init__(workers=workers or cpu_threads(), use_multiprocessing=False,
                         max_queue_size=4)
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, np.float32).reshape(-1, N_BINS)
        if len(self.labels) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        self.load_size, self.resize_method = load_size, resize_method
        self.batch_size, self.drop_remainder = batch_size, drop_remainder
        self.order = np.arange(len(self.paths))

    def __len__(self) -> int:
        if self.drop_remainder:
            return len(self.paths) // self.batch_size
        return -(-len(self.paths) // self.batch_size)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        picked = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        decoded = [_decode(self.paths[i], self.load_size, self.resize_method) for i in picked]
        return (np.stack([image for image, _ in decoded]), self.labels[picked],
                [error for _, error in decoded])


class TrainBatches(_Batches):
    """Shuffled (every epoch), augmented batches of (image, label, weight); weight 0 marks a
    file that failed to decode. Batch i of epoch e is a function of (seed, e, i) alone, so
    worker threads may build batches in any order."""

    def __init__(self, paths: Sequence[str | Path], labels: np.ndarray, *, input_size: int,
                 resize_size: int | None, resize_method: str = "bilinear", batch_size: int,
                 random_crop: bool = True, horizontal_flip: bool = True, seed: int = 0,
                 drop_remainder: bool = False, workers: int | None = None):
        load_size = resize_size if (random_crop and resize_size) else input_size
        super().__init__(paths, labels, load_size=load_size, resize_method=resize_method,
                         batch_size=batch_size, drop_remainder=drop_remainder, workers=workers)
        self.input_size, self.horizontal_flip, self.seed = input_size, horizontal_flip, seed
        self.epoch = 0
        self._shuffle()

    def _shuffle(self) -> None:
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.paths))

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._shuffle()

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch, labels, errors = self._load(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        n, size = len(batch), self.input_size
        span = self.load_size - size + 1
        ys, xs = rng.integers(0, span, n), rng.integers(0, span, n)
        flips = rng.random(n) < 0.5 if self.horizontal_flip else np.zeros(n, bool)
        out = np.empty((n, size, size, 3), np.float32)
        for k in range(n):
            crop = batch[k, ys[k]:ys[k] + size, xs[k]:xs[k] + size]
            out[k] = crop[:, ::-1] if flips[k] else crop
        weights = np.array([error == "" for error in errors], np.float32)
        return out, labels, weights


class EvalBatches(_Batches):
    """Deterministic, resize-only batches in `paths` order: (image, label, errors) with
    `errors` a bytes array (b"" when the file decoded), or (image, label, weight) when
    `weighted` (validation during training)."""

    def __init__(self, paths: Sequence[str | Path], labels: np.ndarray, *, input_size: int,
                 resize_method: str = "bilinear", batch_size: int, weighted: bool = False,
                 workers: int | None = None):
        super().__init__(paths, labels, load_size=input_size, resize_method=resize_method,
                         batch_size=batch_size, drop_remainder=False, workers=workers)
        self.weighted = weighted

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch, labels, errors = self._load(index)
        if self.weighted:
            third = np.array([e == "" for e in errors], np.float32)
        else:
            third = np.array([e.encode("utf-8", "replace") for e in errors], dtype=object)
        return batch.astype(np.float32), labels, third


def iterate(batches: keras.utils.PyDataset, ahead: int | None = None) -> Iterator:
    """Every batch of `batches` in order, built by its worker threads up to `ahead` batches
    in advance (memory stays bounded on a folder of millions of files)."""
    workers = max(1, batches.workers)
    ahead = ahead or 2 * workers
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="feed") as pool:
        pending: collections.deque = collections.deque()
        for i in range(len(batches)):
            pending.append(pool.submit(batches.__getitem__, i))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def eval_batches(paths: Sequence[str | Path], labels: np.ndarray, *, input_size: int,
                 resize_method: str, batch_size: int) -> Iterator:
    """(image, label, errors) numpy batches in order for evaluate and calibrate: tf.data under
    the TensorFlow backend, these threads under any other."""
    from nima import kerasbackend

    if kerasbackend.is_tensorflow():
        from nima import pipeline

        return pipeline.eval_dataset(paths, labels, input_size=input_size,
                                     resize_method=resize_method,
                                     batch_size=batch_size).as_numpy_iterator()
    return iterate(EvalBatches(paths, labels, input_size=input_size,
                               resize_method=resize_method, batch_size=batch_size))
