"""Score images with NIMA models, fast and memory-flat: `nima predict`.

How a run flows (`predict`): the folder walk streams paths; a sharding filter keeps this
shard's paths; a thread pool decodes ahead of the models, each file once for all of them
(`images.load_views`: every model gets its own input size and resize); batches go through
each model's backend (TFLite/XNNPACK on CPU, Keras on GPU, see runtime.py); each result is
appended to `<predictions-file>.partial` (JSON lines) as its batch finishes. At the end one
more streamed pass writes the predictions file in its format, atomically (with min-max
normalisation applied, if asked), then `<predictions-file>.meta.json`, and removes the
partial file. So kill -9 leaves the predictions file absent or complete, and `--resume`
continues from the partial file. Nothing grows with the folder except the set of
already-scored paths when resuming. The files themselves are results.py's.

Models combine two ways: several `--model`s are an ensemble (their distributions averaged:
one score); `--also MODEL` adds a separate score (say technical quality beside aesthetics),
written under "scores" in each record.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from nima import files, images, partial, resolve, results, runtime, scores
from nima.errors import NimaError
from nima.images import View

log = logging.getLogger(__name__)


class Predictor:
    """A model plus what it needs to score files: backend, input view and a description.

    The Keras model is built lazily: with a cached TFLite conversion a CPU run never imports
    TensorFlow (saves seconds of start-up per process, which matters for many small shards).
    """

    def __init__(self, ref: resolve.ModelRef, runner: runtime.Runner | None = None,
                 model: Any = None):
        self.ref, self.runner, self._model = ref, runner, model
        self.info = ref.info
        self._input_size: int | None = None

    @property
    def model(self):
        if self._model is None:
            self._model = self.ref.load()
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

    @property
    def view(self) -> View:
        """The model's input: square size and resize method (nima.images)."""
        return self.input_size, self.ref.resize

    @classmethod
    def load(cls, source: str | os.PathLike | None = None,
             config_file: str | os.PathLike | None = None, backend: str = "keras",
             num_threads: int | None = None) -> "Predictor":
        """From any model reference (nima.resolve: a name, a file, a directory); None = the
        default model.

        backend: "keras"; "tflite" (converted once, cached; error if conversion fails);
        "auto" (Keras on a GPU, else TFLite, falling back to Keras with a log note).
        """
        if backend not in runtime.BACKENDS:
            raise NimaError(f"unknown backend {backend!r}; choose one of "
                            f"{', '.join(runtime.BACKENDS)}")
        pred = cls(resolve.resolve(source, config_file))
        fallback = backend == "auto"
        if fallback:
            backend = "keras" if _maybe_gpu() and runtime.has_gpu() else "tflite"
        if backend == "tflite":
            try:
                pred.runner = runtime.cached_runner(runtime.file_key(pred.ref.files),
                                                    lambda: pred.model, num_threads)
                pred._input_size = pred.runner.input_size
            except NimaError as e:
                if not fallback:
                    raise
                log.warning("%s; using the Keras backend instead", e)
        if pred.runner is None:
            pred.runner = runtime.KerasRunner(pred.model)
        log.info("model %s (%s), backend %s, %s resize", pred.ref.path,
                 pred.info.get("description", pred.ref.path.stem), pred.backend,
                 pred.ref.resize)
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
        yield from Scorer([Ensemble([self])]).score_files(paths, root, batch_size)


def _maybe_gpu() -> bool:
    # Cheap check before importing TensorFlow just to ask it: no NVIDIA driver, no GPU.
    return os.path.exists("/proc/driver/nvidia/gpus") or os.path.exists("/dev/nvidia0") \
        or bool(os.environ.get("NIMA_ASSUME_GPU"))


class Ensemble:
    """Several predictors giving one score: their distributions are averaged. Each model gets
    the image made its own way (input size and resize; preprocessing lives in the model)."""

    def __init__(self, predictors: Sequence[Predictor]):
        if not predictors:
            raise NimaError("no model to predict with")
        self.predictors = list(predictors)
        tasks = {p.info["task"] for p in self.predictors if p.info.get("task")}
        if len(tasks) > 1:
            log.warning("averaging models trained for different tasks (%s): the mean score "
                        "rates neither; score them separately with --also", ", ".join(sorted(tasks)))

    @property
    def label(self) -> str:
        return "+".join(dict.fromkeys(p.ref.label for p in self.predictors))

    def predict_batches(self, arrays: dict[View, np.ndarray]) -> np.ndarray:
        out = [p.predict_arrays(arrays[p.view]) for p in self.predictors]
        return out[0] if len(out) == 1 else np.mean(out, axis=0)


