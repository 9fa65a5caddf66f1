"""Print models/technical/metadata.json from a finished training job and its dataset manifest.

`nima predict` copies these fields into its model info (Predictor.load reads metadata.json
beside the model).

    python models/technical/metadata.py JOB_DIR MANIFEST > models/technical/metadata.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    job, manifest = Path(argv[0]), json.loads(Path(argv[1]).read_text())
    config = json.loads((job / "config.json").read_text())
    summary = json.loads((job / "summary.json").read_text()) if (job / "summary.json").is_file() \
        else json.loads((job / "checkpoint" / "state.json").read_text())
    versions = json.loads((job / "job.json").read_text())["versions"]
    held_out = [s["name"] for s in manifest["sources"] if s["split"] == "test"]
    meta = {
        "name": "technical",
        "task": "technical",
        "description": "technical quality (blur, noise, compression, exposure), not aesthetics",
        "base_model": config["base_model_name"],
        "base_model_args": config["base_model_args"],
        "base_weights": "random init (no ImageNet weights)",
        "input_size": config["input_size"],
        "trained_on": (f"nima data distort: {len(manifest['sources']) - len(held_out)} real "
                       f"photos x {manifest['crops']} crops x (pristine + blur, noise, jpeg, "
                       "exposure at 5 levels); labels: mean 8.5 (pristine) falling by 1.3 "
                       "per level"),
        "held_out_photos": held_out,
        "score_scale": "1..10; about 8.4 for a clean photo, about 2.2 for the strongest "
                       "trained distortion",
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
