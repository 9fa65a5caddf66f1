"""Serving artefacts from a trained NIMA model: SavedModel (TF Serving), TFLite and ONNX.

Every artefact returns the same three outputs as `nima predict`, computed inside the graph:

    predictions            (N, 10) float32  probabilities of ratings 1..10
    mean_score_prediction  (N,)    float32  sum_k k * p_k
    sd_score_prediction    (N,)    float32  sqrt(sum_k k^2 * p_k - mean^2)

Inputs:
  - SavedModel `serving_default`: `image_bytes`, a batch of encoded images (tf.string: JPEG,
    PNG, GIF, BMP), decoded and resized in the graph the way `nima.images.load_image` does it
    with the model's own resize, bilinear or nearest (`nima.tfimages`); what a TF Serving
    client sends as base64 in the REST API.
  - SavedModel `serving_float`, TFLite and ONNX: `images`, float32 (N, size, size, 3) RGB
    0..255, already resized. The model's own preprocessing (e.g. MobileNet's [-1, 1] scaling)
    is inside the graph, so every format takes plain pixels.

Quantization, TFLite: fp16 stores weights as float16; int8 without representative images is
dynamic-range quantization (int8 weights, float activations); int8 with representative
images is full integer quantization (activations calibrated on those images), still with a
float32 input and output so the interface does not change. ONNX: int8 only, onnxruntime's
dynamic quantization.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from nima import files, images, tfimages
from nima.errors import ImageError, NimaError
from nima.model import model_input_size, model_resize
from nima.scores import N_BINS

log = logging.getLogger(__name__)

FORMATS = ("savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("fp16", "int8")
OUTPUTS = ("predictions", "mean_score_prediction", "sd_score_prediction")
ONNX_OPSET = 17
# Calibration images for full-int8 quantization: more adds time, not accuracy, past a few 100.
MAX_REPRESENTATIVE_IMAGES = 200


class ExportError(NimaError):
    """An export cannot be written (bad option combination, converter failure, output exists)."""


# --- graph pieces shared by all formats -------------------------------------------------------

def score_outputs(probs: tf.Tensor) -> dict[str, tf.Tensor]:
    """(N, 10) probabilities -> the three named outputs, as in `nima.scores`."""
    ratings = tf.range(1, N_BINS + 1, dtype=probs.dtype)
    mean = tf.reduce_sum(probs * ratings, axis=-1)
    var = tf.reduce_sum(probs * ratings**2, axis=-1) - mean**2
    return {"predictions": probs, "mean_score_prediction": mean,
            "sd_score_prediction": tf.sqrt(tf.maximum(var, 0.0))}


def serving_functions(model) -> tuple[Callable, Callable, int]:
    """(from_bytes, from_floats, size): the two serving entry points of a NIMA model."""
    size, resize = model_input_size(model), model_resize(model)

    def from_floats(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return score_outputs(tf.cast(model(images, training=False), tf.float32))

    def from_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(lambda b: tfimages.decode_image(b, size, resize), image_bytes,
                           fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32))
        return from_floats(pixels)

    return from_bytes, from_floats, size


def _float_spec(size: int) -> tf.TensorSpec:
    return tf.TensorSpec((None, size, size, 3), tf.float32, name="images")


# --- formats ----------------------------------------------------------------------------------

def export_savedmodel(model, output: str | Path) -> Path:
    """Write a SavedModel directory with `serving_default` (bytes) and `serving_float`."""
    import keras

    output = Path(output)
    from_bytes, from_floats, size = serving_functions(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", from_bytes,
                         input_signature=[tf.TensorSpec((None,), tf.string, name="image_bytes")])
    archive.add_endpoint("serving_float", from_floats, input_signature=[_float_spec(size)])
    with _atomic_dir(output) as tmp:
        archive.write_out(str(tmp), verbose=False)
    return output


def representative_images(source: str | Path | Sequence[str | Path], size: int,
                          limit: int = MAX_REPRESENTATIVE_IMAGES,
                          resize: str = "bilinear") -> list[np.ndarray]:
    """Up to `limit` decoded images (float32 (1, size, size, 3)) for int8 calibration."""
    paths: Iterable[Path]
    if isinstance(source, (str, Path)):
        paths = images.iter_image_files(source)
    else:
        paths = (Path(p) for p in source)
    out = []
    for path in paths:
        if len(out) >= limit:
            break
        try:
            out.append(images.load_image(path, size, resize)[None].astype(np.float32))
        except ImageError as e:
            log.warning("representative images: skipping %s", e)
    if not out:
        raise ExportError(f"no readable representative images in {source}")
    return out


def tflite_bytes(model, quantize: str | None = None,
                 representative: Sequence[np.ndarray] | None = None) -> bytes:
    """Convert to a TFLite flatbuffer with one signature, `serving_default` (float input)."""
    if quantize not in (None, *QUANTIZATIONS):
        raise ExportError(f"unknown quantization {quantize!r}; choose {' or '.join(QUANTIZATIONS)}")
    if representative is not None and quantize != "int8":
        raise ExportError("representative images are only used with int8 quantization")
    import keras

    # Through a SavedModel, as keras' own LiteRT export does: the converter then freezes the
    # variables (from a concrete function it would keep unfrozen READ_VARIABLE ops).
    _, from_floats, size = serving_functions(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", from_floats, input_signature=[_float_spec(size)])
    with tempfile.TemporaryDirectory() as tmp:
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, ["serving_default"])
        return _convert(converter, quantize, representative)


def _convert(converter, quantize: str | None, representative) -> bytes:
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8" and representative is not None:
        samples = list(representative)
        converter.representative_dataset = lambda: ([x] for x in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        return converter.convert()
    except Exception as e:
        raise ExportError(f"TFLite conversion failed: {str(e).splitlines()[0][:300]}") from None


def export_tflite(model, output: str | Path, quantize: str | None = None,
                  representative: Sequence[np.ndarray] | None = None) -> Path:
    data = tflite_bytes(model, quantize, representative)
    with files.atomic_open(output, "wb") as f:
        f.write(data)
    return Path(output)


def export_onnx(model, output: str | Path, quantize: str | None = None,
                opset: int = ONNX_OPSET) -> Path:
    """Convert with tf2onnx (input `images`, the three named outputs); `quantize="int8"`
    then applies onnxruntime's dynamic quantization (int8 weights, activations quantized on
    the fly)."""
    try:
        import tf2onnx
    except ImportError:
        raise ExportError("ONNX export needs tf2onnx: pip install 'nima[export]'") from None
    if quantize not in (None, "int8"):
        raise ExportError(f"ONNX export supports --quantize int8 only, not {quantize}")
    _, from_floats, size = serving_functions(model)
    spec = (_float_spec(size),)
    fn = tf.function(from_floats, input_signature=spec)
    output = Path(output)
    with files.atomic_path(output, suffix=".onnx") as tmp, tempfile.TemporaryDirectory() as work:
        fp32 = Path(work) / "fp32.onnx" if quantize else tmp
        try:
            tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset,
                                          output_path=str(fp32))
        except Exception as e:
            raise ExportError(f"ONNX conversion failed: {str(e).splitlines()[0][:300]}") from None
        if quantize:
            try:
                from onnxruntime.quantization import QuantType, quantize_dynamic
            except ImportError:
                raise ExportError("ONNX quantization needs onnxruntime: "
                                  "pip install 'nima[export]'") from None
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)
    return output


def check_options(fmt: str, quantize: str | None = None,
                  representative_source: str | Path | None = None,
                  output: str | Path | None = None) -> None:
    """Reject impossible combinations and outputs before a model is loaded (seconds)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantize!r}; choose {' or '.join(QUANTIZATIONS)}")
    if quantize is not None and fmt == "savedmodel":
        raise ExportError("--quantize applies to tflite and onnx, not savedmodel")
    if quantize == "fp16" and fmt == "onnx":
        raise ExportError("ONNX export supports --quantize int8 only (dynamic quantization)")
    if representative_source is not None:
        if quantize != "int8":
            raise ExportError("--representative-images needs --quantize int8")
        if fmt != "tflite":  # onnxruntime's int8 is dynamic: nothing to calibrate
            raise ExportError("--representative-images applies to tflite only (ONNX int8 "
                              "quantization is dynamic)")
        if not Path(representative_source).exists():
            raise ExportError(f"representative images not found: {representative_source}")
    if output is not None:
        _check_output(Path(output), fmt)
    if fmt == "onnx":
        try:
            import tf2onnx  # noqa: F401
        except ImportError:
            raise ExportError("ONNX export needs tf2onnx: pip install 'nima[export]'") from None


