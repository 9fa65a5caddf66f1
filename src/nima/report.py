"""`nima report`: a gallery of scored photos.

`nima report PREDICTIONS --image-source DIR -o gallery.html` reads what `nima predict` wrote
(JSON array, JSONL or CSV, streamed entry by entry) and writes ONE self-contained HTML page:
thumbnails embedded as base64 JPEG, one inline-SVG bar chart per image, a little inline
JavaScript for the score filter, no external URL, so it opens offline and can be mailed.
Images are sorted by mean score, best first; files that could not be scored are listed at
the end. `--top`/`--bottom` keep only the best/worst N (bounded heaps: memory stays flat
however large the predictions file), `--format png` draws a contact sheet instead.

`nima.evaluation_report` draws the other report, of `nima evaluate`, with this page's
thumbnails.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import itertools
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from nima import files, images, scores
from nima.errors import DataError, ImageError, NimaError
from nima.results import read_results, validate_distribution, validate_result

log = logging.getLogger(__name__)

THUMB_SIZE = 160
SHEET_MAX = 100  # a contact sheet larger than this is unreadable; choose with --top/--bottom
FAILED_LISTED = 1000  # failures beyond this are counted, not listed


# --- reading predictions files ---------------------------------------------------------------

def read_predictions(path: str | Path) -> Iterator[dict]:
    """Yield the result dicts of a `nima predict` output file (JSON array, JSONL or CSV), one
    at a time, checked, with mean and sd filled in from the distribution when absent."""
    for n, obj in enumerate(read_results(path, allow_empty=False), 1):
        yield _entry(obj, Path(path), n)


def _entry(obj: dict, path: Path, n: int) -> dict:
    """Check one result (`validate_result`, the rule merge applies too). Files of other tools
    may name an image by one key only, or carry no mean and sd: those are filled in."""
    where = f"{path}: entry {n}"
    if isinstance(obj.get("image_id"), str):
        obj.setdefault("image", obj["image_id"])
    if isinstance(obj.get("image"), str):
        obj.setdefault("image_id", Path(obj["image"]).stem)
    if "error" not in obj and not {"mean_score_prediction", "sd_score_prediction"} <= obj.keys():
        validate_distribution(obj, where)
        obj.setdefault("mean_score_prediction", float(scores.mean_score(obj["predictions"])))
        obj.setdefault("sd_score_prediction", float(scores.sd_score(obj["predictions"])))
    validate_result(obj, where)
    return obj


# --- choosing what to show -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Item:
    """One scored image, compact (float32 distribution) so large files stay small in memory."""

    mean: float
    sd: float
    dist: np.ndarray
    image: str
    image_id: str
    index: int  # position in the predictions file: ties keep file order
    rank: int = 0  # 1 = highest mean among all scored images

    @classmethod
    def of(cls, entry: dict, index: int) -> "Item":
        return cls(float(entry["mean_score_prediction"]), float(entry["sd_score_prediction"]),
                   np.asarray(entry["predictions"], np.float32), str(entry["image"]),
                   str(entry["image_id"]), index)


@dataclass
class Selection:
    sections: list[tuple[str, list[Item]]]  # (heading, items best first)
    failed: list[tuple[str, str]]  # (image, error), at most FAILED_LISTED
    n_scored: int
    n_failed: int

    @property
    def items(self) -> list[Item]:
        return [it for _, group in self.sections for it in group]


def select(entries: Iterable[dict], top: int | None = None, bottom: int | None = None
           ) -> Selection:
    """Sort by mean score (best first); with top/bottom keep only the best/worst N."""
    failed: list[tuple[str, str]] = []
    n_failed = n_scored = 0
    keep_all = not top and not bottom
    everything: list[Item] = []
    best: list[tuple[float, int, Item]] = []  # min-heap of the `top` largest (mean, -index)
    worst: list[tuple[float, int, Item]] = []  # min-heap of the `bottom` smallest, negated
    for index, entry in enumerate(entries):
        if "error" in entry:
            n_failed += 1
            if len(failed) < FAILED_LISTED:
                failed.append((str(entry["image"]), str(entry["error"])))
            continue
        n_scored += 1
        item = Item.of(entry, index)
        if keep_all:
            everything.append(item)
            continue
        if top:
            key = (item.mean, -index, item)
            (heapq.heappush if len(best) < top else heapq.heappushpop)(best, key)
        if bottom:
            key = (-item.mean, index, item)
            (heapq.heappush if len(worst) < bottom else heapq.heappushpop)(worst, key)

    def by_score(group: Iterable[Item]) -> list[Item]:
        return sorted(group, key=lambda it: (-it.mean, it.index))

    if keep_all:
        ranked = [_ranked(it, r) for r, it in enumerate(by_score(everything), 1)]
        sections = [(f"All {n_scored} images", ranked)] if ranked else []
    else:
        tops = by_score(k[2] for k in best)
        bottoms = by_score(k[2] for k in worst)
        if top and bottom and top + bottom >= n_scored:  # they overlap: one list of everything
            merged = by_score({it.index: it for it in tops + bottoms}.values())
            sections = [(f"All {n_scored} images", [_ranked(it, r) for r, it in
                                                    enumerate(merged, 1)])]
        else:
            sections = []
            if tops:
                sections.append((f"Top {len(tops)} of {n_scored}",
                                 [_ranked(it, r) for r, it in enumerate(tops, 1)]))
            if bottoms:
                first = n_scored - len(bottoms) + 1
                sections.append((f"Bottom {len(bottoms)} of {n_scored}",
                                 [_ranked(it, r) for r, it in enumerate(bottoms, first)]))
    return Selection(sections, failed, n_scored, n_failed)


def _ranked(item: Item, rank: int) -> Item:
    return Item(item.mean, item.sd, item.dist, item.image, item.image_id, item.index, rank)


# --- thumbnails ------------------------------------------------------------------------------

def resolve_image(image: str, image_source: Path) -> Path:
    """The file a result's `image` names: relative to the folder `nima predict` scored."""
    path = Path(image)
    if path.is_absolute():
        return path
    root = image_source if image_source.is_dir() else image_source.parent
    return root / path


