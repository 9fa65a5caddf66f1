"""BRISQUE, a classical no-reference metric, on the same held-out distortions as the model.

BRISQUE (Mittal, Moorthy, Bovik 2012: natural-scene statistics + an SVR trained on LIVE) is
the peer a trained technical model must beat. This scores every image of a `nima data
distort` folder's label file with PyPI `brisque` 0.2.0 (its bundled LIVE model) and prints
the same measures as bench/default_model.py: mean Spearman(level, score) over (crop,
distortion) groups, per distortion type, and how often the pristine crop beats level 5.
BRISQUE is lower-is-better, so its score is negated first (quality = -BRISQUE); a perfect
metric then reaches Spearman -1 here, as a perfect model does in default_model.py.

brisque 0.2.0 does not run on numpy 2 and pulls OpenCV, so it lives in its own venv, never in
the toolkit's:

    python3 -m venv build/venv-brisque
    build/venv-brisque/bin/pip install "numpy<2" brisque==0.2.0 opencv-python-headless
    build/venv-brisque/bin/python bench/brisque_peer.py --data build/technical-model/heldout \
        [--output-file bench/brisque.json]

About 0.02 s per 192x192 image on a quiet core, 0.3 s beside a training job. Named
brisque_peer.py, not brisque.py, which would shadow the package.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from default_model import group_ids, ranking

log = logging.getLogger("brisque")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a `nima data distort` output folder")
    ap.add_argument("--labels", default="labels_test.json", help="label file inside --data")
    ap.add_argument("--output-file", type=Path)
    a = ap.parse_args(argv)

    from brisque import BRISQUE
    from PIL import Image

    ids = [row["image_id"] for row in json.loads((a.data / a.labels).read_text())]
    metric = BRISQUE(url=False)
    scores, failed, t0 = {}, [], time.perf_counter()
    for k, image_id in enumerate(ids, 1):
        path = a.data / "images" / f"{image_id}.png"
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
        value = float(metric.score(pixels))
        if np.isfinite(value):
            scores[image_id] = -value  # lower BRISQUE is better: negate to a quality score
        else:
            failed.append(image_id)
        if k % 500 == 0:
            log.info("%d/%d images, %.2f s/image", k, len(ids), (time.perf_counter() - t0) / k)
    if failed:
        log.warning("%d images without a finite BRISQUE score (left out): %s", len(failed),
                    ", ".join(failed[:5]))
    result = {"metric": "BRISQUE (PyPI brisque 0.2.0, LIVE model), score negated",
              "data": str(a.data), **ranking(scores, group_ids(list(scores)))}
    detail = result.pop("groups_detail")
    print(json.dumps(result, indent=1))
    if a.output_file:
        a.output_file.write_text(json.dumps({**result, "groups_detail": detail}, indent=1) + "\n")
    log.info("spearman %.3f, pristine > level 5 in %.1f%%", result["spearman_mean"],
             100 * result["pristine_beats_max"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
