"""Serving artefacts from a trained NIMA model: SavedModel (TF Serving), TFLite and ONNX.

Every artefact returns the same three outputs as `nima predict`, computed inside the graph:

    predictions            (N, 10) float32  probabilities of ratings 1..10
    mean_score_prediction  (N,)    float32  sum_k k * p_k
    sd_score_prediction    (N,)    float32  sqrt(sum_k k^2 * p_k - mean^2)

Inputs:
  - SavedModel `serving_default`: `image_bytes`, a batch of encoded images (tf.string: JPEG,
    PNG, GIF, BMP), decoded and resized in the graph the way `nima.images.load_image` does it
    with the model's own resize, bilinear or nearest (see `decode_image`); what a TF Serving
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

from nima import files, images
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


def _draft_ratio_index(shape: tf.Tensor, size: int) -> tf.Tensor:
    """Index into (1, 2, 4, 8) of the JPEG DCT downscale Pillow's `draft` would choose."""
    scale = tf.minimum(shape[0] // size, shape[1] // size)
    return (tf.cast(scale >= 2, tf.int32) + tf.cast(scale >= 4, tf.int32)
            + tf.cast(scale >= 8, tf.int32))


def exif_orientation(data: tf.Tensor, max_entries: int = 64) -> tf.Tensor:
    """The EXIF orientation (1..8) of JPEG bytes; 1 when absent or malformed, as in Pillow.

    TensorFlow has no EXIF op, so this reads the bytes: the APP1 "Exif" segment in the first
    64 KiB, its TIFF header (byte order), IFD0's entries, tag 0x0112.
    """
    head = tf.io.decode_raw(tf.strings.substr(data, 0, 65536), tf.uint8)
    n = tf.shape(head)[0]
    b = tf.cast(tf.concat([head, tf.zeros([12 * max_entries + 32], tf.uint8)], 0), tf.int32)
    last = tf.shape(b)[0] - 1

    def at(pos: tf.Tensor) -> tf.Tensor:  # out-of-range offsets read a zero byte
        return tf.gather(b, tf.clip_by_value(pos, 0, last))

    pos = tf.range(n)
    marker = tf.equal(at(pos), 0xFF) & tf.equal(at(pos + 1), 0xE1)
    for k, c in enumerate(b"Exif\x00\x00"):
        marker &= tf.equal(at(pos + 4 + k), c)
    hits = tf.where(marker)[:, 0]

    def orientation() -> tf.Tensor:
        t = tf.cast(hits[0], tf.int32) + 10  # TIFF header: "II*\0" or "MM\0*"
        little = tf.equal(at(t), ord("I"))
        header_ok = tf.equal(at(t), at(t + 1)) & (little | tf.equal(at(t), ord("M")))

        def u16(p: tf.Tensor) -> tf.Tensor:
            return tf.where(little, at(p) + 256 * at(p + 1), 256 * at(p) + at(p + 1))

        def u32(p: tf.Tensor) -> tf.Tensor:
            return tf.where(little, u16(p) + 65536 * u16(p + 2), 65536 * u16(p) + u16(p + 2))

        ifd = t + u32(t + 4)
        entries = ifd + 2 + 12 * tf.range(max_entries)
        is_tag = (tf.range(max_entries) < u16(ifd)) & tf.equal(u16(entries), 0x0112)
        value = tf.reduce_max(tf.where(is_tag, u16(entries + 8), 0))
        return tf.where(header_ok & (value >= 1) & (value <= 8), value, 1)

    return tf.cond(tf.size(hits) > 0, orientation, lambda: tf.constant(1, tf.int32))


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Rotate/flip (H, W, C) as Pillow's `ImageOps.exif_transpose` does for tags 1..8."""
    def transpose(x):
        return tf.transpose(x, (1, 0, 2))

    return tf.switch_case(orientation - 1, [
        lambda: image,
        lambda: image[:, ::-1],                         # 2 mirrored
        lambda: image[::-1, ::-1],                      # 3 rotated 180
        lambda: image[::-1],                            # 4 flipped vertically
        lambda: transpose(image),                       # 5 transposed
        lambda: tf.image.rot90(image, 3),               # 6 rotated 90 clockwise
        lambda: tf.image.rot90(transpose(image), 2),    # 7 transversed
        lambda: tf.image.rot90(image, 1),               # 8 rotated 90 counter-clockwise
    ])


def decode_image(data: tf.Tensor, size: int, resize: str = "bilinear") -> tf.Tensor:
    """Encoded image bytes -> float32 (size, size, 3) RGB 0..255, as
    `images.load_image(path, size, resize)`.

    Reproduces the Pillow path pixel for pixel (tested): for "bilinear", JPEGs are decoded at
    the DCT scale (1/2, 1/4, 1/8) that Pillow's draft mode picks, for "nearest" in full, with
    the accurate integer IDCT Pillow uses, and turned by their EXIF orientation; alpha is
    composited on white; the resize is Pillow's own BILINEAR or NEAREST arithmetic
    (`_pillow_bilinear`, `_pillow_nearest`). Not mirrored: CMYK JPEGs, 16-bit PNGs (TF's
    conversions differ slightly) and EXIF orientation outside JPEGs (rare).
    """
    images.check_resize(resize)

    def jpeg() -> tf.Tensor:
        index = (_draft_ratio_index(tf.io.extract_jpeg_shape(data), size)
                 if resize == "bilinear" else tf.constant(0))
        image = tf.switch_case(index, [
            (lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r,
                                           dct_method="INTEGER_ACCURATE"))
            for r in (1, 2, 4, 8)])
        return apply_orientation(image, exif_orientation(data))

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
    return _pillow_bilinear(image, size) if resize == "bilinear" else _pillow_nearest(image, size)


