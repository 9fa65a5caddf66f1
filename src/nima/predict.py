"""Score images with trained NIMA models and write the results, fast and memory-flat.

One result per image, in the order the folder walk yields them:

    {"image_id": "<file stem>", "image": "<path relative to the source>",
     "predictions": [10 probabilities], "mean_score_prediction": m, "sd_score_prediction": s}

or, for a file that cannot be decoded, `{"image_id", "image", "error": "<why>"}`.

How a run flows (`predict`): the folder walk streams paths; a sharding filter keeps this
shard's paths; a thread pool decodes ahead of the model (Pillow releases the GIL, so decoding
uses every core); batches go through the backend (TFLite/XNNPACK on CPU, Keras on GPU, see
runtime.py); each result is appended to `<predictions-file>.partial` (JSON lines) as its batch
finishes. At the end one more streamed pass writes the predictions file in its format,
atomically (with min-max normalisation applied, if asked), then `<predictions-file>.meta.json`,
and removes the partial file. So kill -9 leaves the predictions file absent or complete, and
`--resume` continues from the partial file. Nothing grows with the folder except the set of
already-scored paths when resuming.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import errno
import hashlib
import heapq
import io
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from nima import files, images, runtime, scores
from nima.errors import DataError, ModelError, NimaError

log = logging.getLogger(__name__)

FORMATS = ("json", "jsonl", "csv")
DEFAULT_MODEL_NAME = "technical"
NORMALIZE = ("minmax",)
PARTIAL_SUFFIX = ".partial"
META_SUFFIX = ".meta.json"


def models_dir() -> Path:
    """The repository's models/ folder (or $NIMA_MODELS_DIR, as set in the Docker images)."""
    env = os.environ.get("NIMA_MODELS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "models"


def default_model_path() -> Path:
    return models_dir() / DEFAULT_MODEL_NAME


def resolve_model_file(source: str | Path | None) -> Path:
    """A model file from a `.keras`/`.weights.h5` file, a job dir, a model dir or the default."""
    path = Path(source) if source is not None else default_model_path()
    if path.is_dir():
        for name in ("best.keras", "model.keras"):
            if (path / name).is_file():
                return path / name
        raise ModelError(f"no best.keras or model.keras in {path}")
    if not path.exists():
        if source is None:
            raise ModelError(f"the default model is missing ({path}); pass --weights-file")
        raise ModelError(f"model not found: {path}")
    return path


def _model_loader(path: Path, config_file: str | Path | None) -> tuple[Callable[[], Any], list[Path]]:
    """(a function building the Keras model, the files that define it)."""
    if path.name.endswith(".keras"):
        def load():
            from nima.model import load_model

            return load_model(path)
        return load, [path]
    cfg_path = Path(config_file) if config_file else path.parent / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"weights file {path} needs its training config (--config-file; for "
                         "Keras 2 weights, any config of the same base model)")

    def build():
        from nima import legacy
        from nima.config import Config
        from nima.model import build_model

        config = Config.load(cfg_path).replace(base_weights=None)
        if legacy.is_keras2_weights(path):  # idealo's and other Keras 2 NIMA `.hdf5` files
            return legacy.load_keras2_weights(path, config)
        model = build_model(config)
        try:
            model.load_weights(path)
        except Exception as e:
            raise ModelError(f"cannot load weights {path}: {str(e).splitlines()[0]}") from None
        return model
    return build, [cfg_path, path]


