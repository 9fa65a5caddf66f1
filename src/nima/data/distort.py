"""A TID2013/KADID-style technical-quality dataset made from pristine photographs.

Each source photo gives `crops` random square crops (random position and scale, downscaled to
`size` x `size`, which makes them sharp and clean). Each crop is written pristine and with four
distortions at five levels:

    blur      Gaussian blur, sigma (pixels at the output size)      0.7  1.2  1.9  2.8  4.0
    noise     additive Gaussian noise, sd on the 0..255 scale       5    10   17   27   40
    jpeg      JPEG compression, quality                             40   22   12   7    3
    exposure  contrast scaled by c around mid-grey, then brightness shifted by +-b (one
              random direction per crop): c                         .75  .55  .40  .28  .18
                                                                 b  .06  .12  .18  .24  .30

Labels are 10-bin distributions (ratings 1..10): a normal with sd 1.2, discretised on the bins
and normalised, centred on

    mean(level) = 8.5 - 1.3 * level      (pristine 8.5, then 7.2, 5.9, 4.6, 3.3, 2.0)

The same level of every distortion gets the same label: the scale says "how much damage",
not which kind. Images are written as PNG (lossless), so the only compression artefacts are
the ones the `jpeg` distortion puts there.

Train and test are split BY SOURCE PHOTO: every crop and distortion of a photo lands on the
same side, so the test set measures generalisation to unseen scenes, not to unseen crops of
seen scenes. `manifest.json` records which source went where.

Output (`out/`):
    images/<id>.png            ids: <source>_c<k>_ref, <source>_c<k>_<distortion><level>
    labels_train.json          training labels (the toolkit's label format)
    labels_test.json           held-out labels (sources never seen in training)
    manifest.json              parameters, the score mapping, and the source -> split table
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from nima import files, images, labels
from nima.errors import DataError

log = logging.getLogger(__name__)

LEVELS = 5
BLUR_SIGMA = (0.7, 1.2, 1.9, 2.8, 4.0)
NOISE_SD = (5.0, 10.0, 17.0, 27.0, 40.0)
JPEG_QUALITY = (40, 22, 12, 7, 3)
EXPOSURE = ((0.75, 0.06), (0.55, 0.12), (0.40, 0.18), (0.28, 0.24), (0.18, 0.30))
PRISTINE_MEAN, LEVEL_STEP, LABEL_SD = 8.5, 1.3, 1.2


def blur(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    # Pillow's GaussianBlur radius is the standard deviation of the kernel.
    pil = Image.fromarray(img).filter(ImageFilter.GaussianBlur(BLUR_SIGMA[level - 1]))
    return np.asarray(pil)


def noise(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    noisy = img.astype(np.float32) + rng.normal(0.0, NOISE_SD[level - 1], img.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=JPEG_QUALITY[level - 1])
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB"))


def exposure(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    contrast, shift = EXPOSURE[level - 1]
    # The direction comes from the crop's own generator (drawn once per crop, see `_crop_rng`),
    # so all five levels of one crop go the same way: darker and darker, or brighter.
    direction = 1.0 if rng.integers(2) else -1.0
    x = img.astype(np.float32) / 255.0
    y = 0.5 + (x - 0.5) * contrast + direction * shift
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


DISTORTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "blur": blur, "noise": noise, "jpeg": jpeg, "exposure": exposure,
}


def level_mean(level: int) -> float:
    """Mean opinion score (1..10) of a distortion level; level 0 is the pristine image."""
    return PRISTINE_MEAN - LEVEL_STEP * level


def level_label(level: int) -> np.ndarray:
    bins = np.arange(1, 11, dtype=np.float64)
    p = np.exp(-0.5 * ((bins - level_mean(level)) / LABEL_SD) ** 2)
    return p / p.sum()


@dataclass(frozen=True)
class Source:
    name: str  # unique, id-safe name derived from the relative path
    path: Path


def find_sources(source_dir: Path) -> list[Source]:
    """Every image under source_dir, with an id-safe unique name per file."""
    source_dir = Path(source_dir)
    if not source_dir.exists():
        raise DataError(f"source folder not found: {source_dir}")
    if not source_dir.is_dir():
        raise DataError(f"source is not a folder: {source_dir}")
    result, seen = [], set()
    for path in images.iter_image_files(source_dir):
        rel = path.relative_to(source_dir).with_suffix("")
        name = re.sub(r"[^A-Za-z0-9.-]+", "-", "-".join(rel.parts)).strip("-.") or "image"
        while name in seen:
            name += "-"
        seen.add(name)
        result.append(Source(name, path))
    if not result:
        raise DataError(f"no images in {source_dir}")
    return result


def check_sources(sources: list[Source], size: int) -> None:
    """Read every source's header before anything is written: a broken or too small photo
    found halfway would leave a half-written dataset behind."""
    for src in sources:
        with images.open_image(src.path) as img:  # ImageError: one sentence naming the file
            w, h = img.size
        if min(w, h) < size:
            raise DataError(f"source image {src.path} is {w}x{h}, smaller than the crop size "
                            f"{size}: remove it or lower --size")


def split_sources(sources: list[Source], test_fraction: float, seed: int
                  ) -> tuple[list[Source], list[Source]]:
    """Shuffle sources (seeded) and hold out round(fraction * n) of them, at least one."""
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(sources))
    n_test = int(round(test_fraction * len(sources)))
    if test_fraction > 0:
        n_test = min(max(n_test, 1), len(sources) - 1)
    test_idx = set(order[:n_test].tolist())
    train = [s for i, s in enumerate(sources) if i not in test_idx]
    test = [s for i, s in enumerate(sources) if i in test_idx]
    return train, test


def random_crops(img: np.ndarray, n: int, size: int, rng: np.random.Generator,
                 min_scale: float = 0.35) -> list[np.ndarray]:
    """n square crops, side between min_scale and 1 of the short side, resized to size."""
    h, w = img.shape[:2]
    short = min(h, w)
    if short < size:
        raise DataError(f"source image is {w}x{h}, smaller than the crop size {size}")
    pil = Image.fromarray(img)
    out = []
    for _ in range(n):
        side = int(rng.uniform(max(size, min_scale * short), short + 1))
        side = min(side, short)
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = pil.crop((x, y, x + side, y + side))
        out.append(np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS)))
    return out


def distort_dataset(source_dir: str | Path, out_dir: str | Path, *, seed: int = 0,
                    crops: int = 8, size: int = 192, test_fraction: float = 0.2) -> dict:
    """Write the dataset; returns the manifest (also written to out/manifest.json)."""
    if crops < 1:
        raise DataError(f"--crops must be at least 1, got {crops}")
    if size < 32:
        raise DataError(f"--size must be at least 32, got {size}")
    if seed < 0:  # numpy's generators take non-negative seeds only
        raise DataError(f"--seed must not be negative, got {seed}")
    sources = find_sources(Path(source_dir))
    check_sources(sources, size)
    train, test = split_sources(sources, test_fraction, seed)
    out = Path(out_dir)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[labels.Sample]] = {"train": [], "test": []}
    side_of = {s.name: "train" for s in train} | {s.name: "test" for s in test}
    for index, src in enumerate(sources):
        # The decoder training and prediction use: EXIF orientation applied, any mode to RGB.
        arr = images.load_image(src.path)
        # One generator per source, independent of the split and of the other sources.
        rng = np.random.default_rng([seed, index])
        for k, crop in enumerate(random_crops(arr, crops, size, rng)):
            stem = f"{src.name}_c{k:02d}"
            variants = [(f"{stem}_ref", crop, 0)]
            for dname, fn in DISTORTIONS.items():
                # Same generator state for each level, so e.g. the exposure direction and the
                # noise pattern are shared across the levels of one crop: only the level differs.
                state = int(rng.integers(2**32))
                for level in range(1, LEVELS + 1):
                    d = fn(crop, level, np.random.default_rng(state))
                    variants.append((f"{stem}_{dname}{level}", d, level))
            for image_id, pixels, level in variants:
                Image.fromarray(pixels).save(image_dir / f"{image_id}.png", compress_level=1)
                rows[side_of[src.name]].append(labels.Sample(image_id, level_label(level)))
        log.info("%s: %d crops -> %s", src.path.name, crops, side_of[src.name])
    files.write_text(out / "labels_train.json", labels.samples_to_json(rows["train"]))
    files.write_text(out / "labels_test.json", labels.samples_to_json(rows["test"]))
    manifest = {
        "source_dir": str(Path(source_dir)), "seed": seed, "crops": crops, "size": size,
        "test_fraction": test_fraction, "levels": LEVELS,
        "distortions": {"blur_sigma": BLUR_SIGMA, "noise_sd": NOISE_SD,
                        "jpeg_quality": JPEG_QUALITY,
                        "exposure_contrast_shift": EXPOSURE},
        "score_mapping": {"mean": f"{PRISTINE_MEAN} - {LEVEL_STEP} * level",
                          "label": f"discretised normal over ratings 1..10, sd {LABEL_SD}",
                          "means": [level_mean(level) for level in range(LEVELS + 1)]},
        "n_images": {"train": len(rows["train"]), "test": len(rows["test"])},
        "sources": [{"name": s.name, "file": str(s.path.relative_to(source_dir)),
                     "split": side_of[s.name]} for s in sources],
    }
    files.write_json(out / "manifest.json", manifest)
    return manifest
