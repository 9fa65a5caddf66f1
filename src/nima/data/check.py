"""Find everything wrong with a label file and its images before a long training run does.

Rows: not an object, missing keys, bad image ids, labels that are not 10 non-negative finite
numbers with a positive sum, duplicate ids; every bad row is reported with its index, not just
the first. Images: missing, unreadable (header), truncated, smaller than --min-size.

Speed: header checks (Pillow reads a few hundred bytes) plus, for JPEG and PNG, a look at the
file's last bytes for the end marker; only a file without one is fully decoded to confirm it
is truncated (some cameras append data after the end marker). Other formats (TID2013's BMPs,
TIFF, WebP) have no end marker and are decoded. --full-decode decodes every image. Files are checked in a thread pool: the work is mostly I/O wait and Pillow's decoders
release the GIL.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nima.data.labelfile import read_label_json, write_label_rows
from nima.errors import DataError, ImageError
from nima.images import open_image
from nima.labels import find_image, id_folders, index_images, validate_image_id, validate_label

log = logging.getLogger(__name__)

KINDS = ("bad_row", "duplicate", "missing", "unreadable", "truncated", "tiny")
_JPEG_END = b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"


@dataclass(frozen=True)
class Problem:
    kind: str
    index: int          # row index in the label file (0-based)
    image_id: str | None
    message: str


@dataclass
class CheckResult:
    rows: int
    good: list[int]
    problems: list[Problem] = field(default_factory=list)
    images_checked: int = 0
    unlabelled: int = 0  # image files in the folder that no row names (not a problem)

    def counts(self) -> dict[str, int]:
        c = Counter(p.kind for p in self.problems)
        return {k: c.get(k, 0) for k in KINDS}


def check_row(row: Any) -> str | None:
    if not isinstance(row, dict):
        return f"expected an object, got {type(row).__name__}"
    for key in ("image_id", "label"):
        if key not in row:
            return f"missing key {key!r}"
    return validate_image_id(row["image_id"]) or validate_label(row["label"])


def _ends_cleanly(path: Path, fmt: str | None) -> bool:
    """True if a JPEG/PNG has its end marker (cheap: reads the last 64 bytes). Other formats
    have no such marker (a BMP or TIFF cut in half has an intact header), so they are False:
    the caller decodes them."""
    marker = {"JPEG": _JPEG_END, "PNG": _PNG_END}.get(fmt or "")
    if marker is None:
        return False
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - 64, 0))
        tail = f.read().rstrip(b"\x00\r\n\t ")
    return tail.endswith(marker)


def _says_truncated(e: Exception) -> bool:
    # Pillow's words for running out of data: "image file is truncated", "Truncated File
    # Read", "premature end of file" ...
    text = str(e).lower()
    return "truncated" in text or "end of file" in text


def check_image(path: Path, full_decode: bool = False, min_size: int = 0) -> tuple[str, str] | None:
    """(kind, message) for a bad image file, None for a good one."""
    try:
        img = open_image(path)
    except ImageError as e:
        # a file cut inside its header already fails here
        return ("truncated" if _says_truncated(e) else "unreadable"), str(e)
    try:
        with img:
            w, h = img.size
            try:
                if full_decode or not _ends_cleanly(path, img.format):
                    img.load()
            except OSError as e:
                if _says_truncated(e):
                    return "truncated", f"truncated image: {path}"
                return "unreadable", f"cannot decode image {path}: {e}"
            except Exception as e:  # noqa: BLE001 - a decoder bug on one file must not stop
                # the check of all the others (Pillow plugins raise struct.error, IndexError...)
                return "unreadable", f"cannot decode image {path}: {e}"
            # after the integrity checks: a broken image is reported as broken, not as tiny
            if min(w, h) < min_size:
                return "tiny", f"{w}x{h} is smaller than {min_size} px: {path}"
    except OSError as e:
        return "unreadable", f"cannot read image {path}: {e}"
    return None


def check(labels_file: str | Path, image_dir: str | Path | None = None, *,
          full_decode: bool = False, min_size: int = 0, workers: int | None = None,
          write_clean: str | Path | None = None) -> CheckResult:
    if workers is not None and workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    if min_size < 0:
        raise DataError(f"--min-size must not be negative, got {min_size}")
    data = read_label_json(labels_file)
    result = CheckResult(rows=len(data), good=[])
    seen: dict[str, int] = {}
    candidates: list[int] = []
    for i, row in enumerate(data):
        why = check_row(row)
        image_id = row.get("image_id") if isinstance(row, dict) else None
        image_id = image_id if isinstance(image_id, str) else None
        if why:
            result.problems.append(Problem("bad_row", i, image_id, f"row {i}: {why}"))
        elif image_id in seen:
            result.problems.append(Problem("duplicate", i, image_id, f"row {i}: duplicate "
                                           f"image_id {image_id!r}, first in row {seen[image_id]}"))
        else:
            seen[image_id] = i
            candidates.append(i)

    if image_dir is None:
        result.good = candidates
    else:
        ids = [data[i]["image_id"] for i in candidates]
        index = index_images(image_dir, id_folders(ids))
        located: list[tuple[int, Path]] = []
        for i in candidates:
            image_id = data[i]["image_id"]
            path = find_image(index, image_id)
            if path is None:
                result.problems.append(Problem("missing", i, image_id,
                                               f"row {i}: no image for {image_id!r} in {image_dir}"))
            else:
                located.append((i, path))
        workers = workers or min(32, 4 * (os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes = pool.map(lambda p: check_image(p, full_decode, min_size),
                                [p for _, p in located])
            bad: dict[int, tuple[str, str]] = {}
            for (i, _), outcome in zip(located, outcomes):
                if outcome:
                    bad[i] = outcome
        result.images_checked = len(located)
        result.unlabelled = len(set(index.values()) - {p for _, p in located})
        for i, (kind, message) in bad.items():
            result.problems.append(Problem(kind, i, data[i]["image_id"], f"row {i}: {message}"))
        result.good = [i for i, _ in located if i not in bad]
    result.problems.sort(key=lambda p: p.index)
    if write_clean is not None:
        write_label_rows(write_clean, [(data[i]["image_id"], data[i]["label"])
                                       for i in result.good])
    return result


def format_summary(result: CheckResult, labels_file: str | Path, show: int = 10) -> str:
    counts = result.counts()
    lines = [f"{labels_file}: {result.rows} rows, {len(result.good)} good, "
             f"{len(result.problems)} with problems"
             + (f" ({result.images_checked} images checked, {result.unlabelled} unlabelled "
                "in the folder)" if result.images_checked else "")]
    for kind in KINDS:
        if counts[kind]:
            lines.append(f"  {kind}: {counts[kind]}")
            examples = [p for p in result.problems if p.kind == kind][:show]
            lines.extend(f"    {p.message}" for p in examples)
            if counts[kind] > show:
                lines.append(f"    ... and {counts[kind] - show} more")
    return "\n".join(lines)