class Scorer:
    """The scores of a run: one per ensemble. The first is the record's own fields; with more
    than one, every score also goes under "scores" by its model's label (results.py)."""

    def __init__(self, ensembles: Sequence[Ensemble]):
        self.ensembles = list(ensembles)
        labels = [e.label for e in self.ensembles]
        self.keys = [k if labels.count(k) == 1 else f"{k}{i + 1}" for i, k in enumerate(labels)]
        self.views = list(dict.fromkeys(p.view for e in self.ensembles for p in e.predictors))

    @property
    def score_keys(self) -> list[str]:
        return self.keys if len(self.ensembles) > 1 else []

    def score_files(self, paths: Iterable[Path], root: Path | None = None,
                    batch_size: int = 32, workers: int | None = None) -> Iterator[dict]:
        workers = workers or runtime.cpu_threads()
        stream = decode_stream(paths, self.views, workers, ahead=2 * batch_size + 2 * workers)
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
        probs: list[Iterator[np.ndarray]] = [iter(()) for _ in self.ensembles]
        if ok:
            arrays = {v: np.stack([d[v] for d in ok]) for v in self.views}
            probs = [iter(e.predict_batches(arrays)) for e in self.ensembles]
        for path, d in batch:
            result = {"image_id": path.stem, "image": results.relative_name(path, root)}
            if isinstance(d, str):
                result["error"] = d
                yield result
                continue
            fields = [results.result_fields(next(p)) for p in probs]
            result.update(fields[0])
            failed = next((f for f in fields if "error" in f), None)
            if failed:
                result = {k: v for k, v in result.items() if k not in results.SCORE_FIELDS}
                result["error"] = failed["error"]
            elif len(fields) > 1:
                result["scores"] = dict(zip(self.keys, fields))
            yield result


def _decode(path: Path, views: Sequence[View]) -> dict[View, np.ndarray] | str:
    try:
        return images.load_views(path, views)
    except images.ImageError as e:
        log.warning("%s", e)
        return str(e)
    except Exception as e:  # one bad file must never stop a long run
        log.warning("cannot decode image %s: %s", path, e)
        return f"cannot decode image {path}: {e}"


def decode_stream(paths: Iterable[Path], views: Sequence[View], workers: int,
                  ahead: int) -> Iterator[tuple[Path, dict[View, np.ndarray] | str]]:
    """(path, {view: uint8 image} or error) in input order, decoded by `workers` threads at
    most `ahead` images in advance: order is kept and memory is bounded by `ahead`."""
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: collections.deque = collections.deque()
        try:
            for path in paths:
                pending.append((path, pool.submit(_decode, path, views)))
                if len(pending) >= ahead:
                    p, fut = pending.popleft()
                    yield p, fut.result()
            while pending:
                p, fut = pending.popleft()
                yield p, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()


