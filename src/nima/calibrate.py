"""Re-estimate BatchNormalization statistics of a trained model ("precise BN").

A network trained from random initialisation changes its weights fast, so the moving averages
of batch statistics that BatchNormalization keeps for inference (momentum 0.99: roughly the
last hundred steps, blended with their initial values 0 and 1) lag behind the weights. The
model then predicts well in training mode and badly, even near-constantly, in inference mode:
seen on the default model after two epochs, Spearman -0.84 with batch statistics and -0.32
with the moving averages. The fix, from Wu & Johnson, "Rethinking 'Batch' in BatchNorm"
(2021): with the weights frozen, run training images through the network and set every
moving mean and variance to the plain average of the batch statistics.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import keras
import numpy as np

from nima.model import base_of

log = logging.getLogger(__name__)


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    found, stack = [], [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return found


def recalibrate_batchnorm(model: keras.Model, batches: Iterable[np.ndarray]) -> int:
    """Set every BatchNormalization's moving statistics to the mean batch statistics over
    `batches` (float RGB 0..255, the model's input). Weights are not touched. Batches of
    fewer than 2 images are skipped. Returns the number of batches used."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    base = base_of(model)
    was_trainable = base.trainable
    saved = [(bn.momentum, bn.trainable) for bn in layers]
    # A frozen BatchNormalization always runs in inference mode; unfreeze to see batch stats.
    base.trainable = True
    for bn in layers:
        bn.trainable = True
    n = 0
    try:
        for x in batches:
            if len(x) < 2:  # no statistics in an empty batch; no variance at 1x1 in one image
                continue
            # momentum k/(k+1) turns the exponential average into the exact running mean
            # (the first batch replaces the old values outright).
            for bn in layers:
                bn.momentum = n / (n + 1)
            model(np.asarray(x, np.float32), training=True)
            n += 1
    finally:
        for bn, (momentum, trainable) in zip(layers, saved):
            bn.momentum, bn.trainable = momentum, trainable
        base.trainable = was_trainable
    log.info("re-estimated %d BatchNormalization layers from %d batches", len(layers), n)
    return n


def calibrate_file(model_file: str | Path, samples_file: str | Path, image_dir: str | Path,
                   output_file: str | Path, *, batches: int = 64, batch_size: int = 32,
                   seed: int = 0) -> int:
    """`nima calibrate`: load a model, re-estimate its BatchNorm statistics on `batches`
    random batches of the labelled training images, save it. Returns the batches used."""
    from nima import files, labels, pipeline, resolve
    from nima.errors import DataError
    from nima.model import model_input_size

    if not str(output_file).endswith(".keras"):  # Keras would write a .keras zip under any name
        raise DataError(f"--output-file must end in .keras, not {Path(output_file).name}")
    ref = resolve.resolve(model_file)
    model = ref.load()
    samples = labels.load_samples(samples_file)
    found, _ = labels.find_images(samples, image_dir)
    if not found:
        raise DataError(f"no image of {samples_file} found in {image_dir}")
    order = np.random.default_rng(seed).permutation(len(found))[:batches * batch_size]
    paths = [found[i][1] for i in order]
    ds = pipeline.eval_dataset(paths, np.stack([found[i][0].label for i in order]),
                               input_size=model_input_size(model), resize_method=ref.resize,
                               batch_size=batch_size)
    # Unreadable images are dropped from their batch (a batch of them, entirely).
    n = recalibrate_batchnorm(model, (x[err == b""] for x, _, err in ds.as_numpy_iterator()))
    if n == 0:
        raise DataError(f"fewer than 2 readable images of {samples_file} in {image_dir}")
    files.save_keras(model, output_file)
    return n
