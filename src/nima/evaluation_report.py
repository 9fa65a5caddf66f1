"""The report of `nima evaluate --report-dir DIR`: four PNG figures and a report.html that
shows them with the metrics table and the worst-predicted images.

The metrics are `nima.evaluate`'s; the command (`nima.cli`) calls both.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from nima import evaluate, files, labels, plots, scores
from nima.report import escape, thumbnail_jpeg

log = logging.getLogger(__name__)

EVAL_FIGURES = {"scatter.png": "predicted vs true mean score",
                "mean_histogram.png": "distribution of predicted mean ratings vs ground truth",
                "emd_histogram.png": "per-image EMD",
                "confusion.png": "confusion matrix at threshold 5"}


def write_evaluation_report(report_dir: str | Path, ids: Sequence[str], y_true: np.ndarray,
                            y_pred: np.ndarray, result: dict, worst: int = 20,
                            image_dir: str | Path | None = None) -> Path:
    """PNG figures and report.html (metrics, figures, worst-predicted images) in report_dir.

    With `image_dir`, the worst-predicted images are shown as small embedded thumbnails.
    """
    report_dir = Path(report_dir)
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    m_true, m_pred = scores.mean_score(y_true), scores.mean_score(y_pred)
    emd = scores.emd(y_true, y_pred, r=2)
    figures = {
        "scatter.png": plots.scatter_figure(m_true, m_pred, result.get("srcc_mean", math.nan),
                                            result.get("plcc_mean", math.nan)),
        "mean_histogram.png": plots.mean_histogram_figure(m_true, m_pred),
        "emd_histogram.png": plots.emd_histogram_figure(emd, r=2),
        "confusion.png": plots.confusion_figure(m_true, m_pred, evaluate.THRESHOLD),
    }
    for name, fig in figures.items():
        plots.save(fig, report_dir / name)
    e = escape
    table = evaluate.format_table(result)
    order = np.argsort(-np.abs(m_true - m_pred), kind="stable")[:worst]
    index = (labels.index_images(image_dir, labels.id_folders(map(str, ids)))
             if image_dir and Path(image_dir).is_dir() else {})

    def picture(image_id: str) -> str:
        path = labels.find_image(index, image_id)
        thumb = thumbnail_jpeg(path, 96) if path else "no image"
        if isinstance(thumb, str):
            return ""
        return f'<img src="data:image/jpeg;base64,{thumb[0]}" alt="{e(image_id)}">'

    rows = "".join(
        f"<tr><td>{picture(str(ids[i])) if index else ''}{e(str(ids[i]))}</td>"
        f"<td>{m_true[i]:.3f}</td><td>{m_pred[i]:.3f}</td>"
        f"<td>{m_pred[i] - m_true[i]:+.3f}</td><td>{emd[i]:.4f}</td></tr>\n" for i in order)
    figs = "".join(f'<figure><img src="{n}" alt="{e(alt)}"><figcaption>{e(alt)}</figcaption>'
                   f"</figure>\n" for n, alt in EVAL_FIGURES.items())
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>NIMA evaluation: {e(str(result.get('model')))}</title><style>"
        "body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222}"
        "pre{background:#f4f4f2;padding:8px 12px;display:inline-block}"
        ".figs{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0}"
        "figure img{max-width:640px;border:1px solid #ddd}"
        "table{border-collapse:collapse}td,th{padding:2px 10px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}tr:nth-child(even){background:#f4f4f2}"
        "td img{vertical-align:middle;margin-right:8px;max-height:96px}"
        "</style></head>\n<body>\n"
        f"<h1>NIMA evaluation</h1>\n<p>model <code>{e(str(result.get('model')))}</code> on "
        f"<code>{e(str(result.get('samples_file')))}</code>: {len(ids)} images evaluated, "
        f"{result.get('n_skipped', 0)} skipped.</p>\n"
        f'<pre id="metrics">{e(table)}</pre>\n<div class="figs">\n{figs}</div>\n'
        f"<h2>{len(order)} largest mean-score errors</h2>\n<table id=\"worst\"><tr><th>image_id"
        "</th><th>true mean</th><th>predicted</th><th>error</th><th>EMD r=2</th></tr>\n"
        f"{rows}</table>\n</body></html>\n")
    files.write_text(report_dir / "report.html", page)
    log.info("evaluation report in %s", report_dir / "report.html")
    return report_dir / "report.html"
