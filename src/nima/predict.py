"""Score images with a trained NIMA model and write the results.

One result per image, in the order the folder walk yields them:

    {"image_id": "<file stem>", "image": "<path relative to the source>",
     "predictions": [10 probabilities], "mean_score_prediction": m, "sd_score_prediction": s}

or, for a file that cannot be decoded, `{"image_id", "image", "error": "<why>"}`. Results are
streamed to the writer as batches finish, so memory stays flat however large the folder.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator

import keras
import numpy as np

from nima import files, images, pipeline, scores
from nima.config import Config
from nima.errors import ModelError, NimaError
from nima.model import build_model, load_model, model_input_size

log = logging.getLogger(__name__)

FORMATS = ("json", "jsonl", "csv")
DEFAULT_MODEL_NAME = "default"


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


@dataclass
class Predictor:
    """A loaded model plus what it needs to score files: input size and a description."""

    model: keras.Model
    info: dict = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        return model_input_size(self.model)

    @classmethod
    def load(cls, source: str | Path | None = None, config_file: str | Path | None = None
             ) -> "Predictor":
        """From a `.keras` file, a job/model directory, or weights + config; None = default."""
        path = resolve_model_file(source)
        info: dict = {"model": str(path)}
        meta = path.parent / "metadata.json"
        if meta.is_file():
            info.update(json.loads(meta.read_text()))
        if path.name.endswith(".keras"):
            model = load_model(path)
        else:
            cfg_path = Path(config_file) if config_file else path.parent / "config.json"
            if not cfg_path.is_file():
                raise ModelError(f"weights file {path} needs its training config: --config-file")
            config = Config.load(cfg_path).replace(base_weights=None)
            model = build_model(config)
            try:
                model.load_weights(path)
            except Exception as e:
                raise ModelError(f"cannot load weights {path}: {str(e).splitlines()[0]}") from None
        log.info("model %s (%s)", path, info.get("description", model.name))
        return cls(model, info)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(N, size, size, 3) RGB 0..255 -> (N, 10) probabilities."""
        out = self.model.predict_on_batch(np.asarray(batch, np.float32))
        return np.asarray(out, np.float64)

    def score_files(self, paths: Iterable[Path], root: Path | None = None,
                    batch_size: int = 32) -> Iterator[dict]:
        """Yield one result dict per path, in order; failures carry `error`."""
        ds = pipeline.predict_dataset(paths, input_size=self.input_size, batch_size=batch_size)
        for batch, errors, batch_paths in ds.as_numpy_iterator():
            ok = errors == b""
            probs = self.predict_arrays(batch[ok]) if ok.any() else np.empty((0, scores.N_BINS))
            it = iter(probs)
            for raw, err in zip(batch_paths, errors):
                path = Path(os.fsdecode(raw))
                result = {"image_id": path.stem, "image": _relative(path, root)}
                if err:
                    result["error"] = err.decode("utf-8", "replace")
                else:
                    result.update(result_fields(next(it)))
                yield result


def result_fields(dist: np.ndarray) -> dict:
    dist = np.asarray(dist, np.float64)
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


# --- writers: streamed, finalised atomically ------------------------------------------------

class ResultWriter:
    """Streams results to a file (atomic: appears complete or not at all) or to stdout."""

    def __init__(self, path: str | Path | None, fmt: str = "json"):
        if fmt not in FORMATS:
            raise NimaError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.path, self.fmt, self.count, self.failed = path, fmt, 0, 0
        self._ctx = files.atomic_open(path, "w", encoding="utf-8", newline="") if path else None
        self._out: IO[str] = self._ctx.__enter__() if self._ctx else sys.stdout
        self._csv = None
        if fmt == "json":
            self._out.write("[")
        elif fmt == "csv":
            self._csv = csv.writer(self._out, lineterminator="\n")
            self._csv.writerow(["image_id", "image", "mean_score_prediction",
                                "sd_score_prediction", *[f"p{i}" for i in range(1, 11)], "error"])

    def write(self, result: dict) -> None:
        self.failed += "error" in result
        if self.fmt == "csv":
            p = result.get("predictions", [""] * scores.N_BINS)
            self._csv.writerow([result["image_id"], result["image"],
                                result.get("mean_score_prediction", ""),
                                result.get("sd_score_prediction", ""), *p,
                                result.get("error", "")])
        else:
            line = json.dumps(result, ensure_ascii=False)
            if self.fmt == "json":
                line = ("\n" if self.count == 0 else ",\n") + line
            else:
                line += "\n"
            self._out.write(line)
        self.count += 1

    def close(self, ok: bool = True) -> None:
        if self.fmt == "json":
            self._out.write("\n]\n" if self.count else "]\n")
        self._out.flush()
        if self._ctx is not None:
            if ok:
                self._ctx.__exit__(None, None, None)
            else:  # an interrupted run leaves no partial file behind
                self._ctx.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


def predict(
    image_source: str | Path,
    model: str | Path | None = None,
    *,
    config_file: str | Path | None = None,
    predictions_file: str | Path | None = None,
    fmt: str = "json",
    batch_size: int = 32,
) -> tuple[int, int]:
    """Score a file or folder; returns (images scored, images failed)."""
    source = Path(image_source)
    if not source.exists():
        raise NimaError(f"image source not found: {source}")
    paths = images.iter_image_files(source)
    root = source if source.is_dir() else source.parent
    predictor = Predictor.load(model, config_file)
    with ResultWriter(predictions_file, fmt) as writer:
        for result in predictor.score_files(paths, root, batch_size):
            writer.write(result)
    log.info("%d images, %d failed%s", writer.count, writer.failed,
             f"; results in {predictions_file}" if predictions_file else "")
    return writer.count, writer.failed