class Predictor:
    """A model plus what it needs to score files: backend, input size and a description.

    The Keras model is built lazily: with a cached TFLite conversion a CPU run never imports
    TensorFlow (saves seconds of start-up per process, which matters for many small shards).
    """

    def __init__(self, model=None, info: dict | None = None, runner: runtime.Runner | None = None,
                 *, loader: Callable[[], Any] | None = None, input_size: int | None = None):
        self._model, self._loader = model, loader
        self.info = dict(info or {})
        self._input_size = input_size
        self.runner = runner
        if runner is None and model is not None:
            self.runner = runtime.KerasRunner(model)

    @property
    def model(self):
        if self._model is None:
            self._model = self._loader()
        return self._model

    @property
    def backend(self) -> str:
        return self.runner.name if self.runner is not None else "keras"

    @property
    def input_size(self) -> int:
        if self._input_size is None:
            from nima.model import model_input_size

            self._input_size = model_input_size(self.model)
        return self._input_size

    @classmethod
    def load(cls, source: str | Path | None = None, config_file: str | Path | None = None,
             backend: str = "keras", num_threads: int | None = None) -> "Predictor":
        """From a `.keras` file, a job/model directory, or weights + config; None = default.

        backend: "keras"; "tflite" (converted once, cached; error if conversion fails);
        "auto" (Keras on a GPU, else TFLite, falling back to Keras with a log note).
        """
        if backend not in runtime.BACKENDS:
            raise NimaError(f"unknown backend {backend!r}; choose one of "
                            f"{', '.join(runtime.BACKENDS)}")
        path = resolve_model_file(source)
        info: dict = {"model": str(path)}
        meta = path.parent / "metadata.json"
        if meta.is_file():
            try:
                info.update(json.loads(meta.read_text()))
            except ValueError:
                log.warning("ignoring unreadable %s", meta)
        if "task" not in info:  # a training job records it in its config
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                info["task"] = json.loads((path.parent / "config.json").read_text())["task"]
        loader, defining = _model_loader(path, config_file)
        if backend == "auto":
            backend = "keras" if _maybe_gpu() and runtime.has_gpu() else "tflite"
            fallback = True
        else:
            fallback = False
        pred = cls(None, info, loader=loader)
        if backend == "tflite":
            key = runtime.file_key(defining)
            try:
                pred.runner = runtime.cached_runner(key, lambda: pred.model, num_threads)
                pred._input_size = pred.runner.input_size
            except ModelError as e:
                if not fallback:
                    raise
                log.warning("%s; using the Keras backend instead", e)
        if pred.runner is None:
            pred.runner = runtime.KerasRunner(pred.model)
        log.info("model %s (%s), backend %s", path, info.get("description", path.stem),
                 pred.backend)
        return pred

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(N, size, size, 3) RGB 0..255 (uint8 or float) -> (N, 10) float64 probabilities."""
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise NimaError(f"expected a batch of shape (N, H, W, 3), got {batch.shape}")
        if len(batch) == 0:
            return np.empty((0, scores.N_BINS))
        return np.asarray(self.runner(batch.astype(np.float32, copy=False)), np.float64)

    def score_files(self, paths: Iterable[Path], root: Path | None = None,
                    batch_size: int = 32) -> Iterator[dict]:
        """Yield one result dict per path, in order; failures carry `error`."""
        yield from Ensemble([self]).score_files(paths, root, batch_size)


def _maybe_gpu() -> bool:
    # Cheap check before importing TensorFlow just to ask it: no NVIDIA driver, no GPU.
    return os.path.exists("/proc/driver/nvidia/gpus") or os.path.exists("/dev/nvidia0") \
        or bool(os.environ.get("NIMA_ASSUME_GPU"))


# --- decoding ahead of the model ----------------------------------------------------------------

def _decode(path: Path, sizes: Sequence[int]) -> dict[int, np.ndarray] | str:
    try:
        return {s: images.load_image(path, s) for s in sizes}
    except images.ImageError as e:
        log.warning("%s", e)
        return str(e)
    except Exception as e:  # one bad file must never stop a long run
        log.warning("cannot decode image %s: %s", path, e)
        return f"cannot decode image {path}: {e}"


def decode_stream(paths: Iterable[Path], sizes: Sequence[int], workers: int,
                  ahead: int) -> Iterator[tuple[Path, dict[int, np.ndarray] | str]]:
    """(path, {size: uint8 image} or error) in input order, decoded by `workers` threads at
    most `ahead` images in advance: order is kept and memory is bounded by `ahead`."""
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: collections.deque = collections.deque()
        try:
            for path in paths:
                pending.append((path, pool.submit(_decode, path, sizes)))
                if len(pending) >= ahead:
                    p, fut = pending.popleft()
                    yield p, fut.result()
            while pending:
                p, fut = pending.popleft()
                yield p, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()


class Ensemble:
    """Several predictors scoring the same images: distributions are averaged. Each model gets
    the image decoded at its own input size (its preprocessing lives inside the model)."""

    def __init__(self, predictors: Sequence[Predictor]):
        if not predictors:
            raise NimaError("no model to predict with")
        self.predictors = list(predictors)
        self.sizes = sorted({p.input_size for p in self.predictors})
        tasks = {p.info["task"] for p in self.predictors if p.info.get("task")}
        if len(tasks) > 1:
            log.warning("averaging models trained for different tasks (%s): the mean score "
                        "rates neither; score them in separate runs", ", ".join(sorted(tasks)))

    def predict_batches(self, arrays: dict[int, np.ndarray]) -> np.ndarray:
        out = [p.predict_arrays(arrays[p.input_size]) for p in self.predictors]
        return out[0] if len(out) == 1 else np.mean(out, axis=0)

    def score_files(self, paths: Iterable[Path], root: Path | None = None,
                    batch_size: int = 32, workers: int | None = None) -> Iterator[dict]:
        workers = workers or runtime.cpu_threads()
        stream = decode_stream(paths, self.sizes, workers, ahead=2 * batch_size + 2 * workers)
        batch: list[tuple[Path, dict | str]] = []
        for item in stream:
            batch.append(item)
            if len(batch) == batch_size:
                yield from self._score_batch(batch, root)
                batch = []
        if batch:
            yield from self._score_batch(batch, root)

    def _score_batch(self, batch, root: Path | None) -> Iterator[dict]:
        ok = [d for _, d in batch if not isinstance(d, str)]
        probs = iter(())
        if ok:
            arrays = {s: np.stack([d[s] for d in ok]) for s in self.sizes}
            probs = iter(self.predict_batches(arrays))
        for path, d in batch:
            result = {"image_id": path.stem, "image": _relative(path, root)}
            if isinstance(d, str):
                result["error"] = d
            else:
                result.update(result_fields(next(probs)))
            yield result


def result_fields(dist: np.ndarray) -> dict:
    """The score fields of one result, or an error for a distribution that is not finite
    (a diverged model): NaN is not JSON, and every strict reader would refuse the file."""
    dist = np.asarray(dist, np.float64)
    if not np.isfinite(dist).all():
        return {"error": "the model returned NaN or infinite scores (diverged weights?)"}
    return {"predictions": [round(float(p), 6) for p in dist],
            "mean_score_prediction": round(float(scores.mean_score(dist)), 6),
            "sd_score_prediction": round(float(scores.sd_score(dist)), 6)}


def _relative(path: Path, root: Path | None) -> str:
    if root is None:
        return str(path)
    try:
        rel = path.relative_to(root)
        return str(rel) if str(rel) != "." else path.name
    except ValueError:
        return str(path)


# --- sharding ---------------------------------------------------------------------------------

def shard_of(relative_path: str, num_shards: int) -> int:
    """Stable across machines, runs and Python versions (not hash(), which is salted)."""
    digest = hashlib.blake2b(os.fsencode(relative_path.replace(os.sep, "/")),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


# --- writers: streamed, finalised atomically ------------------------------------------------

CSV_HEADER = ["image_id", "image", "mean_score_prediction", "sd_score_prediction",
              *[f"p{i}" for i in range(1, scores.N_BINS + 1)], "error"]


class _Aborted(Exception):
    pass


class ResultWriter:
    """Streams results to a file (atomic: appears complete or not at all) or to stdout."""

    def __init__(self, path: str | Path | None, fmt: str = "json"):
        if fmt not in FORMATS:
            raise NimaError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.path, self.fmt, self.count, self.failed = path, fmt, 0, 0
        # surrogateescape: a CSV keeps the raw bytes of a file name that is not valid UTF-8.
        self._ctx = (files.atomic_open(path, "w", encoding="utf-8", errors="surrogateescape",
                                       newline="") if path else None)
        self._out: IO[str] = self._ctx.__enter__() if self._ctx else sys.stdout
        self._csv = None
        if fmt == "json":
            self._out.write("[")
        elif fmt == "csv":
            self._csv = csv.writer(self._out, lineterminator="\n")
            self._csv.writerow(CSV_HEADER)

    def write(self, result: dict) -> None:
        self.failed += "error" in result
        if self.fmt == "csv":
            p = result.get("predictions", [""] * scores.N_BINS)
            self._csv.writerow([result["image_id"], result["image"],
                                result.get("mean_score_prediction", ""),
                                result.get("sd_score_prediction", ""), *p,
                                result.get("error", "")])
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

def _format_of(path: Path) -> str:
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
    need = {"image_id", "image", "error", *(f"p{i}" for i in range(1, scores.N_BINS + 1))}
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise DataError(f"{path}: not a predictions CSV (needs columns image_id, image, "
                        "p1..p10, error as written by `nima predict --format csv`)")
    for n, row in enumerate(reader, 2):
        if None in row or None in row.values():  # extra or missing cells
            raise DataError(f"{path}: line {n} does not have the header's "
                            f"{len(reader.fieldnames)} columns")
        obj: dict = {"image_id": row["image_id"], "image": row["image"]}
        if row["error"]:
            obj["error"] = row["error"]
        else:
            try:
                obj["predictions"] = [float(row[f"p{i}"]) for i in range(1, scores.N_BINS + 1)]
                for key in ("mean_score_prediction", "sd_score_prediction"):
                    if row.get(key):  # as written, so CSV and JSON results agree exactly
                        obj[key] = float(row[key])
            except ValueError:
                raise DataError(f"{path}: line {n} has no valid p1..p10 numbers") from None
        yield obj


def validate_result(r: dict, where: str) -> None:
    """A result must name its image and carry either an error or a valid distribution with
    its mean and sd. The one rule for every reader of results (merge, `nima report`)."""
    if not isinstance(r.get("image"), str) or not isinstance(r.get("image_id"), str):
        raise DataError(f"{where}: result without 'image' and 'image_id'")
    if "error" in r:
        return
    validate_distribution(r, where)
    for k in ("mean_score_prediction", "sd_score_prediction"):
        if k not in r:
            raise DataError(f"{where}: '{k}' of {r['image']} is missing")
        if not isinstance(r[k], (int, float)) or not math.isfinite(r[k]):
            raise DataError(f"{where}: '{k}' of {r['image']} is not a number")


def validate_distribution(r: dict, where: str) -> None:
    """A result's 'predictions': 10 finite non-negative numbers summing to 1."""
    p = r.get("predictions")
    ok = isinstance(p, list) and len(p) == scores.N_BINS and all(
        isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in p)
    if not ok or abs(sum(p) - 1.0) > 1e-3:
        raise DataError(f"{where}: 'predictions' of {r.get('image')} is not a 10-bin "
                        f"distribution (10 numbers, not negative, summing to 1)")


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