def thumbnail(path: Path, size: int = THUMB_SIZE) -> Image.Image:
    """A small RGB copy (longest side `size`), decoded cheaply; raises ImageError.

    Through the toolkit's one decoder with a JPEG draft at `size`: the smallest DCT scale
    above it (a 12 MP JPEG: 66 ms against 1.2 s for a full decode, on a busy 2-core machine).
    """
    img = images.decode(path, draft=size)
    img.thumbnail((size, size), Image.LANCZOS)
    return img


def thumbnail_jpeg(path: Path, size: int) -> tuple[str, int, int] | str:
    """(base64 JPEG, width, height), or the reason it could not be made."""
    try:
        img = thumbnail(path, size)
    except ImageError as e:
        return str(e)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80, optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii"), img.width, img.height


def _thumbs(items: Sequence[Item], image_source: Path, size: int, chunk: int = 64
            ) -> Iterator[tuple[Item, tuple[str, int, int] | str]]:
    """Thumbnails in item order, made by a few threads (Pillow decodes without the GIL),
    a chunk at a time so that memory holds one chunk of thumbnails, not all of them."""
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        it = iter(items)
        while batch := list(itertools.islice(it, chunk)):
            paths = [resolve_image(x.image, image_source) for x in batch]
            yield from zip(batch, pool.map(lambda p: thumbnail_jpeg(p, size), paths))


# --- the HTML gallery ------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; --bar: #6d8fbf; --mean: #c0392b; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f4f2; color: #222; }
header { position: sticky; top: 0; z-index: 1; background: #fff; padding: 10px 16px;
         border-bottom: 1px solid #ddd; display: flex; flex-wrap: wrap; gap: 6px 24px;
         align-items: baseline; }
header h1 { font-size: 18px; margin: 0; }
header .meta { color: #666; }
#filter input { width: 4.5em; }
main { padding: 8px 16px 24px; }
h2 { font-size: 16px; margin: 18px 0 8px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(176px, 1fr)); gap: 10px; }
.item { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px;
        display: flex; flex-direction: column; align-items: center; }
