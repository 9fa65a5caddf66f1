"""The Python API: `nima.load()` returns a model that scores images in one call.

    import nima
    model = nima.load()                          # the default model: "aesthetic"
    model = nima.load("technical")               # a shipped model by name (nima.resolve)
    model = nima.load("train_jobs/20260101-1200")  # a job dir, a .keras file, or a
                                                  # .weights.h5 file with config_file=...
    model.predict(images="photos/")               # a folder (recursive), a file, a list of
    model.predict(images=[pil_image, array])      # paths, PIL images or numpy arrays
    model.predict(images=array, augmented=True)   # test-time augmentation

`predict` always returns a list with one dict per image, in input order, the same dicts
`nima predict` writes. For a path: image_id is the file stem and image the path (relative
to the folder for a folder). For an in-memory image (PIL or numpy): image_id is its index in
the input (0 for a single image) and image is None. A file that cannot be decoded gets an
`error` entry instead of scores, as in the CLI; a missing folder or an unusable array raises
ImageError.

Images are resized the way the model was trained (`nima.images`: squashed to the model's
square input, no crop, with the model's own resize, bilinear or nearest). Numpy arrays are
RGB (or gray / RGBA) with values 0..255, uint8 or float (floats are rounded to uint8 before
the resize). For a bilinear model a large JPEG file is decoded at reduced DCT scale first
(draft mode, as in training); a PIL image or array of it is resized from all its pixels, so
its scores differ slightly.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

from nima import images as image_io
from nima.errors import ImageError
from nima.images import View
from nima.predict import Predictor
from nima.resolve import config_default
from nima.results import relative_name, result_fields

log = logging.getLogger(__name__)

# NIMA trains on 256x256 resizes cropped to 224: the crop ratio used for test-time
# augmentation when a model's training config is unknown.
DEFAULT_CROP_RATIO = 256 / 224


@dataclass(frozen=True)
class _Item:
    """One input image: a path (decoded lazily) or pixels, and how its result is labelled."""

    image_id: Any
    image: str | None
    path: Path | None = None
    pixels: np.ndarray | None = None  # uint8 (H, W, 3)

    def load(self, view: View) -> np.ndarray:
        """uint8 (size, size, 3), through the toolkit's one decoder and resize."""
        size, method = view
        if self.path is not None:
            return image_io.load_image(self.path, size, method)
        return image_io.resize(Image.fromarray(self.pixels), size, method)


@dataclass
class NimaModel:
    """A loaded NIMA model. `predictor` is the `nima.predict.Predictor` it wraps."""

    predictor: Predictor
    # Side of the resized image that test-time-augmentation crops are taken from; None
    # means no crops (the model was trained without random crops).
    crop_source_size: int | None = None

    @property
    def keras_model(self):
        return self.predictor.model

    @property
    def input_size(self) -> int:
        return self.predictor.input_size

    @property
    def info(self) -> dict:
        return self.predictor.info

    def predict(self, images: Any, *, augmented: bool = False, batch_size: int = 32
                ) -> list[dict]:
        """Score images; see the module docstring for the accepted inputs and the results.

        With `augmented`, each image's distribution is the average over 7 views: the image,
        its horizontal flip, and the centre and four corner crops of a larger resize (the
        crops NIMA's training saw), at 7x the cost; 2 views for a model trained without
        random crops.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        items, root = _items(images)
        if not augmented and all(item.path is not None for item in items):
            # Files only: decoded by a thread pool ahead of the model, as `nima predict` does.
            return list(self.predictor.score_files((i.path for i in items), root, batch_size))
        results: list[dict] = []
        for start in range(0, len(items), batch_size):
            results.extend(self._score(items[start:start + batch_size], augmented))
        return results

    def _views(self, item: _Item, augmented: bool) -> np.ndarray:
        """(V, size, size, 3) uint8: the image, plus its flip and crops when augmented."""
        size, method = self.predictor.view
        full = item.load((size, method))
        if not augmented:
            return full[None]
        views = [full, full[:, ::-1]]
        big_size = self.crop_source_size
        if big_size and big_size > size:
            big = item.load((big_size, method))
            m = big_size - size
            for y, x in ((m // 2, m // 2), (0, 0), (0, m), (m, 0), (m, m)):
                views.append(big[y:y + size, x:x + size])
        return np.stack(views)

    def _score(self, items: Sequence[_Item], augmented: bool) -> list[dict]:
        batches, counts, out = [], [], []
        for item in items:
            try:
                v = self._views(item, augmented)
            except ImageError as e:
                log.warning("%s", e)
                v = None
                out.append({"image_id": item.image_id, "image": item.image, "error": str(e)})
            else:
                out.append(None)
                batches.append(v)
            counts.append(0 if v is None else len(v))
        if batches:
            probs = self.predictor.predict_arrays(np.concatenate(batches))
        offset = 0
        for i, (item, n) in enumerate(zip(items, counts)):
            if n:
                dist = probs[offset:offset + n].mean(axis=0)
                offset += n
                out[i] = {"image_id": item.image_id, "image": item.image, **result_fields(dist)}
        return out


def load(source: str | os.PathLike | None = None, config_file: str | os.PathLike | None = None,
         backend: str = "auto") -> NimaModel:
    """Load a model: None = the default ("aesthetic"), a shipped model's name ("technical"),
    a `.keras` file, a training job / model directory, or weights (`.weights.h5`, Keras 2
    `.hdf5`) with their config from `config_file` or the config.json beside them (see
    nima.resolve). `backend` as in `nima predict`: "auto" (the default, TFLite on CPU, Keras
    on a GPU) gives exactly the CLI's scores."""
    predictor = Predictor.load(source, config_file, backend=backend)
    return NimaModel(predictor, _crop_source_size(predictor))


