"""What is in a label file: size, votes per image, and the mean-score histogram.

Labels are normalised by `load_samples`, so vote totals come from the raw JSON: when every
label is a list of whole numbers it is treated as vote counts and their totals are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nima import files, scores
from nima.data.labelfile import read_label_json
from nima.labels import parse_samples

EDGES = np.arange(1.0, 10.01, 0.5)  # histogram bins of width 0.5 over the rating range


@dataclass
class Stats:
    path: str
    images: int
    counts: bool
    votes: dict[str, float] = field(default_factory=dict)
    mean: dict[str, float] = field(default_factory=dict)
    sd: dict[str, float] = field(default_factory=dict)
    above_5: float = 0.0
    histogram: list[int] = field(default_factory=list)
    means: np.ndarray | None = None


def _is_count(v: Any) -> bool:
    return float(v).is_integer()


def compute(labels_file: str | Path) -> Stats:
    data = read_label_json(labels_file)
    samples = parse_samples(data, source=str(labels_file))
    labels = np.stack([s.label for s in samples])  # read_label_json refuses an empty file
    means = scores.mean_score(labels)
    sds = scores.sd_score(labels)
    counts = all(_is_count(v) for row in data for v in row["label"])
    st = Stats(str(labels_file), len(samples), counts, means=means)
    if counts:
        totals = np.array([sum(row["label"]) for row in data], dtype=np.float64)
        st.votes = {"min": float(totals.min()), "median": float(np.median(totals)),
                    "max": float(totals.max()), "total": float(totals.sum())}
    st.mean = {"min": float(means.min()), "median": float(np.median(means)),
               "max": float(means.max()), "mean": float(means.mean()), "std": float(means.std())}
    st.sd = {"min": float(sds.min()), "median": float(np.median(sds)), "max": float(sds.max())}
    st.above_5 = float((means > 5).mean())
    st.histogram = np.histogram(means, bins=EDGES)[0].tolist()
    return st


def format_text(st: Stats, width: int = 50) -> str:
    lines = [f"{st.path}: {st.images} images, labels are "
             + ("vote counts" if st.counts else "distributions")]
    if st.votes:
        v = st.votes
        lines.append(f"votes per image: min {v['min']:g}, median {v['median']:g}, "
                     f"max {v['max']:g} ({v['total']:.0f} votes)")
    m, s = st.mean, st.sd
    lines.append(f"mean score: min {m['min']:.3f}, median {m['median']:.3f}, max {m['max']:.3f}, "
                 f"mean {m['mean']:.3f} +- {m['std']:.3f}")
    lines.append(f"score sd: min {s['min']:.3f}, median {s['median']:.3f}, max {s['max']:.3f}")
    lines.append(f"mean score > 5: {st.above_5:.1%}")
    lines.append("mean-score histogram:")
    top = max(st.histogram) or 1
    for lo, n in zip(EDGES[:-1], st.histogram):
        bar = "#" * round(width * n / top)
        lines.append(f"  {lo:4.1f}-{lo + 0.5:<4.1f} {n:7d} {bar}")
    return "\n".join(lines)


def write_png(st: Stats, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        ax.hist(st.means, bins=EDGES, color="#4c72b0", edgecolor="white")
        ax.set_xlabel("mean score")
        ax.set_ylabel("images")
        ax.set_xlim(1, 10)
        ax.set_title(f"{Path(st.path).name}: {st.images} images")
        fig.tight_layout()
        with files.atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