def _nearest_index(n: tf.Tensor, out_size: int) -> tf.Tensor:
    """The source index of each output pixel in Pillow's NEAREST resize (ImagingScaleAffine):
    a float64 position that starts at scale/2 and grows by `scale` per pixel, truncated. The
    running sum (not (i + 0.5) * scale) matters: they differ in the last bit for some sizes."""
    scale = tf.cast(n, tf.float64) / out_size
    steps = tf.scan(lambda acc, _: acc + scale, tf.zeros([out_size - 1], tf.float64),
                    initializer=scale * 0.5)
    position = tf.concat([[scale * 0.5], steps], 0)
    return tf.minimum(tf.cast(position, tf.int32), tf.cast(n, tf.int32) - 1)


def _pillow_nearest(image: tf.Tensor, size: int) -> tf.Tensor:
    """Pillow's `resize((size, size), NEAREST)` of a uint8 (H, W, 3) image, as float32."""
    shape = tf.shape(image)
    x = tf.gather(image, _nearest_index(shape[0], size), axis=0)
    x = tf.gather(x, _nearest_index(shape[1], size), axis=1)
    x = tf.cast(x, tf.float32)
    x.set_shape((size, size, 3))
    return x


_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (Resample.c)


def _pillow_weights(in_size: tf.Tensor, out_size: int) -> tf.Tensor:
    """Pillow's BILINEAR coefficients as an (out, in) matrix of fixed-point integers.

    A transcription of Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: triangle
    filter widened by the downscale factor, taps [xmin, xmax) rounded as Pillow rounds them,
    normalised per output pixel, then scaled to 2^22 and rounded away from zero.
    """
    n = tf.cast(in_size, tf.float64)
    scale = n / out_size
    support = tf.maximum(scale, 1.0)  # bilinear support 1.0 times the filter scale
    center = (tf.range(out_size, dtype=tf.float64) + 0.5) * scale
    xmin = tf.maximum(tf.floor(center - support + 0.5), 0.0)
    xmax = tf.minimum(tf.floor(center + support + 0.5), n)
    x = tf.range(in_size, dtype=tf.float64)[None, :]
    w = tf.maximum(1.0 - tf.abs((x - center[:, None] + 0.5) / support), 0.0)
    w = tf.where((x >= xmin[:, None]) & (x < xmax[:, None]), w, 0.0)
    w = w / tf.reduce_sum(w, axis=1, keepdims=True)
    return tf.sign(w) * tf.floor(tf.abs(w) * 2.0**_PRECISION_BITS + 0.5)


def _pillow_bilinear(image: tf.Tensor, size: int) -> tf.Tensor:
    """Pillow's `resize((size, size), BILINEAR)` of a uint8 (H, W, 3) image, as float32.

    Pillow's fixed-point arithmetic, exactly (integers in float64, all < 2^53): one pass per
    axis, each rounded to 8 bits. tf.image.resize(antialias=True) has the same filter but
    float weights and one rounding at the end, which leaves ~15% of values one level off.
    """
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    x = tf.cast(image, tf.float64)

    def to_8bit(v: tf.Tensor) -> tf.Tensor:
        half = 2.0 ** (_PRECISION_BITS - 1)
        return tf.clip_by_value(tf.floor((v + half) / 2.0**_PRECISION_BITS), 0.0, 255.0)

    def horizontal(v: tf.Tensor) -> tf.Tensor:  # (H, W, C) x (size, W) -> (H, size, C)
        return tf.cond(tf.equal(tf.shape(v)[1], size), lambda: v, lambda: to_8bit(
            tf.einsum("hwc,ow->hoc", v, _pillow_weights(tf.shape(v)[1], size))))

    def vertical(v: tf.Tensor) -> tf.Tensor:
        return tf.cond(tf.equal(tf.shape(v)[0], size), lambda: v, lambda: to_8bit(
            tf.einsum("hwc,oh->owc", v, _pillow_weights(tf.shape(v)[0], size))))

    # Pillow 13 picks the pass order by the downscale factors (found by testing it on a grid
    # of shapes: vertical first exactly when 2 * fx < fy + 1); the order changes the
    # intermediate rounding, so it is mirrored too.
    fx = tf.maximum(tf.cast(w, tf.float64) / size, 1.0)
    fy = tf.maximum(tf.cast(h, tf.float64) / size, 1.0)
    x = tf.cond(2.0 * fx < fy + 1.0, lambda: horizontal(vertical(x)),
                lambda: vertical(horizontal(x)))
    x = tf.cast(x, tf.float32)
    x.set_shape((size, size, 3))
    return x


def serving_functions(model) -> tuple[Callable, Callable, int]:
    """(from_bytes, from_floats, size): the two serving entry points of a NIMA model."""
    size, resize = model_input_size(model), model_resize(model)

    def from_floats(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return score_outputs(tf.cast(model(images, training=False), tf.float32))

    def from_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(lambda b: decode_image(b, size, resize), image_bytes,
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
