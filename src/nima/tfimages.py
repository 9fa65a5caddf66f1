"""`nima.images` in TensorFlow ops: encoded image bytes decoded and resized inside a graph
exactly as the toolkit's Pillow path does it, pixel for pixel, so the SavedModel's bytes
signature (export.py) scores a file as `nima predict` does. docs/export.md says what is
mirrored, how it was measured, and what is not (CMYK JPEGs, 16-bit PNGs, EXIF orientation
outside JPEGs).
"""

from __future__ import annotations

import tensorflow as tf

from nima import images


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
