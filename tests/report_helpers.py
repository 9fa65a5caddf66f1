"""Helpers for the report tests: scored folders and an HTML parser that sees what a reader sees."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

from conftest import make_images

from nima import scores


class Page(HTMLParser):
    """Collects gallery items, failed entries, headings, image sources and every URL."""

    def __init__(self, text: str):
        super().__init__()
        self.items: list[dict] = []  # attributes of each <figure class="item">
        self.thumbs: list[str] = []  # src of each <img> inside an item
        self.failed: list[str] = []  # text of each <li class="failed">
        self.headings: list[str] = []
        self.urls: list[str] = []  # every src/href/action value
        self.tags: list[str] = []
        self._in, self._text = None, []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href", "action") and v]
        if tag == "figure" and "item" in a.get("class", "").split():
            self.items.append(a)
        if tag == "img" and self.items:
            self.thumbs.append(a.get("src", ""))
        if (tag == "li" and a.get("class") == "failed") or tag in ("h2",):
            self._in, self._text = tag, []

    def handle_data(self, data):
        if self._in:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == self._in:
            text = "".join(self._text).strip()
            (self.failed if tag == "li" else self.headings).append(text)
            self._in = None

    @property
    def means(self) -> list[float]:
        return [float(a["data-mean"]) for a in self.items]


def external_urls(html_text: str, page: Page) -> list[str]:
    """URLs that would need a network: anything but data: URIs, fragments and local files."""
    bad = [u for u in page.urls
           if (not u.startswith(("data:", "#")) and "://" in u) or u.startswith("//")]
    lowered = html_text.lower()
    bad += [m for m in ("http://", "https://", "url(", "@import") if m in lowered]
    return bad


def decode_data_uri(uri: str):
    from PIL import Image

    head, data = uri.split(",", 1)
    assert head == "data:image/jpeg;base64", head
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    img.load()
    return img


def scored_folder(root: Path, n: int = 12) -> tuple[Path, list[dict]]:
    """A folder of n generated images (+ one broken file) and results whose predicted
    distributions are the images' labels: known, distinct means, brighter = higher."""
    image_dir = root / "images"
    rows = make_images(image_dir, n, seed=7)
    (image_dir / "broken.jpg").write_bytes(b"this is not a jpeg")
    results = [{"image_id": "broken", "image": "broken.jpg",
                "error": "not a recognised image file: broken.jpg"}]
    for row in rows:
        dist = row["label"]
        results.append({"image_id": row["image_id"], "image": f"{row['image_id']}.jpg",
                        "predictions": [round(p, 6) for p in dist],
                        "mean_score_prediction": round(float(scores.mean_score(dist)), 6),
                        "sd_score_prediction": round(float(scores.sd_score(dist)), 6)})
    return image_dir, results


def write_json(path: Path, results: list[dict]) -> Path:
    """The layout `nima predict --format json` writes: one object per line inside [ ]."""
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in results) + "\n]\n")
    return path
