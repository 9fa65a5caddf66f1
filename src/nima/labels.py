"""Label (samples) files: load, validate, find their images, split.

Format: a JSON array of `{"image_id": str, "label": [10 numbers]}`. Labels are vote counts
(AVA) or probabilities (TID2013); both are normalised on load. Images are
`<image_dir>/<image_id>.<ext>` with any common extension in any case (TID2013 uses .bmp and
mixes `I01_..`/`i01_..` ids), or `<image_dir>/<image_id>` when the id is a full file name;
found with one directory listing instead of a stat per guess. An id may name a subfolder
(`jp2k/img2`, for datasets that keep images in folders), never a path outside image_dir.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from nima import files, scores
from nima.images import is_image_file
from nima.errors import DataError, LabelError

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 255
# a newline or tab in a name would break skipped.txt and CSV rows, and is never meant; one
# regex search instead of a Python loop per character (data tools validate 255,000 AVA ids)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Sample:
    image_id: str
    label: np.ndarray  # shape (10,), float64, sums to 1


def validate_image_id(image_id: Any) -> str | None:
    """Return why an image id is unacceptable, or None. Ids become file names: no traversal."""
    if not isinstance(image_id, str):
        return f"image_id must be a string, got {json.dumps(image_id)[:40]}"
    if not image_id or len(image_id) > MAX_ID_LENGTH:
        return f"image_id must have 1 to {MAX_ID_LENGTH} characters"
    # Datasets keep images in subfolders (LIVE's jp2k/img2.bmp and fastfading/img2.bmp are
    # different images), so an id may be a relative path; each part must still be a plain
    # name, so that no id can reach outside the image folder.
    if ("\\" in image_id or "\x00" in image_id
            or any(part in ("", ".", "..") for part in image_id.split("/"))):
        return (f"image_id {image_id!r} must be a plain file name, or plain file names joined "
                "by '/' (no other path separators, no '.', '..' or empty parts, no leading '/')")
    if _CONTROL.search(image_id):
        return f"image_id {image_id!r} must not contain control characters"
    return None


def validate_label(label: Any) -> str | None:
    """Return why a label is unacceptable, or None."""
    if not isinstance(label, list) or len(label) != scores.N_BINS:
        n = len(label) if isinstance(label, list) else type(label).__name__
        return f"label must be a list of {scores.N_BINS} numbers, got {n}"
    for v in label:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"label values must be numbers, got {json.dumps(v)[:40]}"
        if isinstance(v, int) and abs(v) > 2**53:  # float() would overflow or round
            return "label values must be below 2**53"
        if not math.isfinite(v):
            return "label values must be finite"
        if v < 0:
            return "label values must not be negative"
    try:
        total = math.fsum(label)
    except OverflowError:
        total = math.inf
    if not math.isfinite(total):
        return "label values are too large (their sum is not finite)"
    if total <= 0:
        return "label values must have a positive sum"
    return None


def parse_samples(data: Any, source: str = "samples") -> list[Sample]:
    """Validate decoded JSON; errors name the row (0-based index) and its id."""
    if not isinstance(data, list):
        raise LabelError(f"{source}: expected a JSON array of samples, got {type(data).__name__}")
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(data):
        where = f"{source}: row {i}"
        if not isinstance(row, dict):
            raise LabelError(f"{where}: expected an object, got {type(row).__name__}")
        missing = {"image_id", "label"} - row.keys()
        if missing:
            raise LabelError(f"{where}: missing key {sorted(missing)[0]!r}")
        why = validate_image_id(row["image_id"])
        if why:
            raise LabelError(f"{where}: {why}")
        image_id = row["image_id"]
        where = f"{where} (image_id {image_id!r})"
        why = validate_label(row["label"])
        if why:
            raise LabelError(f"{where}: {why}")
        if image_id in seen:
            raise LabelError(f"{where}: duplicate image_id, first seen in row {seen[image_id]}")
        seen[image_id] = i
        samples.append(Sample(image_id, scores.normalize(row["label"])))
    return samples


# AVA's 255,000 rows take about 40 MB; a label file 25 times that is a mistake, not labels.
MAX_FILE_BYTES = 1 << 30


def load_samples(path: str | Path) -> list[Sample]:
    path = Path(path)
    data = files.read_json(path, "samples file", MAX_FILE_BYTES, LabelError)
    samples = parse_samples(data, source=str(path))
    if not samples:
        raise LabelError(f"{path}: contains no samples")
    return samples


def rows_to_json(rows: Iterable[tuple[str, Sequence[Any]]]) -> str:
    """A label file's text: one compact object per line inside the array, like the shipped
    files (diff-friendly). Integer vote counts stay integers, other numbers become floats."""
    def number(v: Any) -> Any:
        return v if isinstance(v, int) and not isinstance(v, bool) else float(v)

    lines = [json.dumps({"image_id": image_id, "label": [number(v) for v in label]},
                        separators=(",", ":"), allow_nan=False) for image_id, label in rows]
    return "[\n" + ",\n".join(lines) + ("\n" if lines else "") + "]\n"


def samples_to_json(samples: Iterable[Sample]) -> str:
    return rows_to_json((s.image_id, s.label) for s in samples)


def index_images(image_dir: str | Path, folders: Iterable[str] = ()) -> dict[str, Path]:
    """Map image id -> path for every image file directly in image_dir; look ids up with
    `find_image`.

    An id is the file's stem (AVA's `231893` -> `231893.jpg`) or, as in pyiqa-style label
    files, its full name (`231893.jpg`). Exact case wins; lower-cased keys are a fallback so
    that TID2013's `i04_01_2` finds `I04_01_2.BMP`. `folders` (relative, '/'-separated, from
    `id_folders`) are indexed too, under keys with that prefix: `jp2k/img2` -> `jp2k/img2.bmp`.
    Only the folders that ids name are listed, never the whole tree below image_dir.
    """
    image_dir = Path(image_dir)
    if not image_dir.exists():
        raise DataError(f"image directory not found: {image_dir}")
    if not image_dir.is_dir():
        raise DataError(f"image directory is not a directory: {image_dir}")
    stems: dict[str, Path] = {}
    names: dict[str, Path] = {}
    folded: dict[str, Path] = {}
    for prefix in ["", *(f + "/" for f in sorted(set(folders)))]:
        folder = image_dir / prefix if prefix else image_dir
        if prefix and not folder.is_dir():
            continue  # its ids are reported missing, like any id without a file
        try:
            entries = list(os.scandir(folder))
        except PermissionError:
            raise DataError(f"image directory is not readable: {folder}") from None
        for entry in sorted(entries, key=lambda e: e.name):
            if not is_image_file(entry.name):
                continue
            path = Path(entry.path)
            stem = prefix + os.path.splitext(entry.name)[0]
            name = prefix + entry.name
            stems.setdefault(stem, path)
            names.setdefault(name, path)
            folded.setdefault(stem.lower(), path)
            folded.setdefault(name.lower(), path)
    return {**folded, **names, **stems}


def id_folders(image_ids: Iterable[str]) -> set[str]:
    """The subfolders that ids like `jp2k/img2` name; an id with '..' parts names none."""
    return {i.rsplit("/", 1)[0] for i in image_ids if "/" in i and validate_image_id(i) is None}


def find_image(index: dict[str, Path], image_id: str) -> Path | None:
    """The file of `image_id` in an `index_images` index, or None."""
    return index.get(image_id) or index.get(image_id.lower())


def find_images(
    samples: Sequence[Sample], image_dir: str | Path
) -> tuple[list[tuple[Sample, Path]], list[str]]:
    """Pair samples with their image files; return (found, missing ids)."""
    index = index_images(image_dir, id_folders(s.image_id for s in samples))
    found, missing = [], []
    for s in samples:
        path = find_image(index, s.image_id)
        if path is None:
            missing.append(s.image_id)
        else:
            found.append((s, path))
    return found, missing


def check_missing(n_total: int, bad_ids: Sequence[str], max_fraction: float, what: str) -> None:
    """Report skipped samples; raise DataError when too many are unusable."""
    if not bad_ids:
        return
    shown = ", ".join(bad_ids[:10]) + (", ..." if len(bad_ids) > 10 else "")
    fraction = len(bad_ids) / max(n_total, 1)
    log.warning("%d of %d samples %s and are skipped: %s", len(bad_ids), n_total, what, shown)
    if fraction > max_fraction:
        raise DataError(
            f"{len(bad_ids)} of {n_total} samples ({fraction:.1%}) {what}, more than "
            f"max_missing_fraction {max_fraction:.1%}; first: {shown}"
        )


def split(
    items: Sequence[Any], fraction: float, seed: int
) -> tuple[list[Any], list[Any]]:
    """Seeded shuffle split -> (train, validation). At least one validation item if fraction > 0."""
    items = list(items)
    if fraction <= 0 or len(items) < 2:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(items) * fraction)), len(items) - 1)
    val_idx = set(order[:n_val])
    train = [it for i, it in enumerate(items) if i not in val_idx]
    val = [it for i, it in enumerate(items) if i in val_idx]
    return train, val
