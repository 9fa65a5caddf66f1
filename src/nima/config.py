"""Training configuration: a typed dataclass loaded from JSON and validated on load.

Configs are data (big_vision style): a JSON file per base model and task under
`models/<BaseModel>/config_{aesthetic,technical}_{cpu,gpu}.json`. Every key is checked: an
unknown key, a wrong type or an impossible value is a `ConfigError` that names the key, so a
typo such as `"learning_rate_dens"` fails before any image is decoded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nima.errors import ConfigError

DISTRIBUTIONS = ("auto", "mirrored", "multi_worker", "none")
# How a model's input pixels are made from a decoded image (nima.images says how each works).
# Here, free of Pillow and NumPy, because the Docker launcher validates configs without them.
RESIZES = ("bilinear", "nearest")
TASKS = ("aesthetic", "technical")
MAX_FILE_BYTES = 1 << 20  # a config is a few hundred bytes


@dataclass(frozen=True)
class BaseSpec:
    preprocess: str  # "tf" [-1, 1] | "torch" ImageNet mean/std | "caffe" BGR minus mean | "none"
    input_size: int


def _family(names: list[str], preprocess: str, size: int | list[int]) -> dict[str, BaseSpec]:
    sizes = size if isinstance(size, list) else [size] * len(names)
    return {n: BaseSpec(preprocess, s) for n, s in zip(names, sizes)}


# The keras.applications models a config may name, with their preprocessing (used by
# nima.model) and default input side. The table lives here, free of Keras, so that a config
# naming an unknown base, or a resize_size below the base's default input, fails on load,
# not after every image has been probed.
# "none" families rescale inside the model itself.
BASES: dict[str, BaseSpec] = {
    **_family(["MobileNet", "MobileNetV2"], "tf", 224),
    **_family(["MobileNetV3Small", "MobileNetV3Large"], "none", 224),
    **_family(["InceptionV3", "InceptionResNetV2", "Xception"], "tf", 299),
    **_family(["ResNet50", "ResNet101", "ResNet152"], "caffe", 224),
    **_family(["ResNet50V2", "ResNet101V2", "ResNet152V2"], "tf", 224),
    **_family(["VGG16", "VGG19"], "caffe", 224),
    **_family(["DenseNet121", "DenseNet169", "DenseNet201"], "torch", 224),
    **_family(["NASNetMobile", "NASNetLarge"], "tf", [224, 331]),
    **_family([f"EfficientNetB{i}" for i in range(8)], "none",
              [224, 240, 260, 300, 380, 456, 528, 600]),
    **_family(["EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2", "EfficientNetV2B3",
               "EfficientNetV2S", "EfficientNetV2M", "EfficientNetV2L"], "none",
              [224, 240, 260, 300, 384, 480, 480]),
    **_family(["ConvNeXtTiny", "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge",
               "ConvNeXtXLarge"], "none", 224),
}


# Keys of idealo's image-quality-assessment configs, which users bring along, and what
# replaces each here.
IDEALO_KEYS = {
    "train_env": "remove it (where training runs is chosen on the command line)",
    "docker_image": "remove it (./train-local builds its image; --gpu picks the GPU one)",
    "existing_weights": "remove it and pass the weights to nima train --init-model",
    "n_classes": "remove it (NIMA predicts 10 bins)",
    "l2_reg": "remove it (no L2 regularisation here; NIMA's head uses dropout)",
    "multiprocessing_data_load": "remove it (tf.data decodes in parallel on every core)",
    "num_workers_data_load": "remove it (tf.data decodes in parallel on every core)",
    "img_format": "remove it (any format Pillow reads is found by its image_id)",
}


@dataclass(frozen=True)
class Config:
    """All hyper-parameters of one training run. Field names are the JSON keys."""

    base_model_name: str
    # Extra constructor arguments for the keras.applications model, e.g. {"alpha": 0.5}.
    base_model_args: dict = field(default_factory=dict)
    # "imagenet" (Keras downloads and caches it), null (random init) or a path to a weights file.
    base_weights: str | None = "imagenet"
    # Name of the base layer whose output is global-average pooled into the head; null pools
    # the whole base. Cutting at a middle block keeps the low/mid-level features technical
    # quality depends on (blur, noise, JPEG blocks) and drops the cost of the late blocks.
    base_output_layer: str | None = None
    # Square input side of the network; null means the base model's own default (224, 299, ...).
    input_size: int | None = None
    # Training images are resized to resize_size x resize_size, then randomly cropped to
    # input_size (NIMA: 256 -> 224). Validation and prediction resize straight to input_size.
    resize_size: int | None = 256
    # How images are resized to resize_size / input_size (RESIZES): "bilinear"
    # (DCT draft + Pillow BILINEAR) or "nearest" (full decode + Pillow NEAREST, Keras 2's
    # load_img: keep it when fine-tuning a model trained that way). Saved with the model.
    resize_method: str = "bilinear"
    # Momentum of the base's BatchNormalization moving statistics; null keeps the base's own
    # (0.99 or 0.999). From random init (base_weights null) the statistics start at (0, 1) and
    # lag far behind short runs, so validation sees a different network than training: 0.9
    # lets them converge within a few hundred steps.
    batchnorm_momentum: float | None = None
    random_crop: bool = True
    horizontal_flip: bool = True
    task: str = "aesthetic"
    dropout_rate: float = 0.75
    batch_size: int = 96
    epochs_train_dense: int = 5
    learning_rate_dense: float = 1e-3
    # Legacy Keras `decay`: lr_t = lr / (1 + decay * step), implemented as InverseTimeDecay.
    decay_dense: float = 0.0
    epochs_train_all: int = 9
    learning_rate_all: float = 3e-5
    decay_all: float = 2.3e-5
    # Exponent r of the EMD loss; NIMA uses r = 2 (squared EMD).
    emd_r: float = 2.0
    validation_fraction: float = 0.05
    seed: int = 42
    # Training refuses to start if more than this fraction of label rows has no readable image.
    max_missing_fraction: float = 0.05
    distribution: str = "auto"
    mixed_precision: bool = False

    def __post_init__(self) -> None:
        _check_types(self)
        _check_values(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> "Config":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)
        idealo = [k for k in unknown if k in IDEALO_KEYS]
        if idealo:
            raise ConfigError(
                f"{source}: key {idealo[0]!r} belongs to idealo's image-quality-assessment "
                f"config: {IDEALO_KEYS[idealo[0]]} (docs/migrating.md)")
        if unknown:
            raise ConfigError(
                f"{source}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(known))})"
            )
        if "base_model_name" not in data:
            raise ConfigError(f"{source}: missing required key 'base_model_name'")
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        from nima.files import read_json

        path = Path(path)
        data = read_json(path, "config file", MAX_FILE_BYTES, ConfigError)
        return cls.from_dict(data, source=str(path))

    @property
    def model_input_size(self) -> int:
        """The network's input side: input_size, or the base model's default when null."""
        return self.input_size or BASES[self.base_model_name].input_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from nima.files import write_json

        write_json(path, self.to_dict())

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


def _matches(value: Any, annotation: Any) -> bool:
    """isinstance() for the few annotation shapes Config uses (X, X | None, dict)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        # JSON has one number type: accept ints for floats, but never booleans.
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               dict: "an object"}


