"""Measure predicted score distributions against labels: EMD, SRCC, PLCC, accuracy, MAE.

Correlations come from scipy.stats. `--baseline prior` gives every image the mean label
distribution (of a training label file, or of the evaluated file itself): the floor a model
has to beat (on the AVA test labels: EMD(r=2) 0.089, accuracy at threshold 5: 0.703).

The figures and report.html of `--report-dir` are `nima.evaluation_report`'s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from nima import files, labels, scores
from nima.errors import DataError

log = logging.getLogger(__name__)

THRESHOLD = 5.0


def metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """All metrics for (N, 10) true and predicted distributions."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if y_true.shape != y_pred.shape or y_true.ndim != 2 or len(y_true) == 0:
        raise DataError(f"cannot evaluate shapes {y_true.shape} and {y_pred.shape}")
    m_true, m_pred = scores.mean_score(y_true), scores.mean_score(y_pred)
    sd_true, sd_pred = scores.sd_score(y_true), scores.sd_score(y_pred)

    def corr(fn, a, b) -> float:
        # Constant predictions (e.g. the prior baseline) have no defined correlation.
        if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
            return float("nan")
        return float(fn(a, b)[0])

    return {
        "n": int(len(y_true)),
        "emd_r1": float(np.mean(scores.emd(y_true, y_pred, r=1))),
        "emd_r2": float(np.mean(scores.emd(y_true, y_pred, r=2))),
        "srcc_mean": corr(stats.spearmanr, m_true, m_pred),
        "plcc_mean": corr(stats.pearsonr, m_true, m_pred),
        "srcc_sd": corr(stats.spearmanr, sd_true, sd_pred),
        "accuracy_at_5": float(np.mean((m_true > THRESHOLD) == (m_pred > THRESHOLD))),
        "mae_mean": float(np.mean(np.abs(m_true - m_pred))),
    }


def format_table(result: dict[str, float]) -> str:
    names = {"n": "images", "emd_r1": "EMD (r=1)", "emd_r2": "EMD (r=2)",
             "srcc_mean": "SRCC mean", "plcc_mean": "PLCC mean", "srcc_sd": "SRCC sd",
             "accuracy_at_5": "accuracy @5", "mae_mean": "MAE mean"}
    lines = [f"{'metric':<14}{'value':>10}", "-" * 24]
    for key, name in names.items():
        v = result[key]
        if key == "n":
            lines.append(f"{name:<14}{v:>10d}")
        else:  # an undefined correlation (a constant prediction) is NaN, or None from JSON
            lines.append(f"{name:<14}{'n/a':>10}" if v is None or not np.isfinite(v)
                         else f"{name:<14}{v:>10.4f}")
    return "\n".join(lines)


@dataclass(frozen=True, eq=False)  # compared as a Mapping, by its metrics
class Evaluation(Mapping):
    """The outcome of `evaluate`: reads like its metrics dict (`evaluation["srcc_mean"]`,
    with "model", "n_skipped" and "samples_file") and keeps what the metrics were computed
    from, image by image, for a report."""

    result: dict[str, Any]
    ids: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray

    def __getitem__(self, key: str) -> Any:
        return self.result[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.result)

    def __len__(self) -> int:
        return len(self.result)


def prior_distribution(samples: list[labels.Sample]) -> np.ndarray:
    return np.mean(np.stack([s.label for s in samples]), axis=0)


def evaluate(
    samples_file: str | Path,
    *,
    image_dir: str | Path | None = None,
    model: str | Path | None = None,
    config_file: str | Path | None = None,
    baseline: str | None = None,
    prior_samples_file: str | Path | None = None,
    batch_size: int = 32,
    output_file: str | Path | None = None,
    predictions_file: str | Path | None = None,
) -> Evaluation:
    """Evaluate a model (or the prior baseline) on a label file."""
    if batch_size < 1:
        raise DataError("--batch-size must be at least 1")
    samples = labels.load_samples(samples_file)
    if baseline == "prior":
        prior_from = labels.load_samples(prior_samples_file) if prior_samples_file else samples
        prior = prior_distribution(prior_from)
        y_true = np.stack([s.label for s in samples])
        y_pred = np.broadcast_to(prior, y_true.shape)
        result = {"model": "baseline:prior", "n_skipped": 0, **metrics(y_true, y_pred)}
        ids = [s.image_id for s in samples]
    else:
        # TensorFlow is only imported for a real model; the baseline needs none.
        from nima import pipeline
        from nima.predict import Predictor

        if image_dir is None:
            raise DataError("--image-dir is required to evaluate a model")
        predictor = Predictor.load(model, config_file)
        found, missing = labels.find_images(samples, image_dir)
        if not found:
            raise DataError(f"none of the {len(samples)} images of {samples_file} is in "
                            f"{image_dir}")
        if missing:
            log.warning("%d of %d images missing, evaluated without them", len(missing),
                        len(samples))
        ds = pipeline.eval_dataset([p for _, p in found], np.stack([s.label for s, _ in found]),
                                   input_size=predictor.input_size,
                                   resize_method=predictor.ref.resize, batch_size=batch_size)
        trues, preds, ids, failed = [], [], [], []
        index = 0
        for batch, y, errors in ds.as_numpy_iterator():
            ok = errors == b""
            if ok.any():
                preds.append(predictor.predict_arrays(batch[ok]))
                trues.append(y[ok])
            for j in range(len(errors)):
                (ids if ok[j] else failed).append(found[index + j][0].image_id)
            index += len(errors)
        if not trues:
            raise DataError(f"no image of {samples_file} could be read from {image_dir}")
        y_true, y_pred = np.concatenate(trues), np.concatenate(preds)
        result = {"model": predictor.info.get("model"),
                  "n_skipped": len(missing) + len(failed), **metrics(y_true, y_pred)}
    result["samples_file"] = str(samples_file)
    if output_file:
        files.write_json(output_file, _json_safe(result))
    if predictions_file:
        rows = [{"image_id": i, "label": [float(v) for v in t],
                 "predictions": [float(v) for v in p]} for i, t, p in zip(ids, y_true, y_pred)]
        files.write_text(predictions_file, json.dumps(rows) + "\n")
    return Evaluation(result, ids, y_true, y_pred)


def _json_safe(d: Mapping) -> dict:
    """NaN is not JSON: write null for undefined correlations."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}
