"""Matplotlib figures for training and evaluation, written as PNG files.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot:
no global figure registry to leak memory across thousands of epochs, no GUI backend to pick,
safe to call from a Keras callback while a user's notebook has its own pyplot state.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from nima import files

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

TRUE_COLOR, PRED_COLOR = "#4c72b0", "#dd8452"
PHASE_TITLES = {"dense": "phase 1: head (base frozen)", "all": "phase 2: all layers"}


def _figure(width: float = 6.4, height: float = 4.2) -> Figure:
    # Imported here, not at the top: `nima train` imports this module, and a broken
    # matplotlib must cost a warning about history.png, not the training run.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG atomically (a viewer never sees half a file)."""
    path = Path(path)
    with files.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


# --- training --------------------------------------------------------------------------------

def history_figure(rows: Sequence[dict]) -> Figure:
    """Train and validation loss per epoch over both phases; the phase change is a dashed line.

    `rows` are history.json rows: {"epoch": 1-based global epoch, "phase", "loss", "val_loss"?}.
    """
    fig = _figure()
    ax = fig.add_subplot()
    epochs = np.array([r["epoch"] for r in rows])
    for key, label, color in (("loss", "train loss", TRUE_COLOR),
                              ("val_loss", "validation loss", PRED_COLOR)):
        values = np.array([r.get(key, np.nan) for r in rows], dtype=np.float64)
        if np.isfinite(values).any():
            ax.plot(epochs, values, "o-", ms=3, color=color, label=label)
    # Phases: a dashed line where the phase name changes, phase 2 shaded, names on top.
    spans: list[tuple[str, float, float]] = []
    for i, row in enumerate(rows):
        if i == 0 or row.get("phase") != rows[i - 1].get("phase"):
            spans.append((row.get("phase", ""), row["epoch"] - 0.5, row["epoch"] + 0.5))
        else:
            spans[-1] = (spans[-1][0], spans[-1][1], row["epoch"] + 0.5)
    for k, (name, lo, hi) in enumerate(spans):
        if k:
            ax.axvline(lo, color="gray", ls="--", lw=1)
        if name == "all":
            ax.axvspan(lo, hi, color="gray", alpha=0.08, lw=0)
        ax.text((lo + hi) / 2, 1.01, PHASE_TITLES.get(name, name),
                transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8, color="dimgray")
    monitor = "val_loss" if any("val_loss" in r for r in rows) else "loss"
    scored = [r for r in rows if np.isfinite(r.get(monitor, np.nan))]
    if scored:
        best = min(scored, key=lambda r: r[monitor])
        ax.plot([best["epoch"]], [best[monitor]], "*", ms=12, color="black",
                label=f"best {monitor} {best[monitor]:.4f} (epoch {best['epoch']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("EMD loss")
    ax.set_title("training history", pad=16)
    if len(epochs) and epochs.max() - epochs.min() < 15:
        ax.set_xticks(np.arange(epochs.min(), epochs.max() + 1))
    ax.grid(alpha=0.3)
    if len(epochs):
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
    ax.legend(fontsize=8, loc="best")
    return fig


def write_history_plot(path: str | Path, rows: Sequence[dict]) -> bool:
    """Refresh history.png from the history rows; never raises (training must go on).

    Returns whether the plot was written. A failure costs one warning in the log.
    """
    try:
        if rows:
            save(history_figure(rows), path)
            return True
    except Exception as e:  # noqa: BLE001 - a plot is never worth a failed training run
        log.warning("could not plot the training history to %s: %s", path, e)
    return False


# --- evaluation ------------------------------------------------------------------------------

def _fmt(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def scatter_figure(m_true: np.ndarray, m_pred: np.ndarray, srcc: float, plcc: float) -> Figure:
    """Predicted against true mean score, with the identity line."""
    fig = _figure(5.2, 5.0)
    ax = fig.add_subplot()
    n = len(m_true)
    if n > 5000:  # a point cloud of 25k dots is a blob; density reads better
        hb = ax.hexbin(m_true, m_pred, gridsize=50, mincnt=1, cmap="viridis", bins="log")
        fig.colorbar(hb, ax=ax, label="images")
    else:
        ax.scatter(m_true, m_pred, s=max(2, min(20, 4000 / max(n, 1))), alpha=0.6,
                   color=TRUE_COLOR, edgecolors="none")
    lo = float(min(np.min(m_true), np.min(m_pred), 1.0))
    hi = float(max(np.max(m_true), np.max(m_pred), 10.0))
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--", label="predicted = true")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("true mean score")
    ax.set_ylabel("predicted mean score")
    ax.set_title(f"predicted vs true mean (n={n})\nSRCC {_fmt(srcc)}   PLCC {_fmt(plcc)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def mean_histogram_figure(m_true: np.ndarray, m_pred: np.ndarray) -> Figure:
    """Distribution of predicted mean ratings vs ground truth (one histogram each, shared bins)."""
    fig = _figure()
    ax = fig.add_subplot()
    bins = np.linspace(1, 10, 37)
    ax.hist(m_true, bins=bins, alpha=0.6, color=TRUE_COLOR,
            label=f"ground truth (mean {np.mean(m_true):.2f}, sd {np.std(m_true):.2f})")
    ax.hist(m_pred, bins=bins, alpha=0.6, color=PRED_COLOR,
            label=f"predicted (mean {np.mean(m_pred):.2f}, sd {np.std(m_pred):.2f})")
    ax.set_xlabel("mean score")
    ax.set_ylabel("images")
    ax.set_title("distribution of predicted mean ratings vs ground truth")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def emd_histogram_figure(emd: np.ndarray, r: int = 2) -> Figure:
    """Per-image EMD between true and predicted distributions."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.hist(emd, bins=40, color=TRUE_COLOR, alpha=0.8)
    mean = float(np.mean(emd))
    ax.axvline(mean, color="black", ls="--", lw=1, label=f"mean {mean:.4f}")
    ax.axvline(float(np.median(emd)), color="gray", ls=":", lw=1,
               label=f"median {float(np.median(emd)):.4f}")
    ax.set_xlabel(f"EMD (r={r}) per image")
    ax.set_ylabel("images")
    ax.set_title("per-image EMD between true and predicted distributions")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def confusion_counts(m_true: np.ndarray, m_pred: np.ndarray, threshold: float) -> np.ndarray:
    """2x2 counts, rows = true (low, high), columns = predicted (low, high); high = > threshold."""
    t, p = np.asarray(m_true) > threshold, np.asarray(m_pred) > threshold
    return np.array([[np.sum(~t & ~p), np.sum(~t & p)], [np.sum(t & ~p), np.sum(t & p)]])


def confusion_figure(m_true: np.ndarray, m_pred: np.ndarray, threshold: float = 5.0) -> Figure:
    """Low/high quality confusion matrix at a mean-score threshold (NIMA's binary accuracy)."""
    counts = confusion_counts(m_true, m_pred, threshold)
    total = max(int(counts.sum()), 1)
    fig = _figure(4.6, 4.0)
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues", vmin=0)
    names = [f"low (≤ {threshold:g})", f"high (> {threshold:g})"]
    for i in range(2):
        for j in range(2):
            c = int(counts[i, j])
            ax.text(j, i, f"{c}\n{100 * c / total:.1f}%", ha="center", va="center",
                    color="white" if c > counts.max() / 2 else "black")
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = (counts[0, 0] + counts[1, 1]) / total
    ax.set_title(f"threshold {threshold:g}: accuracy {accuracy:.3f}")
    return fig


# --- galleries -------------------------------------------------------------------------------

def contact_sheet_figure(pictures: Sequence[np.ndarray | None], captions: Sequence[str], *,
                         title: str | None = None, columns: int = 5) -> Figure:
    """A grid of photos with a caption under each (None: a blank 'unavailable' cell)."""
    n = len(pictures)
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    fig = _figure(2.4 * cols, 2.75 * rows + (0.4 if title else 0))
    if title:
        fig.suptitle(title, fontsize=11)
    for i, (pic, caption) in enumerate(zip(pictures, captions)):
        ax = fig.add_subplot(rows, cols, i + 1)
        if pic is None:
            ax.text(0.5, 0.5, "image unavailable", ha="center", va="center", color="gray",
                    transform=ax.transAxes)
        else:
            ax.imshow(pic)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel(caption, fontsize=9)
    return fig