def _check_types(cfg: Config) -> None:
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        annotation = hints[f.name]
        if not _matches(value, annotation):
            args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
            expected = " or ".join(_TYPE_NAMES.get(a, getattr(a, "__name__", str(a))) for a in args)
            if type(None) in typing.get_args(annotation):
                expected += " or null"
            raise ConfigError(f"key {f.name!r} must be {expected}, got {json.dumps(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"key {f.name!r} must be finite, got {value}")


def _check_values(cfg: Config) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"key {key!r} {why}, got {json.dumps(getattr(cfg, key))}")

    if cfg.base_model_name not in BASES:
        raise bad("base_model_name", "must be one of the supported keras.applications models ("
                  + ", ".join(sorted(BASES)) + ")")
    if cfg.base_output_layer is not None and not cfg.base_output_layer.strip():
        raise bad("base_output_layer", "must be a layer name of the base model or null")
    if cfg.input_size is not None and not 32 <= cfg.input_size <= 2048:
        raise bad("input_size", "must be between 32 and 2048")
    if cfg.resize_size is not None and not 32 <= cfg.resize_size <= 4096:
        raise bad("resize_size", "must be between 32 and 4096")
    # Training crops input_size pixels out of resize_size: with input_size null that is the
    # base's own default, e.g. 299 for InceptionV3, more than the default resize_size 256.
    # Without random_crop, resize_size is unused (images are resized to the input size).
    if (cfg.random_crop and cfg.resize_size is not None
            and cfg.resize_size < cfg.model_input_size):
        size = (f"input_size ({cfg.input_size})" if cfg.input_size is not None else
                f"the input size of {cfg.base_model_name} ({cfg.model_input_size}; "
                "input_size is null)")
        raise bad("resize_size", f"must be at least {size}")
    if cfg.resize_method not in RESIZES:
        raise bad("resize_method", f"must be one of {', '.join(RESIZES)}")
    if cfg.batchnorm_momentum is not None and not 0.0 <= cfg.batchnorm_momentum < 1.0:
        raise bad("batchnorm_momentum", "must be in [0, 1)")
    if cfg.task not in TASKS:
        raise bad("task", f"must be one of {', '.join(TASKS)}")
    if not 0.0 <= cfg.dropout_rate < 1.0:
        raise bad("dropout_rate", "must be in [0, 1)")
    if not 1 <= cfg.batch_size <= 65536:
        raise bad("batch_size", "must be between 1 and 65536")
    for key in ("epochs_train_dense", "epochs_train_all"):
        if not 0 <= getattr(cfg, key) <= 100_000:
            raise bad(key, "must be between 0 and 100000")
    if not 0 <= cfg.seed < 2**31:
        raise bad("seed", "must be between 0 and 2**31 - 1")
    if cfg.epochs_train_dense + cfg.epochs_train_all < 1:
        raise ConfigError("epochs_train_dense + epochs_train_all must be at least 1")
    for key in ("learning_rate_dense", "learning_rate_all"):
        if not 0.0 < getattr(cfg, key) <= 10.0:
            raise bad(key, "must be in (0, 10]")
    for key in ("decay_dense", "decay_all"):
        if getattr(cfg, key) < 0:
            raise bad(key, "must not be negative")
    if not 0.5 <= cfg.emd_r <= 10:
        raise bad("emd_r", "must be between 0.5 and 10")
    if not 0.0 <= cfg.validation_fraction < 1.0:
        raise bad("validation_fraction", "must be in [0, 1)")
    if not 0.0 <= cfg.max_missing_fraction <= 1.0:
        raise bad("max_missing_fraction", "must be in [0, 1]")
    if cfg.distribution not in DISTRIBUTIONS:
        raise bad("distribution", f"must be one of {', '.join(DISTRIBUTIONS)}")
    for k in cfg.base_model_args:
        if k in ("include_top", "weights", "input_shape", "input_tensor", "pooling", "classes"):
            raise ConfigError(f"key 'base_model_args' must not set {k!r}: the toolkit sets it")