def export(model, fmt: str, output: str | Path, quantize: str | None = None,
           representative_source: str | Path | None = None) -> Path:
    """Write `model` as `fmt` to `output`; the one entry point `nima export` calls."""
    check_options(fmt, quantize, representative_source, output)
    if fmt == "savedmodel":
        return export_savedmodel(model, output)
    if fmt == "onnx":
        return export_onnx(model, output, quantize)
    rep = None
    if representative_source is not None:
        rep = representative_images(representative_source, model_input_size(model),
                                    resize=model_resize(model))
        log.info("full int8 quantization calibrated on %d images", len(rep))
    return export_tflite(model, output, quantize, rep)


def _check_output(path: Path, fmt: str) -> None:
    """A SavedModel never replaces a non-empty directory (TF Serving may be serving that
    version); a .tflite/.onnx file is replaced atomically, but never a directory."""
    if fmt == "savedmodel":
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ExportError(f"output {path} already exists; remove it or choose another "
                              "path (e.g. the next version number for TF Serving)")
    elif path.is_dir():
        raise ExportError(f"output {path} is a directory; --format {fmt} writes a file")


@contextlib.contextmanager
def _atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path`, moved into place only when complete."""
    _check_output(path, "savedmodel")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise files.WriteError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        yield tmp
        os.replace(tmp, path)  # rename(2) replaces an empty directory atomically
    except OSError as e:
        raise files.WriteError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
