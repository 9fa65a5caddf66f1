"""TID2013 mos_with_names.txt -> train/test label files of max-entropy distributions.

TID2013 has 25 reference images (I01..I25), each distorted 24 ways at 5 levels. Its MOS is on
0..9; NIMA rescales it to 1..10 and, lacking vote histograms, uses the maximum-entropy
distribution with that mean as the label. The split is by reference image: the same scene in
train and test would leak content, so a distorted image never decides the split on its own.
The default test references I01..I03 reproduce the shipped data/TID2013 files.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from nima.data.distributions import maxent_distribution, rescale
from nima.data.labelfile import input_error, parse_number, read_lines, write_label_rows
from nima.errors import DataError
from nima.images import is_image_file
from nima.labels import validate_image_id

log = logging.getLogger(__name__)

MOS_RANGE = (0.0, 9.0)
DEFAULT_TEST_REFS = (1, 2, 3)
_REF = re.compile(r"^i(\d+)_", re.IGNORECASE)


@dataclass(frozen=True)
class TidRow:
    image_id: str
    reference: int
    mos: float
    label: np.ndarray


def reference_of(image_id: str) -> int | None:
    m = _REF.match(image_id)
    return int(m.group(1)) if m else None


def read_mos(path: str | Path) -> list[TidRow]:
    rows: list[TidRow] = []
    first_line: dict[str, int] = {}
    for lineno, line in read_lines(path, "MOS file"):
        fields = line.split()
        if len(fields) != 2:
            raise input_error(path, lineno, f"expected 'MOS filename', got {len(fields)} fields")
        mos = parse_number(path, lineno, "MOS", fields[0])
        if not MOS_RANGE[0] <= mos <= MOS_RANGE[1]:
            raise input_error(path, lineno, f"MOS {mos:g} is outside TID2013's 0..9")
        name = fields[1]
        image_id = name.rsplit(".", 1)[0] if is_image_file(name) else name
        why = validate_image_id(image_id)
        if why:
            raise input_error(path, lineno, why)
        ref = reference_of(image_id)
        if ref is None:
            raise input_error(path, lineno, f"file name {name!r} does not start with a "
                              "reference id like I01_")
        key = image_id.lower()
        if key in first_line:
            raise input_error(path, lineno, f"duplicate image {name} (first on line "
                              f"{first_line[key]})")
        first_line[key] = lineno
        label = maxent_distribution(rescale(mos, *MOS_RANGE))
        rows.append(TidRow(image_id, ref, mos, label))
    if not rows:
        raise DataError(f"{path}: contains no images")
    return rows


def parse_refs(refs: Sequence[str]) -> set[int]:
    """'I01', 'i1', '1' -> 1."""
    out = set()
    for r in refs:
        m = re.fullmatch(r"[iI]?0*(\d+)", r.strip())
        if not m:
            raise DataError(f"reference {r!r} is not like I01 or 1")
        out.add(int(m.group(1)))
    return out


@dataclass
class TidResult:
    train: list[TidRow]
    test: list[TidRow]
    test_refs: list[int]


def build(mos_file: str | Path, out_dir: str | Path, *, test_refs: Sequence[str] | None = None,
          test_fraction: float | None = None, seed: int = 0,
          prefix: str = "tid_labels") -> TidResult:
    rows = read_mos(mos_file)
    refs = sorted({r.reference for r in rows})
    if test_fraction is not None:
        if test_refs:
            raise DataError("give either test references or a test fraction, not both")
        if not 0 <= test_fraction < 1:
            raise DataError(f"test fraction must be in [0, 1), got {test_fraction}")
        n = min(max(1, round(len(refs) * test_fraction)), len(refs) - 1) if test_fraction else 0
        chosen = set(random.Random(seed).sample(refs, n))
    else:
        chosen = parse_refs(test_refs) if test_refs else set(DEFAULT_TEST_REFS)
        unknown = chosen - set(refs)
        if unknown:
            raise DataError(f"test references {sorted(unknown)} are not in {mos_file} "
                            f"(it has I{refs[0]:02d}..I{refs[-1]:02d})")
    test = [r for r in rows if r.reference in chosen]
    train = [r for r in rows if r.reference not in chosen]
    if not train:
        raise DataError(f"every reference image of {mos_file} is a test reference: "
                        "no training images would be left")
    out_dir = Path(out_dir)
    for name, part in (("train", train), ("test", test)):
        write_label_rows(out_dir / f"{prefix}_{name}.json",
                         [(r.image_id, r.label.tolist()) for r in part])
    return TidResult(train, test, sorted(chosen))