def shard_of(relative_path: str, num_shards: int) -> int:
    """Stable across machines, runs and Python versions (not hash(), which is salted)."""
    digest = hashlib.blake2b(os.fsencode(relative_path.replace(os.sep, "/")),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


# --- the run ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """What one `nima predict` does, checked before any model is loaded."""

    source: Path
    predictions_file: Path | None
    fmt: str
    batch_size: int
    num_shards: int
    shard_index: int
    resume: bool
    normalization: results.Normalization | None
    workers: int | None

    @property
    def root(self) -> Path:
        return self.source if self.source.is_dir() else self.source.parent

    def paths(self) -> Iterator[Path]:
        paths = images.iter_image_files(self.source)
        if self.num_shards == 1:
            return paths
        return (p for p in paths if shard_of(results.relative_name(p, self.root),
                                             self.num_shards) == self.shard_index)


def _check_run(image_source, predictions_file, fmt, batch_size, num_shards, shard_index,
               resume, normalize, norm_range, workers) -> Run:
    source = Path(image_source)
    if fmt is None:
        fmt = results.format_of(Path(predictions_file)) if predictions_file is not None else "json"
    if fmt not in results.FORMATS:
        raise NimaError(f"unknown format {fmt!r}; choose one of {', '.join(results.FORMATS)}")
    if num_shards < 1:
        raise NimaError(f"--num-shards must be at least 1, not {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise NimaError(f"--shard-index must be in 0..{num_shards - 1}, not {shard_index}")
    if batch_size < 1:
        raise NimaError("--batch-size must be at least 1")
    if workers is not None and workers < 1:
        raise NimaError("--workers must be at least 1")
    if normalize is not None and normalize not in results.NORMALIZE:
        raise NimaError(f"unknown normalisation {normalize!r}; choose "
                        f"{', '.join(results.NORMALIZE)}")
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
        predictions_file = Path(predictions_file)
        results.check_output(predictions_file, "--predictions-file")
    normalization = results.Normalization(normalize, *norm_range) if normalize else None
    return Run(source, predictions_file, fmt, batch_size, num_shards, shard_index, resume,
               normalization, workers)


def predict(
    image_source: str | Path,
    model: str | Path | None | Sequence[str | Path | None] = None,
    *,
    also: Sequence[str | Path] = (),
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

    model: one reference or several (an ensemble); also: models scored separately (each its
    own entry under "scores"). fmt None: from the suffix of predictions_file (.jsonl/.ndjson,
    .csv), else json. norm_range (default 1..10) only with normalize.
    """
    started = time.time()
    run = _check_run(image_source, predictions_file, fmt, batch_size, num_shards, shard_index,
                     resume, normalize, norm_range, workers)
    sources = list(model) if isinstance(model, (list, tuple)) else [model]
    ensembles = [Ensemble([Predictor.load(m, config_file, backend) for m in sources])]
    ensembles += [Ensemble([Predictor.load(m, None, backend)]) for m in also]
    scorer = Scorer(ensembles)
    if run.predictions_file is None and run.normalization is None:
        # Straight to stdout: nothing to resume or normalise, stream as we go.
        with results.ResultWriter(None, run.fmt, scorer.score_keys) as writer:
            for result in _progress(scorer.score_files(run.paths(), run.root, run.batch_size,
                                                       run.workers)):
                writer.write(result)
        count, failed = writer.count, writer.failed
    else:
        count, failed = _through_partial(run, scorer, started)
    _log_done(count, failed, started, run)
    return count, failed


def _through_partial(run: Run, scorer: Scorer, started: float) -> tuple[int, int]:
    """Score into the partial file (resuming it if asked), then publish the results file and
    its meta file. Without --predictions-file (stdout, normalised) the partial file is a
    temporary one."""
    tmpdir = None
    if run.predictions_file is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="nima-predict-")
        partial_file = Path(tmpdir.name) / "results.jsonl"
    else:
        partial_file = partial.path_for(run.predictions_file)
    try:
        partial_file.parent.mkdir(parents=True, exist_ok=True)
        out = open(partial_file, "a+b")  # not truncated yet: another run may own it
    except OSError as e:
        raise files.WriteError(f"cannot write {partial_file}: {e.strerror or e}") from None
    predictors = [p for e in scorer.ensembles for p in e.predictors]
    # Mixing the results of two different runs in one file would be silent corruption.
    record = {"image source": str(run.source.resolve()),
              "models": [str(p.ref.path.resolve()) for p in predictors],
              "shard": f"{run.shard_index} of {run.num_shards}"}
    try:
        with partial.closing_quietly(out):  # the lock lives as long as this file stays open
            partial.lock(out, partial_file)
            done, resumed = partial.start(out, partial_file, run.resume, record,
                                          keep_record=tmpdir is None)
            paths = (p for p in run.paths() if results.relative_name(p, run.root) not in done)
            try:
                scored = scorer.score_files(paths, run.root, run.batch_size, run.workers)
                new = partial.append(out, _progress(scored), run.batch_size)
                fitted, count, failed = partial.finish(partial_file, run.predictions_file, run.fmt,
                                                       run.normalization, scorer.score_keys)
            except OSError as e:
                why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
                kept = (f", results so far are in {partial_file} (rerun with --resume)"
                        if tmpdir is None else "")
                raise files.WriteError(f"cannot write {run.predictions_file or partial_file}: "
                                       f"{why}; the previous file is unchanged{kept}") from None
            if run.predictions_file is not None:
                files.write_json(results.meta_path(run.predictions_file), _meta(
                    run, scorer, fitted, count, failed, new, resumed, time.time() - started))
                partial_file.unlink()
                partial.run_path(partial_file).unlink(missing_ok=True)
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    return count, failed


def _meta(run: Run, scorer: Scorer, fitted: dict | None, count: int, failed: int, new: int,
          resumed: int, elapsed: float) -> dict:
    """FILE.meta.json: what made the predictions file, and how fast."""
    predictors = [p for e in scorer.ensembles for p in e.predictors]
    return {
        "predictions_file": str(run.predictions_file), "format": run.fmt,
        "image_source": str(run.source),
        "models": [p.info for p in predictors],
        "backend": [p.backend for p in predictors],
        "ensemble": "mean of distributions" if len(scorer.ensembles[0].predictors) > 1 else None,
        "scores": scorer.score_keys or None,
        "normalization": fitted,
        "shard": {"index": run.shard_index, "count": run.num_shards},
        "count": count, "failed": failed, "scored_this_run": new,
        "resumed_from_partial": resumed,
        "seconds": round(elapsed, 3),
        "images_per_second": round(new / elapsed, 2) if elapsed > 0 else None,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


PROGRESS_SECONDS = 60.0


def _progress(scored: Iterable[dict]) -> Iterator[dict]:
    """Pass results through, logging a count every PROGRESS_SECONDS: a job over millions of
    photos would otherwise say nothing for hours."""
    start = last = time.monotonic()
    n = failed = 0
    for r in scored:
        n += 1
        failed += "error" in r
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS:
            log.info("%d images scored so far (%d failed), %.1f img/s", n, failed,
                     n / (now - start))
            last = now
        yield r


def _log_done(count: int, failed: int, started: float, run: Run) -> None:
    if count == 0:  # a mistyped folder should not pass for a finished job
        log.warning("no image files (by extension) in %s%s", run.source,
                    " for this shard" if run.num_shards > 1 else "")
    elapsed = time.time() - started
    log.info("%d images, %d failed, %.1f s (%.1f img/s)%s", count, failed, elapsed,
             count / elapsed if elapsed > 0 else 0.0,
             f"; results in {run.predictions_file}" if run.predictions_file else "")
