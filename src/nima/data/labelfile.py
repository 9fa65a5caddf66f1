"""Raw label files for the dataset tools: read without normalising, write one row per line.

`nima.labels.load_samples` normalises labels and stops at the first bad row, which is right
for training. The data tools need the raw numbers (vote counts stay counts) and, for `check`,
every bad row at once, so they read the JSON array themselves and validate row by row.
Text inputs (AVA.txt, mos files, CSVs) report errors as "FILE:LINE: what is wrong".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from nima import files
from nima.errors import DataError, LabelError
from nima.labels import MAX_FILE_BYTES, rows_to_json


def input_error(path: str | Path, lineno: int, message: str) -> DataError:
    return DataError(f"{path}:{lineno}: {message}")


def read_text(path: str | Path, what: str) -> str:
    """A UTF-8 (optionally BOM-prefixed) text file; failures are one DataError naming `what`."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{what} is a directory: {path}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None


def read_lines(path: str | Path, what: str) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, stripped line) for non-blank, non-comment lines."""
    text = read_text(path, what)
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield lineno, line


def parse_number(path: str | Path, lineno: int, field: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise input_error(path, lineno, f"{field} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise input_error(path, lineno, f"{field} must be finite, got {text!r}")
    return value


def read_label_json(path: str | Path) -> list[Any]:
    """The decoded JSON array of a label file, rows unvalidated.

    Read like the trainer reads it (`nima.files.read_json`: BOM, size limit, nesting,
    positions in errors), so a file the tools accept is one training accepts, and vice versa.
    """
    path = Path(path)
    data = files.read_json(path, "samples file", MAX_FILE_BYTES, LabelError)
    if not isinstance(data, list):
        raise LabelError(f"{path}: expected a JSON array of samples, got {type(data).__name__}")
    if not data:
        raise LabelError(f"{path}: contains no samples")
    return data


def write_label_rows(path: str | Path, rows: Iterable[tuple[str, Sequence[Any]]]) -> None:
    """Raw rows (vote counts stay counts) in the label file format of `nima.labels`."""
    files.write_text(path, rows_to_json(rows))


def raw_rows(data: Sequence[Any]) -> list[tuple[str, list[Any]]]:
    """(image_id, label) from decoded, already validated rows."""
    return [(row["image_id"], row["label"]) for row in data]
