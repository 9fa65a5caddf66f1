"""NIMA on any keras.applications base: backbone, preprocessing layer, head, EMD loss.

    image (float 0..255 RGB) -> Preprocess(base's own mode) -> base CNN (avg pool)
        -> Dropout -> Dense(10, softmax)

The base model's `preprocess_input` is part of the graph (a registered layer, not a Lambda),
so a saved model takes plain RGB pixels everywhere: Keras, SavedModel, TFLite and ONNX see
the same input, and safe-mode loading never has to deserialise Python code.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import keras
from keras import ops

from nima.config import BASES, RESIZES, Config
from nima.errors import ModelError
from nima.scores import N_BINS

log = logging.getLogger(__name__)


_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="nima")
class Preprocess(keras.layers.Layer):
    """keras.applications' `preprocess_input` modes as a serialisable layer (input 0..255 RGB).

    It also records `resize`, how the model's input pixels are made from a decoded image
    (`nima.config.RESIZES`). That step runs outside the graph, in Pillow, but a network
    learns the pixels it was trained on, so the choice travels inside the model file and
    every consumer of the file (predict, the API, evaluate, calibrate, fine-tuning, export)
    honours it. Files saved before it was recorded load as "bilinear", what they used.
    """

    def __init__(self, mode: str = "tf", resize: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("tf", "torch", "caffe", "none"):
            raise ValueError(f"unknown preprocess mode {mode!r}")
        if resize not in RESIZES:
            raise ValueError(f"unknown resize {resize!r}")
        self.mode = mode
        self.resize = resize

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=x.dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            mean = ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
            return ops.flip(x, axis=-1) - mean
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "resize": self.resize}


@keras.saving.register_keras_serializable(package="nima")
class EMDLoss(keras.losses.Loss):
    """NIMA's Earth Mover's Distance between score distributions, per sample, then averaged.

    EMD_r(p, q) = (1/N * sum_k |CDF_p(k) - CDF_q(k)|^r)^(1/r), r = 2 in the paper.
    """

    def __init__(self, r: float = 2.0, name: str = "emd", **kwargs):
        super().__init__(name=name, **kwargs)
        self.r = float(r)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "float32")
        cdf_diff = ops.abs(ops.cumsum(y_true, axis=-1) - ops.cumsum(y_pred, axis=-1))
        mean = ops.mean(ops.power(cdf_diff, self.r), axis=-1)
        # The r-th root has an infinite gradient at 0; a floor far below any real loss avoids NaN.
        return ops.power(ops.maximum(mean, 1e-12), 1.0 / self.r)

    def get_config(self):
        return {**super().get_config(), "r": self.r}


def build_base(config: Config, input_size: int) -> keras.Model:
    """The keras.applications CNN without its top, global-average pooled (at
    `config.base_output_layer` when set)."""
    spec = BASES[config.base_model_name]
    constructor = getattr(keras.applications, config.base_model_name)
    weights = config.base_weights
    cut = config.base_output_layer
    kwargs = dict(include_top=False, pooling=None if cut else "avg",
                  input_shape=(input_size, input_size, 3), **config.base_model_args)
    if weights not in (None, "imagenet"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelError(f"base_weights file not found: {path}")
        weights = str(path)
    try:
        base = constructor(weights=weights, **kwargs)
    except TypeError as e:
        raise ModelError(f"invalid base_model_args for {config.base_model_name}: {e}") from None
    except ValueError as e:
        raise ModelError(f"cannot build {config.base_model_name}: {e}") from None
    except Exception as e:
        if weights == "imagenet" and ("fetch" in str(e).lower() or "url" in str(e).lower()):
            raise ModelError(
                f"cannot download ImageNet weights for {config.base_model_name} (no network?): "
                "run once with internet access so Keras caches them in ~/.keras/models, or set "
                '"base_weights" to null (random init) or to a local weights file'
            ) from None
        raise
    if cut:
        base = _cut_base(base, cut, config.base_model_name)
    if config.batchnorm_momentum is not None:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = config.batchnorm_momentum
    log.info("base %s (%s preprocessing), input %dx%d, weights=%s%s", config.base_model_name,
             spec.preprocess, input_size, input_size, config.base_weights,
             f", pooled at {cut}" if cut else "")
    return base


def _cut_base(base: keras.Model, layer_name: str, base_name: str) -> keras.Model:
    """The base up to `layer_name`, global-average pooled: still one nested keras.Model, so
    freezing, calibration and saving treat it like a whole base."""
    names = [layer.name for layer in base.layers]
    if layer_name not in names:
        close = difflib.get_close_matches(layer_name, names, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ModelError(f"base_output_layer {layer_name!r} is not a layer of "
                         f"{base_name}{hint}")
    output = base.get_layer(layer_name).output
    pooled = keras.layers.GlobalAveragePooling2D(name="cut_pool")(output)
    return keras.Model(base.inputs, pooled, name=base.name)


def build_model(config: Config) -> keras.Model:
    size = config.model_input_size
    inputs = keras.Input((size, size, 3), name="image")
    x = Preprocess(BASES[config.base_model_name].preprocess, config.resize_method,
                   name="preprocess")(inputs)
    x = build_base(config, size)(x)
    x = keras.layers.Dropout(config.dropout_rate, name="dropout")(x)
    # float32 softmax even under mixed precision: fp16 probabilities make the EMD noisy.
    outputs = keras.layers.Dense(N_BINS, activation="softmax", dtype="float32", name="scores")(x)
    return keras.Model(inputs, outputs, name=f"nima_{config.base_model_name}")


def base_of(model: keras.Model) -> keras.Model:
    """The nested keras.applications model inside a NIMA model."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ModelError(f"model {model.name!r} has no nested base model")


def set_base_trainable(model: keras.Model, trainable: bool) -> None:
    # A frozen BatchNormalization runs in inference mode in Keras 3, which is what phase 1 needs.
    base_of(model).trainable = trainable


def load_model(path: str | Path) -> keras.Model:
    """Load a `.keras` NIMA model without executing code from the file (safe mode)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:
        text = str(e)
        if "safe_mode" in text:  # Keras' advice (pass safe_mode=False) is not for CLI users
            raise ModelError(f"model {path} contains Python code (e.g. a Lambda layer) and is "
                             "refused: nima never runs code from a model file") from None
        # Keras puts the real cause after a dump of the whole config.
        why = text.rsplit("Exception encountered:", 1)[-1].strip().splitlines() or [repr(e)]
        raise ModelError(f"cannot load model {path}: {why[0][:300]}") from None


def model_resize(model: keras.Model) -> str:
    """How the model's input pixels are made (`Preprocess.resize`); "bilinear" without one."""
    for layer in model.layers:
        if isinstance(layer, Preprocess):
            return layer.resize
    return "bilinear"


def model_input_size(model: keras.Model) -> int:
    shape = model.input_shape
    if shape[1] is None or shape[1] != shape[2]:
        raise ModelError(f"model input must be square with a fixed size, got {shape}")
    return int(shape[1])
