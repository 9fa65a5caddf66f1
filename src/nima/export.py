"""Serving artefacts from a trained NIMA model: SavedModel (TF Serving), TFLite and ONNX.

Every artefact returns the same three outputs as `nima predict`, computed inside the graph:

    predictions            (N, 10) float32  probabilities of ratings 1..10
    mean_score_prediction  (N,)    float32  sum_k k * p_k
    sd_score_prediction    (N,)    float32  sqrt(sum_k k^2 * p_k - mean^2)

Inputs:
  - SavedModel `serving_default`: `image_bytes`, a batch of encoded images (tf.string: JPEG,
    PNG, GIF, BMP), decoded and resized in the graph the way `nima.images.load_image` does it
    (see `decode_image`); what a TF Serving client sends as base64 in the REST API.
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

from nima import files, images
from nima.errors import ImageError, NimaError
from nima.model import model_input_size
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


def _draft_ratio_index(shape: tf.Tensor, size: int) -> tf.Tensor:
    """Index into (1, 2, 4, 8) of the JPEG DCT downscale Pillow's `draft` would choose."""
    scale = tf.minimum(shape[0] // size, shape[1] // size)
    return (tf.cast(scale >= 2, tf.int32) + tf.cast(scale >= 4, tf.int32)
            + tf.cast(scale >= 8, tf.int32))


def decode_image(data: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded image bytes -> float32 (size, size, 3) RGB 0..255, as `images.load_image`.

    Mirrors the Pillow path step by step: JPEGs are decoded at the same DCT scale (1/2, 1/4,
    1/8) that Pillow's draft mode picks, with the accurate integer IDCT Pillow uses; alpha is
    composited on white; the resize is bilinear with antialiasing (Pillow's BILINEAR widens
    its triangle filter when downscaling, and so does `antialias=True`) and is rounded to
    uint8 as Pillow does. Not mirrored: EXIF orientation (TF ignores EXIF), CMYK JPEGs and
    16-bit PNGs (TF's conversions differ slightly). docs/export.md gives the measured gap.
    """

    def jpeg() -> tf.Tensor:
        index = _draft_ratio_index(tf.io.extract_jpeg_shape(data), size)
        return tf.switch_case(index, [
            (lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r,
                                           dct_method="INTEGER_ACCURATE"))
            for r in (1, 2, 4, 8)])

    def png() -> tf.Tensor:
        rgba = tf.cast(tf.io.decode_png(data, channels=4), tf.float32)
        rgb, alpha = rgba[..., :3], rgba[..., 3:] / 255.0
        # Pillow's alpha_composite on a white background, rounded back to 8 bits.
        return tf.cast(tf.round(rgb * alpha + 255.0 * (1.0 - alpha)), tf.uint8)

    def other() -> tf.Tensor:  # GIF (first frame), BMP
        return tf.io.decode_image(data, channels=3, expand_animations=False)

    is_png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")
    image = tf.cond(tf.io.is_jpeg(data), jpeg, lambda: tf.cond(is_png, png, other))
    image.set_shape((None, None, 3))
    return _pillow_bilinear(image, size)


def _round_uint8(x: tf.Tensor) -> tf.Tensor:
    # Pillow rounds half up (fixed point + 0.5), tf.round rounds half to even.
    return tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)


def _pillow_bilinear(image: tf.Tensor, size: int) -> tf.Tensor:
    """Pillow's `resize((size, size), BILINEAR)` for a uint8 (H, W, 3) image, as float32.

    Pillow resamples in two passes, horizontal then vertical, rounding to 8 bits (half up)
    after each; one float pass with TF's rounding leaves ~15% of values one level off, this
    under 2% (docs/export.md).
    """
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    x = tf.cast(image, tf.float32)

    def horizontal() -> tf.Tensor:
        return _round_uint8(tf.image.resize(x, (h, size), "bilinear", antialias=True))

    x = tf.cond(tf.equal(w, size), lambda: x, horizontal)

    def vertical() -> tf.Tensor:
        return _round_uint8(tf.image.resize(x, (size, size), "bilinear", antialias=True))

    x = tf.cond(tf.equal(h, size), lambda: x, vertical)
    x.set_shape((size, size, 3))
    return x


def serving_functions(model) -> tuple[Callable, Callable, int]:
    """(from_bytes, from_floats, size): the two serving entry points of a NIMA model."""
    size = model_input_size(model)

    def from_floats(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return score_outputs(tf.cast(model(images, training=False), tf.float32))

    def from_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(lambda b: decode_image(b, size), image_bytes,
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
                          limit: int = MAX_REPRESENTATIVE_IMAGES) -> list[np.ndarray]:
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
            out.append(images.load_image(path, size)[None].astype(np.float32))
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
                  representative_source: str | Path | None = None) -> None:
    """Reject impossible combinations before a model is loaded (which takes seconds)."""
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
        if not Path(representative_source).exists():
            raise ExportError(f"representative images not found: {representative_source}")
    if fmt == "onnx":
        try:
            import tf2onnx  # noqa: F401
        except ImportError:
            raise ExportError("ONNX export needs tf2onnx: pip install 'nima[export]'") from None


def export(model, fmt: str, output: str | Path, quantize: str | None = None,
           representative_source: str | Path | None = None) -> Path:
    """Write `model` as `fmt` to `output`; the one entry point `nima export` calls."""
    check_options(fmt, quantize, representative_source)
    if fmt == "savedmodel":
        return export_savedmodel(model, output)
    if fmt == "onnx":
        return export_onnx(model, output, quantize)
    rep = None
    if representative_source is not None:
        rep = representative_images(representative_source, model_input_size(model))
        log.info("full int8 quantization calibrated on %d images", len(rep))
    return export_tflite(model, output, quantize, rep)


@contextlib.contextmanager
def _atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path`, moved into place only when complete.

    Refuses to replace a non-empty directory: a SavedModel version folder is never
    overwritten by accident (TF Serving may be serving it).
    """
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ExportError(f"output {path} already exists; remove it or choose another path "
                          "(e.g. the next version number for TF Serving)")
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
