"""Keras 2 HDF5 weights of NIMA models trained elsewhere (idealo's image-quality-assessment and
the other Keras NIMA repositories): read them into this toolkit's model.

Those projects build the same network, flattened: the keras.applications base (average
pooled), Dropout, Dense(10, softmax), with the base's `preprocess_input` applied outside the
model. Their `save_weights(...).hdf5` files list every layer in model order, each with its
arrays in the order Keras keeps them. This toolkit's model nests the base and carries its
preprocessing as a layer, so the arrays are matched by position: the file's layers that have
weights, in order, are the base's layers that have weights, in order, then the head's Dense.
Position rather than name, because Keras 2 numbered the generated layer names of many bases
(`conv2d_17`) per session; every array's shape is still checked.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from nima.config import Config
from nima.errors import ModelError

log = logging.getLogger(__name__)


def _strings(group, name: str) -> list[str]:
    """A list attribute, also when Keras split a long one into `name0`, `name1`, ..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, k = [], 0
        while f"{name}{k}" in group.attrs:
            values += list(group.attrs[f"{name}{k}"])
            k += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _weights_group(f):
    # save_weights() writes the layers at the root; model.save() under "model_weights".
    if "layer_names" in f.attrs or "layer_names0" in f.attrs:
        return f
    if "model_weights" in f:
        return f["model_weights"]
    return None


def is_keras2_weights(path: str | Path) -> bool:
    """True for a Keras 2 style HDF5 weights or model file (not Keras 3's `.weights.h5`)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return _weights_group(f) is not None
    except (OSError, ValueError):
        return False


def keras_version(path: str | Path) -> str | None:
    """The Keras version that wrote the file (its `keras_version` attribute), if recorded."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("keras_version")
    except (OSError, ValueError):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf8", "replace")
    return str(value) if value is not None else None


def _before_keras_2_2(version: str | None) -> bool:
    try:
        major, minor = (int(x) for x in (version or "").split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (2, 2)


def read_layers(path: str | Path) -> list[tuple[str, list[np.ndarray]]]:
    """(layer name, arrays) for every layer of the file that has weights, in model order."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            group = _weights_group(f)
            if group is None:
                raise ModelError(f"{path} is not a Keras 2 HDF5 weights file (no layer_names)")
            layers = []
            for name in _strings(group, "layer_names"):
                g = group[name]
                arrays = [np.asarray(g[w]) for w in _strings(g, "weight_names")]
                if arrays:
                    layers.append((name, arrays))
            return layers
    except OSError as e:
        raise ModelError(f"cannot read {path} as HDF5: {str(e).splitlines()[0]}") from None
    except KeyError as e:
        raise ModelError(f"{path} is damaged: it lists a layer or weight it lacks ({e})") from None


def load_keras2_weights(path: str | Path, config: Config):
    """This toolkit's model for `config`, with the weights of a Keras 2 NIMA file. The model
    records `config.resize_method`: "nearest" is what Keras 2's `load_img` gave those models
    in training (nima.resolve and `nima import-keras2` set it unless told otherwise)."""
    from nima.model import base_of, build_model

    layers = read_layers(path)  # a missing or foreign file fails before the model is built
    model = build_model(config.replace(base_weights=None))
    base = base_of(model)
    targets = [layer for layer in base.layers if layer.weights]
    targets.append(model.get_layer("scores"))
    where = f"{path} does not fit {config.base_model_name} {config.base_model_args or ''}".rstrip()
    if len(layers) != len(targets):
        raise ModelError(f"{where}: it has {len(layers)} layers with weights, the model "
                         f"{len(targets)} (base layers plus the Dense head)")
    for (name, arrays), layer in zip(layers, targets):
        shapes = [tuple(a.shape) for a in arrays]
        expected = [tuple(w.shape) for w in layer.weights]
        if shapes != expected:
            raise ModelError(f"{where}: layer {name!r} has weights of shapes {shapes}, the "
                             f"model's {layer.name!r} {expected} (wrong base model, alpha or "
                             "input size?)")
        layer.set_weights(arrays)
    log.info("read %d layers of Keras 2 weights from %s into %s", len(layers), path,
             config.base_model_name)
    version = keras_version(path)
    if config.base_model_name == "MobileNet" and _before_keras_2_2(version):
        model = _symmetric_padding(model)
        log.info("%s was saved by Keras %s: MobileNet padded every convolution by one pixel "
                 "on all sides then, and so does this model", path, version)
    return model


def _symmetric_padding(model):
    """The same model with MobileNet's 3x3 convolutions padded one pixel on all sides.

    Keras up to 2.1 built MobileNet with ZeroPadding2D(1) and "valid" before every 3x3
    convolution; from 2.2 on (tf_keras and Keras 3 too) a stride-2 convolution is padded at
    the bottom and right only (conv1 by padding="same"), which moves its sampling grid by one
    pixel. Output shapes are the same, so weights saved by Keras 2.1 load into either
    network, but only the old padding gives their scores (idealo's aesthetic model: up to 0.4
    apart in mean score on real photos). The model is rebuilt from its edited config so the
    padding is saved with it.
    """
    import keras

    config = model.get_config()
    layers = _layer_list(config, "conv1")
    conv1 = next(layer for layer in layers if layer["name"] == "conv1")
    pad = {"module": "keras.layers", "class_name": "ZeroPadding2D", "registered_name": None,
           "name": "conv1_pad", "inbound_nodes": conv1["inbound_nodes"],
           "config": {"name": "conv1_pad", "trainable": True, "dtype": conv1["config"]["dtype"],
                      "padding": [[1, 1], [1, 1]], "data_format": "channels_last"}}
    history = conv1["inbound_nodes"][0]["args"][0]["config"]
    n, h, w, c = history["shape"]
    conv1["inbound_nodes"] = [{"args": [{"class_name": "__keras_tensor__", "config": {
        **history, "shape": [n, h + 2, w + 2, c], "keras_history": ["conv1_pad", 0, 0]}}],
        "kwargs": {}}]
    conv1["config"]["padding"] = "valid"
    conv1.pop("build_config", None)
    layers.insert(layers.index(conv1), pad)
    for layer in layers:
        if layer["class_name"] == "ZeroPadding2D":
            layer["config"]["padding"] = [[1, 1], [1, 1]]
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _layer_list(node, name: str) -> list:
    """The `layers` list of the (nested) functional config that holds layer `name`."""
    if isinstance(node, dict):
        layers = node.get("layers")
        if isinstance(layers, list) and any(isinstance(x, dict) and x.get("name") == name
                                            for x in layers):
            return layers
        children = list(node.values())
    else:
        children = node if isinstance(node, list) else []
    for child in children:
        if isinstance(child, (dict, list)):
            try:
                return _layer_list(child, name)
            except LookupError:
                pass
    raise LookupError(name)
