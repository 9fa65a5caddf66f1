"""Fetch and prepare the pristine source photographs of the default model, reproducibly.

Every source is a real photograph (no drawings, renders or abstract wallpapers) that this
machine can install from a package registry: scikit-image's bundled data images, scikit-learn's
sample images and photographic wallpapers from Debian packages (downloaded with
`apt-get download`, unpacked with `dpkg-deb -x`, never installed). Each is written to OUT as
PNG, downscaled so its short side is at most 768 pixels (which also hides the JPEG artefacts
of the originals), together with OUT/sources.json: origin, author, licence and the SHA-256 of
the original file, so a changed package version is noticed, not silently trained on.

    python models/technical/sources.py OUT [--cache DIR]

Needs scikit-image (pip install scikit-image) and apt-get/dpkg-deb (Debian).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger("sources")

MAX_SHORT_SIDE = 768
BG = "/usr/share/backgrounds/"
L16 = "lomiri-wallpapers-16.04"

# (name, origin, path inside it, author, licence). Read each against the package's own
# copyright file (/usr/share/doc/<package>/copyright) or the library's data README.
SOURCES: list[tuple[str, str, str, str, str]] = [
    ("astronaut", "scikit-image", "astronaut", "NASA (photo of Eileen Collins)",
     "public domain"),
    ("coffee", "scikit-image", "coffee", "Rachel Michetti", "CC0"),
    ("chelsea", "scikit-image", "chelsea", "Stefan van der Walt", "CC0"),
    ("rocket", "scikit-image", "rocket", "SpaceX (DSCOVR launch)", "public domain"),
    ("camera", "scikit-image", "camera", "Lav Varshney", "CC0"),
    ("coins", "scikit-image", "coins", "Brooklyn Museum collection",
     "no known copyright restrictions"),
    ("china", "scikit-learn", "china.jpg", "Flickr user danielbuechele", "CC-BY-2.0"),
    ("flower", "scikit-learn", "flower.jpg", "Flickr user vultilion", "CC-BY-2.0"),
    ("bridge", L16, BG + "Bridge_by_Sander_Klootwijk.jpg", "Sander Klootwijk", "CC-BY-SA-4.0"),
    ("dragonfly", L16, BG + "Dragonfly_by_Bolly.jpg", "Bolly", "CC-BY-SA-4.0"),
    ("fig", L16, BG + "Picture_0B_by_freespace.jpg", "Trevor 'Freespace'", "CC-BY-4.0"),
    ("brushes", L16, BG + "Picture_1A_by_freespace.jpg", "Trevor 'Freespace'", "CC-BY-4.0"),
    ("wine", L16, BG + "Wine_by_Jakkub_Mede.jpg", "Jakub Mede", "CC-BY-4.0"),
    ("aitzgorri", L16, BG + "aitzgorri_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi",
     "CC-BY-4.0"),
    ("bird-lamps", L16, BG + "free_by_Peter_Nerlich.jpg", "Peter Nerlich", "CC-BY-SA-4.0"),
    ("dogs", L16, BG + "friends_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi", "CC-BY-4.0"),
    ("waterfall", L16, BG + "life_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi", "CC-BY-4.0"),
    ("picos", L16, BG + "picosdeeuropa_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi",
     "CC-BY-4.0"),
    ("dandelions", L16, BG + "seeding_by_Clements_Engelhardt.jpg", "Clemens Engelhardt",
     "CC0-1.0"),
    ("sunset", L16, BG + "sunset_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi", "CC-BY-4.0"),
    ("tree-bark", "lomiri-wallpapers-20.04", BG + "Kleiber_by_Lukas_Baubkus.jpg",
     "Lukas Baubkus", "CC-BY-SA-3.0"),
    ("water-drop", "mate-backgrounds", BG + "mate/nature/Aqua.jpg", "Charles Barbin",
     "GPL-2+"),
    ("leaf", "mate-backgrounds", BG + "mate/nature/Blinds.jpg",
     "Lennart Poettering, Andrea Cimitan", "GPL-2+"),
    ("dune", "mate-backgrounds", BG + "mate/nature/Dune.jpg", "Marco Cogoni, Hylke Bons",
     "GPL-2+"),
    ("orange-flower", "mate-backgrounds", BG + "mate/nature/FreshFlower.jpg", "Jens Ansorg",
     "GPL-2+"),
    ("marigold", "mate-backgrounds", BG + "mate/nature/Garden.jpg", "Charles Barbin",
     "GPL-2+"),
    ("meadow", "mate-backgrounds", BG + "mate/nature/GreenMeadow.jpg",
     "Timothy Schellhase, Lapo Calamandrei", "GPL-2+"),
    ("ladybird", "mate-backgrounds", BG + "mate/nature/LadyBird.jpg", "Charles Barbin",
     "GPL-2+"),
    ("raindrops", "mate-backgrounds", BG + "mate/nature/RainDrops.jpg",
     "'blackcombwhistler07'", "GPL-2+"),
    ("storm", "mate-backgrounds", BG + "mate/nature/Storm.jpg", "Sergey Nazarov", "GPL-2+"),
    ("seeds", "mate-backgrounds", BG + "mate/nature/TwoWings.jpg",
     "Charles Barbin, Hylke Bons", "GPL-2+"),
    ("wood", "mate-backgrounds", BG + "mate/nature/Wood.jpg", "Jean-Francois Fortin Tam",
     "GPL-2+"),
    ("yellow-flower", "mate-backgrounds", BG + "mate/nature/YellowFlower.jpg",
     "Charles Barbin", "GPL-2+"),
]


def fetch_debs(packages: set[str], cache: Path) -> Path:
    """apt-get download + dpkg-deb -x into cache/root (no install, no root needed to unpack)."""
    root = cache / "root"
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for pkg in sorted(packages):
        if not list(debs.glob(f"{pkg}_*.deb")):
            log.info("apt-get download %s", pkg)
            r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True,
                               text=True)
            if r.returncode != 0:
                sys.exit(f"apt-get download {pkg} failed (run `apt-get update` first?):\n"
                         f"{r.stderr.strip()}")
        for deb in debs.glob(f"{pkg}_*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def load(origin: str, where: str, deb_root: Path | None) -> tuple[Image.Image, bytes]:
    """The image and the bytes its checksum is taken over."""
    if origin == "scikit-image":
        import skimage.data

        arr = getattr(skimage.data, where)()
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        return Image.fromarray(arr[..., :3].astype(np.uint8)), arr.tobytes()
    if origin == "scikit-learn":
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(where)
        return Image.fromarray(arr), arr.tobytes()
    data = (deb_root / where.lstrip("/")).read_bytes()
    return Image.open(io.BytesIO(data)).convert("RGB"), data


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--cache", type=Path, default=Path("build/debs"))
    a = ap.parse_args(argv)
    debs = {o for _, o, *_ in SOURCES if o not in ("scikit-image", "scikit-learn")}
    deb_root = fetch_debs(debs, a.cache) if debs else None
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, origin, where, author, licence in SOURCES:
        img, raw = load(origin, where, deb_root)
        w, h = img.size
        scale = MAX_SHORT_SIDE / min(w, h)
        if scale < 1:
            img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
        img.save(a.out / f"{name}.png")
        rows.append({"name": name, "origin": origin, "file": where, "author": author,
                     "licence": licence, "original_size": [w, h],
                     "sha256": hashlib.sha256(raw).hexdigest()})
        log.info("%-14s %s %s (%dx%d)", name, origin, where, w, h)
    (a.out / "sources.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