def _crop_source_size(predictor: Predictor) -> int | None:
    """The training resize_size when crops were used, None without crops; for a model without
    a training config, NIMA's 256/224 ratio."""
    size = predictor.input_size
    config = predictor.ref.training_config()
    if not config:
        return round(size * DEFAULT_CROP_RATIO)
    if not config.get("random_crop", config_default("random_crop")):
        return None
    resize = config.get("resize_size", config_default("resize_size"))
    return int(resize) if resize and int(resize) > size else None


# --- inputs -----------------------------------------------------------------------------------

def _items(images: Any) -> tuple[list[_Item], Path | None]:
    """Normalise every accepted input kind to a list of items (and the root for names)."""
    if isinstance(images, (str, os.PathLike)):
        source = Path(images)
        if not source.exists():
            raise ImageError(f"image source not found: {source}")
        if source.is_dir():
            paths = list(image_io.iter_image_files(source))
            return [_Item(p.stem, relative_name(p, source), path=p) for p in paths], source
        return [_Item(source.stem, source.name, path=source)], source.parent
    if isinstance(images, Image.Image):
        return [_Item(0, None, pixels=_pil_pixels(images))], None
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return [_Item(i, None, pixels=_array_pixels(a, i)) for i, a in enumerate(images)], None
        return [_Item(0, None, pixels=_array_pixels(images, 0))], None
    if isinstance(images, Iterable) and not isinstance(images, (bytes, dict)):
        return [_list_item(i, x) for i, x in enumerate(images)], None
    raise ImageError(f"cannot score {type(images).__name__}: pass a path, a folder, a PIL "
                     "image, a numpy array, or a list of these")


def _list_item(index: int, x: Any) -> _Item:
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if path.is_dir():
            raise ImageError(f"item {index} is a folder ({path}); pass a folder on its own")
        return _Item(path.stem, str(path), path=path)  # a missing file becomes an error entry
    if isinstance(x, Image.Image):
        return _Item(index, None, pixels=_pil_pixels(x))
    if isinstance(x, np.ndarray):
        return _Item(index, None, pixels=_array_pixels(x, index))
    raise ImageError(f"item {index} is a {type(x).__name__}; expected a path, a PIL image "
                     "or a numpy array")


def _pil_pixels(img: Image.Image) -> np.ndarray:
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF: score the image as stored, as load_image does
        pass
    return np.asarray(image_io.to_rgb(img), dtype=np.uint8)


def _array_pixels(a: np.ndarray, index: int) -> np.ndarray:
    """A (H, W), (H, W, 1|3|4) array of 0..255 values -> uint8 RGB (H, W, 3)."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))) or 0 in a.shape:
        raise ImageError(f"image {index} has shape {a.shape}; expected (H, W), (H, W, 3) or "
                         "(H, W, 4), or a batch (N, H, W, 3)")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.number):
            raise ImageError(f"image {index} has dtype {a.dtype}; expected numbers 0..255")
        f = a.astype(np.float64)
        if not np.isfinite(f).all() or f.min() < 0 or f.max() > 255:
            raise ImageError(f"image {index} has values outside 0..255 (or NaN); NIMA takes "
                             "RGB pixel values 0..255")
        if f.max() <= 1.0:
            log.warning("image %d has values in 0..1; NIMA expects 0..255 (multiply by 255?)",
                        index)
        a = np.round(f).astype(np.uint8)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=-1)
    if a.shape[-1] == 4:
        return np.asarray(image_io.to_rgb(Image.fromarray(a, "RGBA")), dtype=np.uint8)
    return a
