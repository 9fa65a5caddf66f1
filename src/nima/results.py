"""Result files of `nima predict`: the record of one image, streamed writers (JSON array,
JSON lines, CSV), streaming readers, validation, min-max normalisation and merge (the partial
file of a running job is partial.py).

One record per image:

    {"image_id": "<file stem>", "image": "<path relative to the source>",
     "predictions": [10 probabilities], "mean_score_prediction": m, "sd_score_prediction": s}

or, for a file that cannot be decoded, `{"image_id", "image", "error": "<why>"}`. A run that
scores with several models (`nima predict --also`) adds `"scores": {"<model>": {predictions,
mean_score_prediction, sd_score_prediction}, ...}` for every model, the first one's fields
staying at the top level, so readers of single-model files read these unchanged. In CSV
each model adds the columns `<model>:mean_score_prediction`, `<model>:sd_score_prediction`
and `<model>:p1`..`<model>:p10`.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence

import numpy as np

from nima import files, scores
from nima.errors import DataError, NimaError

log = logging.getLogger(__name__)

FORMATS = ("json", "jsonl", "csv")
NORMALIZE = ("minmax",)
PARTIAL_SUFFIX = ".partial"
META_SUFFIX = ".meta.json"
SCORE_FIELDS = ("predictions", "mean_score_prediction", "sd_score_prediction")


# --- one record ---------------------------------------------------------------------------------

def result_fields(dist: np.ndarray) -> dict:
    """The score fields of one result, or an error for a distribution that is not finite
    (a diverged model): NaN is not JSON, and every strict reader would refuse the file."""
    dist = np.asarray(dist, np.float64)
    if not np.isfinite(dist).all():
        return {"error": "the model returned NaN or infinite scores (diverged weights?)"}
    return {"predictions": [round(float(p), 6) for p in dist],
            "mean_score_prediction": round(float(scores.mean_score(dist)), 6),
            "sd_score_prediction": round(float(scores.sd_score(dist)), 6)}


def relative_name(path: Path, root: Path | None) -> str:
    if root is None:
        return str(path)
    try:
        rel = path.relative_to(root)
        return str(rel) if str(rel) != "." else path.name
    except ValueError:
        return str(path)


# --- writers: streamed, finalised atomically ------------------------------------------------

_BINS = [f"p{i}" for i in range(1, scores.N_BINS + 1)]
CSV_HEADER = ["image_id", "image", "mean_score_prediction", "sd_score_prediction", *_BINS,
              "error"]


def _csv_score_columns(key: str) -> list[str]:
    return [f"{key}:mean_score_prediction", f"{key}:sd_score_prediction",
            *(f"{key}:{b}" for b in _BINS)]


def _csv_scores(fields: dict) -> list:
    return [fields.get("mean_score_prediction", ""), fields.get("sd_score_prediction", ""),
            *fields.get("predictions", [""] * scores.N_BINS)]


class _Aborted(Exception):
    pass


class ResultWriter:
    """Streams results to a file (atomic: appears complete or not at all) or to stdout."""

    def __init__(self, path: str | Path | None, fmt: str = "json",
                 score_keys: Sequence[str] = ()):
        """`score_keys`: the models of a several-model run, for the CSV columns."""
        if fmt not in FORMATS:
            raise NimaError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.path, self.fmt, self.count, self.failed = path, fmt, 0, 0
        self.score_keys = list(score_keys)
        # surrogateescape: a CSV keeps the raw bytes of a file name that is not valid UTF-8.
        self._ctx = (files.atomic_open(path, "w", encoding="utf-8", errors="surrogateescape",
                                       newline="") if path else None)
        self._out: IO[str] = self._ctx.__enter__() if self._ctx else sys.stdout
        self._csv = None
        if fmt == "json":
            self._out.write("[")
        elif fmt == "csv":
            self._csv = csv.writer(self._out, lineterminator="\n")
            self._csv.writerow(CSV_HEADER + [c for k in self.score_keys
                                             for c in _csv_score_columns(k)])

    def write(self, result: dict) -> None:
        self.failed += "error" in result
        if self.fmt == "csv":
            row = [result["image_id"], result["image"], *_csv_scores(result),
                   result.get("error", "")]
            for key in self.score_keys:
                row += _csv_scores(result.get("scores", {}).get(key, {}))
            self._csv.writerow(row)
        else:
            line = json.dumps(result)  # ASCII: non-UTF-8 file names survive as \\udcXX
            if self.fmt == "json":
                line = ("\n" if self.count == 0 else ",\n") + line
            else:
                line += "\n"
            self._out.write(line)
        self.count += 1

    def close(self, ok: bool = True) -> None:
        try:
            if ok:
                if self.fmt == "json":
                    self._out.write("\n]\n" if self.count else "]\n")
                self._out.flush()
        finally:
            if self._ctx is not None:
                if ok:
                    self._ctx.__exit__(None, None, None)
                else:  # an interrupted or failed run leaves no half file behind
                    with contextlib.suppress(Exception):
                        self._ctx.__exit__(_Aborted, _Aborted(), None)

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


# --- reading results back (resume, normalise, merge) -------------------------------------------

def format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}.get(suffix, "json")


def read_results(path: str | Path, fmt: str | None = None, *,
                 allow_empty: bool = True) -> Iterator[dict]:
    """Stream the result dicts of a predictions file, one at a time (resume, normalise, merge,
    `nima report`).

    The format is sniffed from the first character (`[` JSON array, `{` JSON lines, else
    CSV) unless `fmt` is given. JSON arrays are decoded incrementally in any layout, so a
    million-entry file never sits in memory. A blank file has no results (an empty shard);
    with allow_empty=False it is an error. Anything malformed is a DataError naming the
    file and the entry.
    """
    path = Path(path)
    try:  # -sig: a BOM from Excel is fine; surrogateescape: CSV keeps non-UTF-8 file names
        f = open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as e:
        raise DataError(f"cannot read predictions file {path}: {e.strerror or e}") from None
    with f:
        first = " "
        while first.isspace():
            first = f.read(1)
        if not first:
            if not allow_empty:
                raise DataError(f"predictions file is empty: {path}")
            return
        if "\udc80" <= first <= "\udcff":  # an undecodable first byte: JPEG, PNG, ...
            raise DataError(f"{path} is not UTF-8 text (not a predictions file?)")
        f.seek(0)
        fmt = fmt or ("json" if first == "[" else "jsonl" if first == "{" else "csv")
        try:
            yield from {"json": _json_array, "jsonl": _jsonl, "csv": _csv_rows}[fmt](f, path)
        except csv.Error as e:
            raise DataError(f"{path} is not a readable CSV: {e}") from None


def _object(obj: object, where: str) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{where} is not a JSON object")
    return obj


_WS = re.compile(r"[\s,]*")  # between array elements: whitespace and the separating comma


def _json_array(f: IO[str], path: Path, chunk: int = 1 << 16) -> Iterator[dict]:
    decoder = json.JSONDecoder()
    buf, n = f.read(chunk), 0
    pos = buf.index("[") + 1
    while True:
        pos = _WS.match(buf, pos).end()
        if pos == len(buf):
            more = f.read(chunk)
            if not more:
                raise DataError(f"{path}: the JSON array is not closed (truncated file?)")
            buf, pos = buf[pos:] + more, 0
            continue
        if buf[pos] == "]":
            tail = buf[pos + 1:]
            while tail:  # two arrays concatenated, or a failed append: not one valid file
                if tail.strip():
                    raise DataError(f"{path}: text after the closing ] of the JSON array")
                tail = f.read(chunk)
            return
        try:
            obj, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as e:
            # Usually the object continues in the next chunk; a result is never 1 MB long.
            more = f.read(chunk) if len(buf) - pos < (1 << 20) else ""
            if not more:
                raise DataError(f"{path}: entry {n + 1} is not valid JSON ({e.msg})") from None
            buf, pos = buf[pos:] + more, 0
            continue
        n += 1
        yield _object(obj, f"{path}: entry {n}")
        pos = end


def _jsonl(f: IO[str], path: Path) -> Iterator[dict]:
    for n, line in enumerate(f, 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
            yield _object(obj, f"{path}: line {n}")


def _csv_rows(f: IO[str], path: Path) -> Iterator[dict]:
    reader = csv.DictReader(f)
    need = {"image_id", "image", "error", *_BINS}
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise DataError(f"{path}: not a predictions CSV (needs columns image_id, image, "
                        "p1..p10, error as written by `nima predict --format csv`)")
    keys = [c.split(":", 1)[0] for c in reader.fieldnames if c.endswith(":p1")]
    for n, row in enumerate(reader, 2):
        if None in row or None in row.values():  # extra or missing cells
            raise DataError(f"{path}: line {n} does not have the header's "
                            f"{len(reader.fieldnames)} columns")
        obj: dict = {"image_id": row["image_id"], "image": row["image"]}
        if row["error"]:
            obj["error"] = row["error"]
            yield obj
            continue
        try:
            obj.update(_csv_fields(row, ""))
            if keys:
                obj["scores"] = {k: _csv_fields(row, f"{k}:") for k in keys}
        except ValueError:
            raise DataError(f"{path}: line {n} has no valid p1..p10 numbers") from None
        yield obj


def _csv_fields(row: dict, prefix: str) -> dict:
    fields: dict = {"predictions": [float(row[prefix + b]) for b in _BINS]}
    for key in ("mean_score_prediction", "sd_score_prediction"):
        if row.get(prefix + key):  # as written, so CSV and JSON results agree exactly
            fields[key] = float(row[prefix + key])
    return fields


def validate_result(r: dict, where: str) -> None:
    """A result must name its image and carry either an error or a valid distribution with
    its mean and sd (each model's, in a several-model run). The one rule for every reader of
    results (merge, `nima report`)."""
    if not isinstance(r.get("image"), str) or not isinstance(r.get("image_id"), str):
        raise DataError(f"{where}: result without 'image' and 'image_id'")
    if "error" in r:
        return
    _validate_scores(r, where, r["image"])
    several = r.get("scores", {})
    if not isinstance(several, dict):
        raise DataError(f"{where}: 'scores' of {r['image']} is not an object")
    for key, fields in several.items():
        name = f"{r['image']} (scores[{key!r}])"
        if not isinstance(fields, dict):
            raise DataError(f"{where}: {name} is not an object")
        _validate_scores(fields, where, name)


def validate_distribution(r: dict, where: str, name: str | None = None) -> None:
    """A result's 'predictions': 10 finite non-negative numbers summing to 1."""
    p = r.get("predictions")
    ok = isinstance(p, list) and len(p) == scores.N_BINS and all(
        isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in p)
    if not ok or abs(sum(p) - 1.0) > 1e-3:
        raise DataError(f"{where}: 'predictions' of {name or r.get('image')} is not a 10-bin "
                        f"distribution (10 numbers, not negative, summing to 1)")


def _validate_scores(fields: dict, where: str, name: str) -> None:
    validate_distribution(fields, where, name)
    for k in ("mean_score_prediction", "sd_score_prediction"):
        if k not in fields:
            raise DataError(f"{where}: '{k}' of {name} is missing")
        if not isinstance(fields[k], (int, float)) or not math.isfinite(fields[k]):
            raise DataError(f"{where}: '{k}' of {name} is not a number")


# --- normalisation ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Normalization:
    """Min-max rescaling of the run's mean scores to [lo, hi] (needs every mean: two passes)."""

    method: str = "minmax"
    lo: float = 1.0
    hi: float = 10.0

    def fit(self, results: Iterable[dict]) -> dict:
        means = (r["mean_score_prediction"] for r in results if "error" not in r)
        lo = hi = None
        for m in means:
            lo = m if lo is None or m < lo else lo
            hi = m if hi is None or m > hi else hi
        return {"method": self.method, "range": [self.lo, self.hi], "min": lo, "max": hi}

    def apply(self, r: dict, fitted: dict) -> dict:
        if "error" in r:
            return r
        lo, hi = fitted["min"], fitted["max"]
        m = r["mean_score_prediction"]
        scaled = (self.lo + self.hi) / 2 if hi == lo else \
            self.lo + (m - lo) / (hi - lo) * (self.hi - self.lo)
        return {**r, "mean_score_prediction": round(scaled, 6), "mean_score_raw": m}


def meta_path(predictions_file: Path) -> Path:
    return predictions_file.with_name(predictions_file.name + META_SUFFIX)


def check_output(path: Path, what: str) -> None:
    """Before any work: a run of hours must not end in 'cannot write' at the last step."""
    if path.is_dir():
        raise NimaError(f"{what} {path} is a directory; name a file, e.g. "
                        f"{path / 'predictions.json'}")


# --- merge --------------------------------------------------------------------------------------

def merge(output: str | Path, parts: Sequence[str | Path], fmt: str | None = None) -> tuple[int, int]:
    """Join predictions files (any format) into one, de-duplicated by image path.

    Every record is validated. Parts are interleaved by path, so shards of one folder merge
    into the order a single run writes. When an image appears more than once, the first
    successful result wins (an error result only when no part scored it). Two streamed
    passes; memory holds only the set of image paths. Returns (images written, failed).
    """
    output = Path(output)
    fmt = fmt or format_of(output)
    if not parts:
        raise NimaError("merge needs at least one part")
    check_output(output, "output")
    for part in parts:
        if not Path(part).is_file():
            raise DataError(f"part not found: {part}")
    scored: set[str] = set()
    score_keys: dict[str, None] = {}  # ordered: the models of several-model runs
    total = 0
    for part in parts:
        for n, r in enumerate(read_results(part), 1):
            validate_result(r, f"{part} result {n}")
            total += 1
            if "error" not in r:
                scored.add(r["image"])
                score_keys.update(dict.fromkeys(r.get("scores", {})))
    written: set[str] = set()
    # Each part is in folder-walk order (names sorted per directory, i.e. sorted by path
    # components): interleaving them by that key gives the order of one unsharded run.
    merged = heapq.merge(*(read_results(part) for part in parts),
                         key=lambda r: r["image"].split("/"))
    with ResultWriter(output, fmt, list(score_keys)) as writer:
        for r in merged:
            key = r["image"]
            if key in written or ("error" in r and key in scored):
                continue
            written.add(key)
            writer.write(r)
    log.info("merged %d parts: %d results, %d unique images, %d failed -> %s",
             len(parts), total, writer.count, writer.failed, output)
    files.write_json(meta_path(output), {
        "predictions_file": str(output), "format": fmt, "merged_from": [str(p) for p in parts],
        "count": writer.count, "failed": writer.failed, "duplicates_dropped": total - writer.count,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return writer.count, writer.failed
