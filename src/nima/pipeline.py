"""tf.data input pipelines: parallel decode, resize, random crop, flip, batch.

Decoding goes through `nima.images.load_image` (Pillow) inside `tf.numpy_function`, so every
format, EXIF rotation and colour mode is handled the same way in training and prediction.
Pillow releases the GIL while decoding and resizing, so `num_parallel_calls=AUTOTUNE` spreads
decoding over all cores. A file that fails to decode becomes zeros plus an error string:
it is logged; training drops it, prediction reports it, nothing stops a long run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf

from nima import images
from nima.errors import ImageError
from nima.scores import N_BINS

log = logging.getLogger(__name__)


def decoder(size: int, method: str = "bilinear"):
    """A tf function: path (bytes) -> (uint8 image size x size x 3, error string, "" if ok),
    resized by `method` (the model's own resize, nima.config.RESIZES)."""
    images.check_resize(method)

    def decode(path: bytes) -> tuple[np.ndarray, bytes]:
        try:
            return images.load_image(os.fsdecode(path), size, method), b""
        except ImageError as e:
            log.warning("%s", e)
            return np.zeros((size, size, 3), np.uint8), str(e).encode("utf-8", "replace")

    def tf_decode(path):
        image, error = tf.numpy_function(decode, [path], (tf.uint8, tf.string), stateful=False)
        image.set_shape((size, size, 3))
        error.set_shape(())
        return image, error

    return tf_decode


def _encode_paths(paths: Iterable[str | Path]) -> np.ndarray:
    # Bytes, not str: file names need not be valid UTF-8.
    return np.array([os.fsencode(str(p)) for p in paths], dtype=object)


def _weight(error) -> tf.Tensor:
    """Sample weight 0 for a failed image: it adds nothing to the loss, yet batches keep their
    known count, so Keras shows real progress bars and never runs out of data mid-epoch."""
    return tf.cast(tf.equal(error, b""), tf.float32)


def train_dataset(
    paths: Sequence[str | Path],
    labels: np.ndarray,
    *,
    input_size: int,
    resize_size: int | None,
    resize_method: str = "bilinear",
    batch_size: int,
    random_crop: bool = True,
    horizontal_flip: bool = True,
    seed: int = 0,
) -> tf.data.Dataset:
    """Shuffled (every epoch), augmented batches of (image float32 0..255, label, weight)."""
    load_size = resize_size if (random_crop and resize_size) else input_size
    decode = decoder(load_size, resize_method)
    labels = np.asarray(labels, np.float32).reshape(-1, N_BINS)
    ds = tf.data.Dataset.from_tensor_slices((_encode_paths(paths), labels))
    ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def load(path, label):
        image, error = decode(path)
        return image, label, error

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    rng = tf.random.Generator.from_seed(seed)

    def augment(image, label, error):
        if load_size != input_size:
            offset_max = load_size - input_size + 1
            oy = rng.uniform((), 0, offset_max, dtype=tf.int32)
            ox = rng.uniform((), 0, offset_max, dtype=tf.int32)
            image = image[oy:oy + input_size, ox:ox + input_size, :]
        if horizontal_flip:
            image = tf.cond(rng.uniform(()) < 0.5, lambda: tf.reverse(image, [1]), lambda: image)
        image.set_shape((input_size, input_size, 3))
        return tf.cast(image, tf.float32), label, _weight(error)

    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def eval_dataset(
    paths: Sequence[str | Path],
    labels: np.ndarray,
    *,
    input_size: int,
    resize_method: str = "bilinear",
    batch_size: int,
    weighted: bool = False,
) -> tf.data.Dataset:
    """Deterministic, resize-only batches of (image, label, error) in `paths` order.

    With `weighted` (validation during training) elements are (image, label, weight), failed
    images weighing 0.
    """
    decode = decoder(input_size, resize_method)
    labels = np.asarray(labels, np.float32).reshape(-1, N_BINS)
    ds = tf.data.Dataset.from_tensor_slices((_encode_paths(paths), labels))

    def load(path, label):
        image, error = decode(path)
        return tf.cast(image, tf.float32), label, error

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if weighted:
        ds = ds.map(lambda image, label, error: (image, label, _weight(error)))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
