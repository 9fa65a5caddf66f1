"""Fetch and prepare the pristine source photographs of the technical model, reproducibly.

Every source is a real photograph (no drawings, renders or abstract wallpapers) that this
machine can install from a package registry: scikit-image's bundled data images, scikit-learn's
and matplotlib's sample images, photographic wallpapers and example images from Debian
packages (downloaded with `apt-get download`, unpacked with `dpkg-deb -x`, never installed).
Each is written as PNG to OUT/train/ or, for the whole photos held out for measurement
(HELD_OUT), OUT/test/, downscaled so its short side is at most 768 pixels (which also hides
the JPEG artefacts of the originals), together with OUT/sources.json: split, origin, author,
licence and the SHA-256 of the original file, so a changed package version is noticed, not
silently trained on.

    python models/technical/sources.py OUT [--cache DIR]

Needs scikit-image, scikit-learn, matplotlib (pip) and apt-get/dpkg-deb (Debian).
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
WP = "/usr/share/wallpapers/"
# plasma-workspace-wallpapers: the package's copyright file says GPL-2+ for every file, each
# wallpaper's own metadata.json says LGPL-3 (LGPLv3); both are recorded.
PL, PLL = "plasma-workspace-wallpapers", "GPL-2+ (Debian copyright), LGPL-3 (metadata.json)"
# darknet's example images: Debian's copyright file covers all files with one statement.
DN, DNA, DNL = "/usr/share/darknet/data/", "darknet (Joseph Redmon)", "GPL-3.0+ or MIT or WTFPL"
# opencv-doc's sample data: Debian's copyright file, "Files: *" (no per-image entry).
CV, CVA, CVL = "opencv-doc", "OpenCV contributors", "Apache-2.0 AND BSD-3-Clause"
CVE = "/usr/share/doc/opencv-doc/examples/"
CVD = CVE + "data/"

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
    # Added for issue 15 (pretrained technical model): more scenes, sharper and softer ones.
    ("bythewater", PL, WP + "BytheWater/contents/images/2560x1600.jpg", "Maciej Wiklo", PLL),
    ("coldripple", PL, WP + "ColdRipple/contents/images/2560x1600.jpg", "Risto Saukonpää",
     PLL),
    ("colorfulcups", PL, WP + "ColorfulCups/contents/images/2560x1600.jpg", "Dmitri Popov",
     PLL),
    ("darkesthour", PL, WP + "DarkestHour/contents/images/2560x1600.jpg", "Risto Saukonpää",
     PLL),
    ("eveningglow", PL, WP + "EveningGlow/contents/images/2560x1600.jpg", "Ian Hex", PLL),
    ("fallenleaf", PL, WP + "FallenLeaf/contents/images/2560x1600.jpg", "Martin Klapetek", PLL),
    ("grey", PL, WP + "Grey/contents/images/2560x1600.jpg", "Sigi Sagi", PLL),
    ("kite", PL, WP + "Kite/contents/images/2560x1600.jpg", "Risto Saukonpää", PLL),
    ("onestandsout", PL, WP + "OneStandsOut/contents/images/2560x1600.jpg", "Risto Saukonpää",
     PLL),
    ("path", PL, WP + "Path/contents/images/2560x1600.jpg", "Risto Saukonpää", PLL),
    ("summer-1am", PL, WP + "summer_1am/contents/images/2560x1600.jpg", "Risto Saukonpää",
     PLL),
    ("dog-bike", "darknet", DN + "dog.jpg", DNA, DNL),
    ("eagle", "darknet", DN + "eagle.jpg", DNA, DNL),
    ("giraffe", "darknet", DN + "giraffe.jpg", DNA, DNL),
    ("horses", "darknet", DN + "horses.jpg", DNA, DNL),
    ("kite-beach", "darknet", DN + "kite.jpg", DNA, DNL),
    ("person-horse", "darknet", DN + "person.jpg", DNA, DNL),
    ("fruits", CV, CVD + "fruits.jpg", CVA, CVL),
    ("baboon", CV, CVD + "baboon.jpg", CVA, CVL),
    ("leuven", CV, CVD + "leuvenA.jpg", CVA, CVL),
    ("squirrel", CV, CVD + "squirrel_cls.jpg", CVA, CVL),
    ("house", CV, CVD + "home.jpg", CVA, CVL),
    ("aloe", CV, CVD + "aloeL.jpg", CVA, CVL),
    ("circuit-board", CV, CVD + "board.jpg", CVA, CVL),
    ("orange", CV, CVD + "orange.jpg", CVA, CVL),
    ("desk-stuff", CV, CVD + "stuff.jpg", CVA, CVL),
    ("ela-building", CV, CVD + "ela_original.jpg", CVA, CVL),
    ("aerial-1", CV, CVD + "aero1.jpg", CVA, CVL),
    ("aerial-3", CV, CVD + "aero3.jpg", CVA, CVL),
    ("apple", CV, CVD + "apple.jpg", CVA, CVL),
    ("swallowtail", CV, CVD + "butterfly.jpg", CVA, CVL),
    ("hotel", CV, CVD + "building.jpg", CVA, CVL),
    ("basketball", CV, CVD + "basketball1.png", CVA, CVL),
    ("toys", CV, CVD + "rubberwhale1.png", CVA, CVL),
    ("pekingese", CV, CVD + "chicky_512.png", CVA, CVL),
    ("smarties", CV, CVD + "smarties.png", CVA, CVL),
    ("graffiti", CV, CVD + "graf1.png", CVA, CVL),
    ("box-scene", CV, CVD + "box_in_scene.png", CVA, CVL),
    ("potted-plant", CV, CVE + "alphamat/input_images/plant.jpg", CVA, CVL),
    ("chessboard", CV, CVD + "left01.jpg", CVA, CVL),
    ("car", CV, CVE + "hfs/data/001.jpg", CVA, CVL),
    ("lake", CV, CVE + "hfs/data/002.jpg", CVA, CVL),
    ("brick", "scikit-image", "brick", "CC0Textures (Bricks25)", "CC0"),
    ("grass", "scikit-image", "grass", "DeviantArt user linolafett", "CC0"),
    ("gravel", "scikit-image", "gravel", "CC0Textures (Gravel04)", "CC0"),
    ("hubble", "scikit-image", "hubble_deep_field", "NASA (Hubble eXtreme Deep Field)",
     "public domain"),
    ("retina", "scikit-image", "retina", "Mikael Häggström", "CC0-1.0"),
    ("grace-hopper", "matplotlib", "grace_hopper.jpg", "U.S. Navy (photo of Grace Hopper)",
     "public domain"),
]

# Whole photos never trained on: the measurement set (bench/default_model.py, bench/brisque.py)
# and the sources of data/samples/. The first eight are the previous model's held-out photos
# (data/samples/ comes from seven of them); the other eight were drawn once at random
# (Python's random.Random(15).sample of 8) among the 48 photos added for issue 15.
HELD_OUT = {"bird-lamps", "brushes", "dandelions", "dogs", "rocket", "storm", "sunset", "wine",
            "aerial-1", "aerial-3", "aloe", "apple", "chessboard", "colorfulcups", "desk-stuff",
            "kite-beach"}


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
    if origin == "matplotlib":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data(where) as f:
            data = f.read()
        return Image.open(io.BytesIO(data)).convert("RGB"), data
    data = (deb_root / where.lstrip("/")).read_bytes()
    return Image.open(io.BytesIO(data)).convert("RGB"), data


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--cache", type=Path, default=Path("build/debs"))
    a = ap.parse_args(argv)
    debs = {o for _, o, *_ in SOURCES if o not in ("scikit-image", "scikit-learn", "matplotlib")}
    deb_root = fetch_debs(debs, a.cache) if debs else None
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, origin, where, author, licence in SOURCES:
        img, raw = load(origin, where, deb_root)
        w, h = img.size
        scale = MAX_SHORT_SIDE / min(w, h)
        if scale < 1:
            img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
        split = "test" if name in HELD_OUT else "train"
        (a.out / split).mkdir(exist_ok=True)
        img.save(a.out / split / f"{name}.png")
        rows.append({"name": name, "split": split, "origin": origin, "file": where,
                     "author": author, "licence": licence, "original_size": [w, h],
                     "sha256": hashlib.sha256(raw).hexdigest()})
        log.info("%-14s %-5s %s %s (%dx%d)", name, split, origin, where, w, h)
    (a.out / "sources.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