.thumb { width: 160px; height: 160px; display: flex; align-items: center;
         justify-content: center; background: #eee; }
.thumb img { width: 100%; height: 100%; object-fit: contain; }
.thumb.missing { color: #999; font-size: 12px; text-align: center; padding: 8px; }
svg.dist { width: 160px; height: 44px; margin-top: 6px; }
svg.dist rect { fill: var(--bar); }
svg.dist line { stroke: var(--mean); stroke-width: 1.2; }
svg.dist text { font-size: 8px; fill: #888; text-anchor: middle; }
figcaption { width: 160px; font-size: 12px; }
figcaption .score { font-size: 16px; font-weight: 600; }
figcaption .rank { float: right; color: #999; }
figcaption .name { display: block; color: #555; overflow: hidden; text-overflow: ellipsis;
                   white-space: nowrap; }
#failed li { margin: 2px 0; }
#failed code { background: #fff; padding: 0 4px; }
[hidden] { display: none !important; }
"""

# Filter by mean score. The bounds can come from the URL (gallery.html#min=6&max=10), so a
# filtered view can be shared. data-shown / data-ready on <body> let tests see the JS ran.
_JS = """
(function () {
  var items = Array.prototype.slice.call(document.querySelectorAll(".item"));
  var lo = document.getElementById("min"), hi = document.getElementById("max");
  var out = document.getElementById("shown");
  function apply() {
    var a = parseFloat(lo.value), b = parseFloat(hi.value), n = 0;
    items.forEach(function (el) {
      var m = parseFloat(el.getAttribute("data-mean"));
      var ok = !(m < a) && !(m > b);
      el.hidden = !ok;
      if (ok) n += 1;
    });
    document.querySelectorAll("section.group").forEach(function (s) {
      s.hidden = !s.querySelector(".item:not([hidden])");
    });
    out.textContent = n + " of " + items.length + " shown";
    document.body.setAttribute("data-shown", String(n));
  }
  var h = new URLSearchParams(location.hash.slice(1));
  if (h.has("min")) lo.value = h.get("min");
  if (h.has("max")) hi.value = h.get("max");
  lo.addEventListener("input", apply);
  hi.addEventListener("input", apply);
  apply();
  document.body.setAttribute("data-ready", "true");
})();
"""


def distribution_svg(dist: np.ndarray, mean: float) -> str:
    """Ten bars (ratings 1..10) and a red line at the mean.

    Heights share one scale (a full bar is p = 0.4, the peak of a typical AVA histogram) so
    that a flat, uncertain distribution looks flat next to a peaked one; a taller peak fills
    the box instead of overflowing it.
    """
    dist = np.asarray(dist, np.float64)
    top = max(float(dist.max()), 0.4)
    bars, ticks = [], []
    for i, p in enumerate(dist):
        h = 30.0 * p / top
        bars.append(f'<rect x="{i * 16 + 1}" y="{32 - h:.2f}" width="14" height="{h:.2f}">'
                    f"<title>{i + 1}: {p:.3f}</title></rect>")
        ticks.append(f'<text x="{i * 16 + 8}" y="42">{i + 1}</text>')
    x = (mean - 1) * 16 + 8
    tip = " ".join(f"{p:.2f}" for p in dist)
    return (f'<svg class="dist" viewBox="0 0 160 44" role="img" '
            f'aria-label="score distribution 1..10: {tip}">{"".join(bars)}'
            f'<line x1="{x:.2f}" y1="0" x2="{x:.2f}" y2="33"/>{"".join(ticks)}</svg>')


def _item_html(item: Item, thumb: tuple[str, int, int] | str) -> str:
    e = escape
    if isinstance(thumb, tuple):
        data, w, h = thumb
        picture = (f'<div class="thumb"><img src="data:image/jpeg;base64,{data}" width="{w}" '
                   f'height="{h}" alt="{e(item.image)}" decoding="async"></div>')
    else:
        picture = f'<div class="thumb missing" title="{e(thumb)}">image unavailable</div>'
    return (f'<figure class="item" data-mean="{item.mean:.4f}" data-sd="{item.sd:.4f}" '
            # The line marks the distribution's own mean: after `--normalize` item.mean
            # is on another scale (0..100, say) than the ten bars.
            f'data-rank="{item.rank}">{picture}'
            f'{distribution_svg(item.dist, float(scores.mean_score(item.dist)))}'
            f'<figcaption><span class="score">{item.mean:.2f}</span> ± {item.sd:.2f}'
            f'<span class="rank">#{item.rank}</span>'
            f'<span class="name" title="{e(item.image)}">{e(item.image)}</span>'
            f"</figcaption></figure>\n")


def write_gallery(selection: Selection, image_source: Path, output: str | Path, *,
                  title: str = "NIMA scores", thumb_size: int = THUMB_SIZE) -> int:
    """Write the HTML page (streamed, atomic); returns the number of images unavailable."""
    e = escape
    means = [it.mean for it in selection.items]
    shown = len(means)
    span = f"mean scores {min(means):.2f} – {max(means):.2f}" if means else "no scored images"
    # The filter starts open over every mean: 1..10, or wider for normalised scores (a
    # 1..10 filter would hide every card of a `--normalize minmax --range 0 100` run).
    lo = min(1, math.floor(min(means))) if means else 1
    hi = max(10, math.ceil(max(means))) if means else 10
    unavailable = 0
    with files.atomic_open(output, "w", encoding="utf-8") as f:
        f.write(f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
                f"<header><h1>{e(title)}</h1><span class=\"meta\">{selection.n_scored} scored"
                f", {selection.n_failed} failed; {span}</span>"
                f'<form id="filter" onsubmit="return false">mean from '
                f'<input id="min" type="number" min="{lo}" max="{hi}" step="0.1" value="{lo}">'
                f' to <input id="max" type="number" min="{lo}" max="{hi}" step="0.1" '
                f'value="{hi}"> '
                f'<output id="shown">{shown} of {shown} shown</output></form></header>\n'
                "<main>\n")
        for heading, group in selection.sections:
            f.write(f'<section class="group"><h2>{e(heading)}</h2><div class="grid">\n')
            for item, thumb in _thumbs(group, image_source, thumb_size):
                if not isinstance(thumb, tuple):
                    unavailable += 1
                    log.debug("no thumbnail for %s: %s", item.image, thumb)
                f.write(_item_html(item, thumb))
            f.write("</div></section>\n")
        if selection.n_failed:
            f.write(f'<section id="failed"><h2>Failed files ({selection.n_failed})</h2><ul>\n')
            for image, error in selection.failed:
                f.write(f'<li class="failed"><code>{e(image)}</code> {e(error)}</li>\n')
            if selection.n_failed > len(selection.failed):
                f.write(f"<li>… and {selection.n_failed - len(selection.failed)} more</li>\n")
            f.write("</ul></section>\n")
        f.write(f"</main>\n<script>{_JS}</script>\n</body></html>\n")
    if unavailable:
        log.warning("%d of %d images could not be read from %s (shown as placeholders)",
                    unavailable, shown, image_source)
    return unavailable


def write_contact_sheet(selection: Selection, image_source: Path, output: str | Path, *,
                        title: str | None = None, columns: int = 5) -> None:
    """A PNG grid of photos captioned with mean ± sd, best first (like idealo's README)."""
    from nima import plots

    items = selection.items
    if not items:
        raise DataError("no scored images to draw")
    if len(items) > SHEET_MAX:
        raise NimaError(f"a contact sheet holds at most {SHEET_MAX} images, not {len(items)}; "
                        "choose some with --top/--bottom (or --limit)")
    pictures = []
    for item in items:
        try:
            pictures.append(np.asarray(thumbnail(resolve_image(item.image, image_source), 320)))
        except ImageError as e:
            log.warning("%s", e)
            pictures.append(None)
    captions = [f"{it.mean:.2f} ± {it.sd:.2f}\n{_short(it.image)}" for it in items]
    plots.save(plots.contact_sheet_figure(pictures, captions, title=title, columns=columns),
               output)


def _printable(name: str) -> str:
    """A file name that is not valid UTF-8 holds surrogates (\\udcXX) here, which no UTF-8
    page or plot can encode: show those bytes as U+FFFD instead."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def escape(text: str) -> str:
    return html.escape(_printable(text))


def _short(name: str, n: int = 28) -> str:
    name = _printable(name)
    return name if len(name) <= n else "…" + name[-(n - 1):]


def gallery(predictions_file: str | Path, image_source: str | Path, output: str | Path, *,
            fmt: str | None = None, top: int | None = None, bottom: int | None = None,
            limit: int | None = None, title: str | None = None,
            thumb_size: int = THUMB_SIZE) -> Selection:
    """`nima report`: read predictions, pick and sort, write the HTML page or PNG sheet."""
    image_source = Path(image_source)
    if not image_source.exists():
        raise DataError(f"image source not found: {image_source}")
    for name, v in (("--top", top), ("--bottom", bottom), ("--limit", limit)):
        if v is not None and v < 1:
            raise NimaError(f"{name} must be at least 1, not {v}")
    if not 16 <= thumb_size <= 1024:
        raise NimaError(f"--thumb-size must be between 16 and 1024, not {thumb_size}")
    fmt = fmt or ("png" if str(output).lower().endswith(".png") else "html")
    entries = read_predictions(predictions_file)
    if limit:
        entries = itertools.islice(entries, limit)
    selection = select(entries, top, bottom)
    if selection.n_scored + selection.n_failed == 0:
        raise DataError(f"no predictions in {predictions_file}")
    title = title or f"NIMA scores: {Path(predictions_file).name}"
    if fmt == "png":
        write_contact_sheet(selection, image_source, output, title=title)
    else:
        if len(selection.items) > 10_000:
            log.warning("%d images make a heavy page; --top/--bottom/--limit pick fewer",
                        len(selection.items))
        write_gallery(selection, image_source, output, title=title, thumb_size=thumb_size)
    log.info("%s: %d images shown (%d scored, %d failed)", output, len(selection.items),
             selection.n_scored, selection.n_failed)
    return selection
