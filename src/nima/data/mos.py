"""A CSV of mean opinion scores -> a label file, for datasets that publish no vote histograms.

Columns (by header name, or in this order without a header): image, mos, and optionally std
(raters' standard deviation, same scale as mos) and n (number of ratings). Scores on any
stated scale are mapped linearly onto 1..10, then spread over the bins by maximum entropy
(mean only) or as a discretised normal (mean and std). Scores where lower is better (LIVE's
DMOS) are flipped onto the scale with `invert`. Image names lose a known image extension and
become ids: `photo.jpg` -> `photo`, found in the training --image-dir.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from nima.data.distributions import maxent_distribution, normal_distribution, rescale
from nima.data.labelfile import input_error, parse_number, read_text, write_label_rows
from nima.errors import DataError
from nima.images import is_image_file
from nima.labels import validate_image_id

log = logging.getLogger(__name__)

METHODS = ("maxent", "normal")
COLUMNS = ("image", "mos", "std", "n")
ALIASES = {"image": ("image", "image_id", "image_name", "img", "dist_img", "file", "filename",
                     "name", "path"),
           "mos": ("mos", "score", "mean", "mean_score", "dmos"),
           "std": ("std", "sd", "stddev", "std_dev", "mos_std"),
           "n": ("n", "count", "votes", "num_ratings", "ratings")}


@dataclass(frozen=True)
class MosRow:
    image_id: str
    mos: float
    std: float | None
    n: float | None
    lineno: int


def _header_columns(path: Path, lineno: int, header: Sequence[str]) -> dict[str, int]:
    names = [h.strip().lower() for h in header]
    cols: dict[str, int] = {}
    for key, aliases in ALIASES.items():
        for i, name in enumerate(names):
            if name in aliases:
                cols[key] = i
                break
    for key in ("image", "mos"):
        if key not in cols:
            raise input_error(path, lineno, f"header has no {key!r} column (one of "
                              f"{', '.join(ALIASES[key])}); got {', '.join(header)}")
    return cols


def read_mos_csv(path: str | Path) -> tuple[list[MosRow], str]:
    """The rows, and the header of the score column ("" without a header)."""
    path = Path(path)
    text = read_text(path, "MOS file")
    # the delimiter of the first data or header line: a comment above it may hold any text
    first = next((ln for ln in text.splitlines()
                  if ln.strip() and not ln.lstrip().startswith("#")), "")
    delimiter = max(",;\t", key=first.count) if any(c in first for c in ",;\t") else None
    if delimiter:
        records = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    else:
        records = [ln.split() for ln in text.splitlines()]
    numbered = [(i, [f.strip() for f in r]) for i, r in enumerate(records, 1)
                if r and any(f.strip() for f in r) and not r[0].lstrip().startswith("#")]
    if not numbered:
        raise DataError(f"{path}: contains no rows")
    head_line, head = numbered[0]
    score_header = ""
    try:
        float(head[1]) if len(head) > 1 else float("x")
        cols = {k: i for i, k in enumerate(COLUMNS[:len(head)])}
    except ValueError:
        cols = _header_columns(path, head_line, head)
        score_header = head[cols["mos"]].strip().lower()
        numbered = numbered[1:]
    rows: list[MosRow] = []
    first_line: dict[str, int] = {}
    for lineno, fields in numbered:
        if len(fields) <= max(cols.values()):
            raise input_error(path, lineno, f"expected {max(cols.values()) + 1} fields, "
                              f"got {len(fields)}")
        name = fields[cols["image"]]
        image_id = name.rsplit(".", 1)[0] if is_image_file(name) else name
        why = validate_image_id(image_id)
        if why:
            raise input_error(path, lineno, why)
        if image_id in first_line:
            raise input_error(path, lineno, f"duplicate image {name} (first on line "
                              f"{first_line[image_id]})")
        first_line[image_id] = lineno
        mos = parse_number(path, lineno, "mos", fields[cols["mos"]])
        extra: dict[str, float | None] = {}
        for key in ("std", "n"):
            raw = fields[cols[key]] if key in cols else ""
            extra[key] = parse_number(path, lineno, key, raw) if raw else None
            if extra[key] is not None and extra[key] < 0:
                raise input_error(path, lineno, f"{key} must not be negative, got {raw}")
        rows.append(MosRow(image_id, mos, extra["std"], extra["n"], lineno))
    if not rows:
        raise DataError(f"{path}: contains no rows")
    return rows, score_header


def to_distribution(row: MosRow, path: Path, scale: tuple[float, float],
                    method: str, invert: bool = False) -> np.ndarray:
    lo, hi = scale
    if not lo <= row.mos <= hi:
        raise input_error(path, row.lineno, f"mos {row.mos:g} is outside the scale "
                          f"{lo:g}..{hi:g} (set --scale LO HI)")
    score = lo + hi - row.mos if invert else row.mos  # lower-is-better scores, e.g. LIVE DMOS
    mean = min(max(rescale(score, lo, hi), 1.0), 10.0)
    if method == "maxent":
        return maxent_distribution(mean)
    if row.std is None:
        raise input_error(path, row.lineno, "method 'normal' needs a std column")
    return normal_distribution(mean, row.std * 9.0 / (hi - lo))


@dataclass
class MosResult:
    rows: int
    written: int
    dropped_min_n: int


def convert(csv_file: str | Path, out: str | Path, *, scale: tuple[float, float] = (1.0, 10.0),
            method: str = "maxent", min_n: float | None = None,
            invert: bool = False) -> MosResult:
    path = Path(csv_file)
    lo, hi = scale
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise DataError(f"scale must be two finite numbers LO < HI, got {lo:g} {hi:g}")
    if method not in METHODS:
        raise DataError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    rows, score_header = read_mos_csv(path)
    if score_header == "dmos" and not invert:
        # "DMOS" means lower-is-better in LIVE and CSIQ but higher-is-better in KADID-10k
        log.warning("%s: column 'dmos' is read as higher = better (as in KADID-10k); if lower "
                    "is better in your dataset (LIVE, CSIQ), pass --invert", path)
    kept = rows
    if min_n is not None:
        without = [r for r in rows if r.n is None]
        if without:
            raise input_error(path, without[0].lineno, "--min-n needs an n value on every "
                              "row (an n column)")
        kept = [r for r in rows if r.n >= min_n]
    if not kept:
        raise DataError(f"{path}: no rows left with n >= {min_n:g}")
    labels = [(r.image_id, to_distribution(r, path, scale, method, invert).tolist())
              for r in kept]
    write_label_rows(out, labels)
    return MosResult(len(rows), len(labels), len(rows) - len(kept))
