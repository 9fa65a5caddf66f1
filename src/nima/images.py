"""Image files -> RGB uint8 arrays: the one decoder of the toolkit (training, evaluation,
prediction, the Python API, reports).

Pillow decodes every format it knows; EXIF orientation is applied; grayscale, 16-bit,
palette, RGBA (composited on white, as a viewer shows it) and CMYK become RGB; animations
give their first frame. Images of more than MAX_PIXELS are refused from the header alone,
before any pixel is decoded (decompression bombs).

How a decoded image becomes a model's square input is part of that model (`RESIZES`), since
a network learns the pixels it was trained on:
  - "bilinear" (this toolkit's own models): JPEGs decoded with Pillow's draft mode
    (DCT-domain downscaling, about twice as fast) when they are downscaled anyway, then
    Pillow BILINEAR to the square size;
  - "nearest" (Keras 2 `load_img(target_size=...)`, what idealo's and most Keras NIMA models
    were trained on): the full decode, then Pillow NEAREST.
"""
from __future__ import annotations

import logging
import os
import stat
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nima.config import RESIZES
from nima.errors import ImageError

log = logging.getLogger(__name__)

# 100 megapixels: a 12000x8000 photo is fine, a 30000x30000 bomb is not. Checked here, from
# the header, rather than by changing Pillow's process-wide Image.MAX_IMAGE_PIXELS (a library
# must not change its host's settings): Pillow's own warning (over ~89 Mpx) is ignored and its
# error (over ~179 Mpx) is reported like ours.
MAX_PIXELS = 100_000_000

_RESAMPLE = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def _image_extensions() -> frozenset[str]:
    exts = {e.lower() for e in Image.registered_extensions()}
    # Pillow registers some formats that are never photos; they would only add noise to walks.
    return frozenset(exts - {".pdf", ".eps", ".ps", ".xbm", ".h5", ".hdf", ".grib", ".bufr",
                             ".fits", ".fit", ".wmf", ".emf", ".mpeg", ".mpg"})


IMAGE_EXTENSIONS = _image_extensions()


def open_image(path: str | Path) -> Image.Image:
    """Open lazily and check the header; raise ImageError with one sentence on failure."""
    try:
        # Only regular files: opening a FIFO or a device named *.jpg would block or never end.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ImageError(f"not a regular file: {path}")
    except FileNotFoundError:
        raise ImageError(f"file not found: {path}") from None
    except OSError as e:
        raise ImageError(f"cannot read image {path}: {e.strerror or e}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except FileNotFoundError:
        raise ImageError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise ImageError(f"is a directory: {path}") from None
    except PermissionError:
        raise ImageError(f"permission denied: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image declares more than {MAX_PIXELS} pixels, refused: {path}") from None
    except UnidentifiedImageError:
        raise ImageError(f"not a recognised image file: {path}") from None
    except Exception as e:  # Pillow's parsers raise many types on malformed headers
        raise ImageError(f"cannot read image {path}: {_why(e)}") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise ImageError(f"image is {w}x{h}, more than {MAX_PIXELS} pixels, refused: {path}")
    if w < 1 or h < 1:
        img.close()
        raise ImageError(f"image has no pixels: {path}")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB the way an image viewer would display it."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit / 32-bit grayscale: scale the full range to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode == "F":
            top = max(float(arr.max()), 1.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def check_resize(method: str) -> str:
    if method not in RESIZES:
        raise ValueError(f"unknown resize {method!r}; choose one of {', '.join(RESIZES)}")
    return method


def decode(path: str | Path, draft: int | None = None) -> Image.Image:
    """Decode an image file to an RGB Pillow image, EXIF orientation applied.

    With `draft`, a JPEG is decoded at the smallest DCT scale that keeps both sides at least
    `draft` pixels (Pillow's draft mode); other formats decode in full.
    """
    img = open_image(path)
    try:
        with img:
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", (draft, draft))
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception as e:  # malformed EXIF must not lose an otherwise good image
                log.debug("ignoring bad EXIF in %s: %s", path, e)
            return to_rgb(img)
    except ImageError:
        raise
    except Exception as e:
        # Any decoder failure (truncated data, bad CRC, a Pillow bug on a hostile file, out of
        # memory) concerns this one file: report it, never stop a run over millions of files.
        raise ImageError(f"cannot decode image {path}: {_why(e)}") from None


def resize(img: Image.Image, size: int, method: str = "bilinear") -> np.ndarray:
    """An RGB image squashed to size x size (NIMA squashes, it does not crop), as uint8."""
    if img.size != (size, size):
        img = img.resize((size, size), _RESAMPLE[check_resize(method)])
    return np.asarray(img, dtype=np.uint8)


def load_image(path: str | Path, size: int | None = None, method: str = "bilinear") -> np.ndarray:
    """Decode an image file to an RGB uint8 array of shape (H, W, 3); with `size`, resized to
    size x size the way `method` says (see the module docstring)."""
    if size is None:
        return np.asarray(decode(path), dtype=np.uint8)
    check_resize(method)
    return resize(decode(path, size if method == "bilinear" else None), size, method)


View = tuple[int, str]  # (square size, resize method): one model input made from a file


def load_views(path: str | Path, views: Iterable[View]) -> dict[View, np.ndarray]:
    """Several model inputs from one file (models of different sizes or resizes scoring the
    same image). Each view equals `load_image(path, size, method)`, with one exception: when
    any view is "nearest", the file is decoded once, in full, and every view is made from that
    decode (a "bilinear" view of a JPEG then skips the draft scale, a difference of a few
    levels per pixel). Bilinear views alone keep their own draft decodes, exactly."""
    views = list(dict.fromkeys(views))
    for _, method in views:
        check_resize(method)
    if any(method == "nearest" for _, method in views):
        img = decode(path)
        return {(size, method): resize(img, size, method) for size, method in views}
    return {(size, method): load_image(path, size, method) for size, method in views}


def check_image(path: str | Path) -> None:
    """Decode the whole file at the smallest cheap size; raise ImageError if it is unusable.

    Catches what the header check cannot (truncated JPEGs, corrupt PNG data) at a fraction of
    a full decode: JPEGs decode at 1/8 scale (DCT draft), other formats decode once.
    """
    load_image(path, size=CHECK_SIZE)


CHECK_SIZE = 32


def _why(e: Exception) -> str:
    text = str(e).splitlines()[0][:200] if str(e) else ""
    return text or type(e).__name__


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def iter_image_files(source: str | Path) -> Iterator[Path]:
    """Yield image files under source (a file or a directory walked recursively).

    Deterministic (sorted) order so that shards and resumed runs agree; streams, so a folder
    of millions never sits in memory as one list. Symlinked directories are followed once
    (loops are cut); files are selected by extension, so a text file named .jpg is yielded
    and then reported as unreadable by the decoder.
    """
    source = Path(source)
    if not source.exists():
        raise ImageError(f"image source not found: {source}")
    if not source.is_dir():
        yield source
        return
    seen: set[tuple[int, int]] = set()

    def walk(d: Path) -> Iterator[Path]:
        try:
            st = d.stat()
        except OSError as e:
            log.warning("skipping directory %s: %s", d, e)
            return
        if (st.st_dev, st.st_ino) in seen:
            log.warning("skipping directory %s: already visited (symlink loop?)", d)
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            log.warning("skipping directory %s: %s", d, e)
            return
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                yield from walk(Path(entry.path))
            elif is_image_file(entry.name):
                yield Path(entry.path)

    yield from walk(source)
