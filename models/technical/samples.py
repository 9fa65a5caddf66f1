"""Write the README sample photos (data/samples/) from held-out source photos.

Only photos of the test split (never seen in training) are used: three pristine, four with one
visible defect each, so the scores the technical model gives them differ. Each is a 3:2 (or 2:3)
centre crop, 288 pixels on its long side (near the model's 192-pixel input, so the defects
reach it at about the scale it was trained on), saved as JPEG quality 95; the defects are
level 4 of `nima data distort` (the 'jpeg' sample is saved at quality 7).

    python models/technical/samples.py SOURCES_DIR OUT_DIR     (SOURCES_DIR: sources.py's output)
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

# (output name, source photo, defect)
SAMPLES = [
    ("dogs.jpg", "dogs", None),
    ("rocket.jpg", "rocket", None),
    ("bird-lamps.jpg", "bird-lamps", None),
    ("sunset_blurred.jpg", "sunset", "blur"),
    ("brushes_noisy.jpg", "brushes", "noise"),
    ("wine_compressed.jpg", "wine", "jpeg"),
    ("dandelions_dark.jpg", "dandelions", "exposure"),
]


def centre_crop(img: Image.Image, long_side: int = 288) -> Image.Image:
    w, h = img.size
    tw, th = (3, 2) if w >= h else (2, 3)
    cw = min(w, h * tw // th)
    ch = cw * th // tw
    x, y = (w - cw) // 2, (h - ch) // 2
    size = (long_side, long_side * th // tw) if w >= h else (long_side * tw // th, long_side)
    return img.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.LANCZOS)


def degrade(img: Image.Image, defect: str | None) -> tuple[Image.Image, int]:
    if defect == "blur":
        return img.filter(ImageFilter.GaussianBlur(2.8)), 95
    if defect == "noise":
        a = np.asarray(img, np.float32) + np.random.default_rng(0).normal(0, 27, (img.height,
                                                                              img.width, 3))
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)), 95
    if defect == "jpeg":
        return img, 7
    if defect == "exposure":
        a = np.asarray(img, np.float32) / 255.0
        a = 0.5 + (a - 0.5) * 0.28 - 0.24
        return Image.fromarray(np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)), 95
    return img, 95


def main(argv: list[str]) -> int:
    sources, out = Path(argv[0]), Path(argv[1])
    index = sources / "sources.json"
    held_out = {s["name"] for s in json.loads(index.read_text()) if s["split"] == "test"}
    out.mkdir(parents=True, exist_ok=True)
    for name, source, defect in SAMPLES:
        if source not in held_out:
            sys.exit(f"{source} is not a held-out photo in {index}")
        photo = Image.open(sources / "test" / f"{source}.png").convert("RGB")
        img, quality = degrade(centre_crop(photo), defect)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        (out / name).write_bytes(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