# --- the run ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _closing_quietly(f: IO[bytes]) -> Iterator[IO[bytes]]:
    """Close `f` at the end, ignoring a failed last flush: on a full disk it fails again after
    the error that matters was raised, and the partial file keeps its whole lines either way
    (a successful run flushes and syncs before it gets here)."""
    try:
        yield f
    finally:
        try:
            f.close()
        except OSError:
            pass


def partial_path(predictions_file: Path) -> Path:
    return predictions_file.with_name(predictions_file.name + PARTIAL_SUFFIX)


def meta_path(predictions_file: Path) -> Path:
    return predictions_file.with_name(predictions_file.name + META_SUFFIX)


def run_path(partial: Path) -> Path:
    """What made a partial file: --resume continues only the same run."""
    return partial.with_name(partial.name + ".run.json")


def _check_same_run(partial: Path, run: dict) -> None:
    try:
        earlier = json.loads(run_path(partial).read_text())
    except (OSError, ValueError):
        return  # a partial file from before run records were kept: nothing to compare
    changed = [k for k in run if k in earlier and earlier[k] != run[k]]
    if changed:
        k = changed[0]
        raise NimaError(f"--resume: {partial} was made with {k} {earlier[k]}, this run has "
                        f"{run[k]}; give the same arguments, or drop --resume to start over")


def _read_partial(path: Path) -> tuple[set[str], int, int]:
    """Scored images of an interrupted run; cuts a half-written last line (kill -9) off."""
    done: set[str] = set()
    failed = 0
    good_end = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                r = json.loads(line)
                done.add(r["image"])
            except (ValueError, KeyError, TypeError):
                break
            failed += "error" in r
            good_end += len(line)
    if good_end != path.stat().st_size:
        log.warning("%s ends with a half-written line; dropping it", path)
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return done, len(done), failed


def _lock(f: IO[bytes], partial: Path) -> None:
    """Refuse a second run on the same predictions file: both would append to one partial
    file and the first to finish would publish the other's half-written lines."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise NimaError(f"another nima predict is writing {partial}; wait for it to finish "
                        "or choose another --predictions-file") from None
    except OSError as e:  # a file system without locks (some network mounts): go on
        log.debug("cannot lock %s: %s", partial, e)
        return
    try:
        same = os.path.samestat(os.fstat(f.fileno()), os.stat(partial))
    except FileNotFoundError:
        same = False
    if not same:  # a run finished and removed it between our open() and our lock
        raise NimaError(f"another nima predict has just finished with {partial}; run again "
                        "to score the images anew")


def _write_final(partial: Path, predictions_file: Path | None, fmt: str,
                 normalization: Normalization | None) -> tuple[dict | None, int, int]:
    fitted = normalization.fit(read_results(partial, "jsonl")) if normalization else None
    with ResultWriter(predictions_file, fmt) as writer:
        for r in read_results(partial, "jsonl"):
            writer.write(normalization.apply(r, fitted) if normalization else r)
    return fitted, writer.count, writer.failed


def predict(
    image_source: str | Path,
    model: str | Path | None | Sequence[str | Path | None] = None,
    *,
    config_file: str | Path | None = None,
    predictions_file: str | Path | None = None,
    fmt: str | None = None,
    batch_size: int = 32,
    backend: str = "auto",
    num_shards: int = 1,
    shard_index: int = 0,
    resume: bool = False,
    normalize: str | None = None,
    norm_range: tuple[float, float] | None = None,
    workers: int | None = None,
) -> tuple[int, int]:
    """Score a file or folder; returns (images in the output, images failed).

    fmt None: from the suffix of predictions_file (.jsonl/.ndjson, .csv), else json.
    norm_range (default 1..10) only with normalize.
    """
    started = time.time()
    source = Path(image_source)
    if fmt is None:
        fmt = _format_of(Path(predictions_file)) if predictions_file is not None else "json"
    if fmt not in FORMATS:
        raise NimaError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if num_shards < 1:
        raise NimaError(f"--num-shards must be at least 1, not {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise NimaError(f"--shard-index must be in 0..{num_shards - 1}, not {shard_index}")
    if batch_size < 1:
        raise NimaError("--batch-size must be at least 1")
    if workers is not None and workers < 1:
        raise NimaError("--workers must be at least 1")
    if normalize is not None and normalize not in NORMALIZE:
        raise NimaError(f"unknown normalisation {normalize!r}; choose {', '.join(NORMALIZE)}")
    if norm_range is not None and normalize is None:
        raise NimaError("--range only applies with --normalize minmax")
    norm_range = norm_range or (1.0, 10.0)
    if normalize and not norm_range[0] < norm_range[1]:
        raise NimaError("--range LO HI needs LO < HI")
    if resume and predictions_file is None:
        raise NimaError("--resume needs --predictions-file (the partial results live beside it)")
    if not source.exists():
        raise NimaError(f"image source not found: {source}")
    if predictions_file is not None:
        _check_output(Path(predictions_file), "--predictions-file")
    root = source if source.is_dir() else source.parent
    sources = list(model) if isinstance(model, (list, tuple)) else [model]
    predictors = [Predictor.load(m, config_file, backend) for m in sources]
    ensemble = Ensemble(predictors)
    normalization = Normalization(normalize, *norm_range) if normalize else None

    paths: Iterable[Path] = images.iter_image_files(source)
    if num_shards > 1:
        paths = (p for p in paths if shard_of(_relative(p, root), num_shards) == shard_index)

    # Straight to stdout: nothing to resume or normalise, stream as we go.
    if predictions_file is None and normalization is None:
        with ResultWriter(None, fmt) as writer:
            for result in _progress(ensemble.score_files(paths, root, batch_size, workers)):
                writer.write(result)
        _log_done(writer.count, writer.failed, started, None, source, num_shards)
        return writer.count, writer.failed

    tmpdir = None
    if predictions_file is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="nima-predict-")
        partial = Path(tmpdir.name) / "results.jsonl"
    else:
        predictions_file = Path(predictions_file)
        partial = partial_path(predictions_file)
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        out = open(partial, "a+b")  # not truncated yet: another run may own it
    except OSError as e:
        raise files.WriteError(f"cannot write {partial}: {e.strerror or e}") from None
    resumed = new = 0
    # Mixing the results of two different runs in one file would be silent corruption.
    run = {"image source": str(source.resolve()),
           "models": [str(Path(p.info["model"]).resolve()) for p in predictors],
           "shard": f"{shard_index} of {num_shards}"}
    try:
        with _closing_quietly(out):  # the lock lives as long as this file stays open
            _lock(out, partial)
            if resume and out.seek(0, os.SEEK_END):
                _check_same_run(partial, run)
                done, resumed, _ = _read_partial(partial)
                log.info("resuming: %d images already scored in %s", resumed, partial)
                paths = (p for p in paths if _relative(p, root) not in done)
            elif out.seek(0, os.SEEK_END):
                log.warning("discarding the partial results of an earlier run (%s); use "
                            "--resume to continue it instead", partial)
                out.truncate(0)
            elif resume:
                log.warning("nothing to resume: no partial results in %s; scoring every image",
                            partial)
            if tmpdir is None:
                files.write_json(run_path(partial), run)
            try:
                buf = io.BytesIO()
                for result in _progress(ensemble.score_files(paths, root, batch_size, workers)):
                    buf.write(json.dumps(result).encode("ascii") + b"\n")
                    new += 1
                    if new % batch_size == 0:  # one write per batch: whole lines reach the file
                        out.write(buf.getvalue())
                        out.flush()
                        buf = io.BytesIO()
                out.write(buf.getvalue())
                out.flush()
                os.fsync(out.fileno())
                fitted, count, failed = _write_final(partial, predictions_file, fmt,
                                                     normalization)
            except OSError as e:
                why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
                raise files.WriteError(
                    f"cannot write {predictions_file or partial}: {why}; the previous file is "
                    "unchanged" + (f", results so far are in {partial} (rerun with --resume)"
                                   if tmpdir is None else "")) from None
            elapsed = time.time() - started
            if predictions_file is not None:
                files.write_json(meta_path(predictions_file), {
                    "predictions_file": str(predictions_file), "format": fmt,
                    "image_source": str(source),
                    "models": [p.info for p in predictors],
                    "backend": [p.backend for p in predictors],
                    "ensemble": "mean of distributions" if len(predictors) > 1 else None,
                    "normalization": fitted,
                    "shard": {"index": shard_index, "count": num_shards},
                    "count": count, "failed": failed, "scored_this_run": new,
                    "resumed_from_partial": resumed,
                    "seconds": round(elapsed, 3),
                    "images_per_second": round(new / elapsed, 2) if elapsed > 0 else None,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                })
                partial.unlink()
                run_path(partial).unlink(missing_ok=True)
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    _log_done(count, failed, started, predictions_file, source, num_shards)
    return count, failed


PROGRESS_SECONDS = 60.0


def _progress(results: Iterable[dict]) -> Iterator[dict]:
    """Pass results through, logging a count every PROGRESS_SECONDS: a job over millions of
    photos would otherwise say nothing for hours."""
    start = last = time.monotonic()
    n = failed = 0
    for r in results:
        n += 1
        failed += "error" in r
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS:
            log.info("%d images scored so far (%d failed), %.1f img/s", n, failed,
                     n / (now - start))
            last = now
        yield r


def _check_output(path: Path, what: str) -> None:
    """Before any work: a run of hours must not end in 'cannot write' at the last step."""
    if path.is_dir():
        raise NimaError(f"{what} {path} is a directory; name a file, e.g. "
                        f"{path / 'predictions.json'}")


def _log_done(count: int, failed: int, started: float, predictions_file, source: Path,
              num_shards: int) -> None:
    if count == 0:  # a mistyped folder should not pass for a finished job
        log.warning("no image files (by extension) in %s%s", source,
                    " for this shard" if num_shards > 1 else "")
    elapsed = time.time() - started
    log.info("%d images, %d failed, %.1f s (%.1f img/s)%s", count, failed, elapsed,
             count / elapsed if elapsed > 0 else 0.0,
             f"; results in {predictions_file}" if predictions_file else "")


# --- merge --------------------------------------------------------------------------------------

def merge(output: str | Path, parts: Sequence[str | Path], fmt: str | None = None) -> tuple[int, int]:
    """Join predictions files (any format) into one, de-duplicated by image path.

    Every record is validated. Parts are interleaved by path, so shards of one folder merge
    into the order a single run writes. When an image appears more than once, the first
    successful result wins (an error result only when no part scored it). Two streamed
    passes; memory holds only the set of image paths. Returns (images written, failed).
    """
    output = Path(output)
    fmt = fmt or _format_of(output)
    if not parts:
        raise NimaError("merge needs at least one part")
    _check_output(output, "output")
    for part in parts:
        if not Path(part).is_file():
            raise DataError(f"part not found: {part}")
    scored: set[str] = set()
    total = 0
    for part in parts:
        for n, r in enumerate(read_results(part), 1):
            validate_result(r, f"{part} result {n}")
            total += 1
            if "error" not in r:
                scored.add(r["image"])
    written: set[str] = set()
    # Each part is in folder-walk order (names sorted per directory, i.e. sorted by path
    # components): interleaving them by that key gives the order of one unsharded run.
    merged = heapq.merge(*(read_results(part) for part in parts),
                         key=lambda r: r["image"].split("/"))
    with ResultWriter(output, fmt) as writer:
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
