"""The shipped `aesthetic` model (idealo's AVA MobileNet, converted) scores photos exactly as
idealo's own code does, and model names, several-model runs and the recorded resize work
everywhere a model sees pixels.

Two independent references for the real sample photos:
  - built here: idealo's exact Keras 2 preprocessing (Pillow NEAREST of the full decode to
    224, then x/127.5 - 1) fed to the converted network without this toolkit's decoder;
  - bench/results/aesthetic_keras2_samples.json: Keras 2 (tf_keras) running the network
    Keras 2.1.6 built from idealo's .hdf5, with `load_img` (bench/aesthetic_parity.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nima import cli, images, resolve
from nima.errors import ModelError

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
KERAS2 = REPO / "bench" / "results" / "aesthetic_keras2_samples.json"


def idealo_pixels(path: Path) -> np.ndarray:
    """keras.preprocessing.image.load_img(path, target_size=(224, 224)) + img_to_array."""
    with Image.open(path) as img:
        img = img.convert("RGB") if img.mode != "RGB" else img
        return np.asarray(img.resize((224, 224), Image.NEAREST), np.float32)


@pytest.fixture(scope="module")
def network():
    """The converted model with its preprocessing layer bypassed: x/127.5 - 1 is applied by
    the test, as idealo's code applied mobilenet.preprocess_input."""
    import keras

    from nima.model import load_model

    model = load_model(REPO / "models" / "aesthetic" / "model.keras")
    assert model.layers[1].name == "preprocess"
    return keras.Model(model.layers[1].output, model.output)


def predict_json(tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}.json"
    assert cli.main(["predict", "--image-source", str(SAMPLES), "--predictions-file", str(out),
                     *args]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("backend", ["keras", "tflite"])
def test_predict_aesthetic_reproduces_idealo(network, tmp_path, backend):
    results = predict_json(tmp_path, "--model", "aesthetic", "--backend", backend)
    assert len(results) == 7
    keras2 = {r["image"]: r for r in json.loads(KERAS2.read_text())["images"]}
    for r in results:
        x = idealo_pixels(SAMPLES / r["image"]) / 127.5 - 1.0
        expected = np.asarray(network.predict(x[None], verbose=0)[0], np.float64)
        np.testing.assert_allclose(r["predictions"], expected, atol=1e-3)
        np.testing.assert_allclose(r["predictions"], keras2[r["image"]]["probabilities"],
                                   atol=1e-3)
        assert abs(r["mean_score_prediction"] - keras2[r["image"]]["mean"]) <= 0.01


def test_aesthetic_is_the_default_and_records_nearest(tmp_path):
    ref = resolve.resolve(None)
    assert (ref.name, ref.resize, ref.kind) == ("aesthetic", "nearest", "keras")
    assert ref.info["task"] == "aesthetic" and ref.info["license"] == "Apache-2.0"
    assert (REPO / "models" / "aesthetic" / "LICENSE").is_file()
    assert "idealo" in (REPO / "models" / "aesthetic" / "NOTICE").read_text()
    assert resolve.resolve("technical").resize == "bilinear"
    assert resolve.names() == ["aesthetic", "technical"]


def test_bilinear_pixels_would_change_the_scores(network):
    """Why the resize is recorded: the same network on this toolkit's bilinear pixels scores
    the samples differently (a reorder of photos, not noise)."""
    ratings = np.arange(1, 11)
    nearest, bilinear = [], []
    for path in sorted(SAMPLES.glob("*.jpg")):
        for out, pixels in ((nearest, idealo_pixels(path)),
                            (bilinear, images.load_image(path, 224, "bilinear"))):
            out.append(network.predict((pixels / 127.5 - 1.0)[None], verbose=0)[0] @ ratings)
    assert np.max(np.abs(np.subtract(nearest, bilinear))) > 0.3


def test_also_scores_a_second_model_from_one_decode(tmp_path, monkeypatch):
    calls = []
    decode = images.decode
    monkeypatch.setattr(images, "decode", lambda *a, **k: calls.append(a[0]) or decode(*a, **k))
    both = predict_json(tmp_path, "--also", "technical", "--backend", "keras")
    assert len(calls) == 7 and len(set(calls)) == 7  # each file decoded once for both models
    aesthetic = predict_json(tmp_path, "--model", "aesthetic", "--backend", "keras")
    technical = predict_json(tmp_path, "--model", "technical", "--backend", "keras")
    for b, a, t in zip(both, aesthetic, technical):
        assert b["image"] == a["image"] == t["image"]
        # Single-model readers see the first model's record unchanged.
        assert {k: b[k] for k in a} == a
        assert b["scores"]["aesthetic"]["predictions"] == a["predictions"]
        # The samples are small enough that no JPEG draft applies: the technical view from
        # the shared full decode equals the technical model's own decode exactly.
        assert b["scores"]["technical"]["predictions"] == t["predictions"]
        assert b["scores"]["technical"]["mean_score_prediction"] == t["mean_score_prediction"]
    meta = json.loads((tmp_path / "out0.json.meta.json").read_text())
    assert meta["scores"] == ["aesthetic", "technical"]


def test_several_scores_survive_csv_and_merge(tmp_path):
    from nima.results import merge, read_results

    csv_file = tmp_path / "both.csv"
    assert cli.main(["predict", "--image-source", str(SAMPLES), "--also", "technical",
                     "--predictions-file", str(csv_file), "--backend", "keras"]) == 0
    header = csv_file.read_text().splitlines()[0].split(",")
    assert "technical:mean_score_prediction" in header and "aesthetic:p10" in header
    rows = list(read_results(csv_file))
    assert rows[0]["scores"]["technical"]["mean_score_prediction"] > 0
    merged = tmp_path / "merged.jsonl"
    assert merge(merged, [csv_file]) == (7, 0)
    assert [r["scores"] for r in read_results(merged)] == [r["scores"] for r in rows]


def test_api_names_and_nearest(tmp_path):
    import nima

    model = nima.load("aesthetic", backend="keras")
    assert model.predictor.view == (224, "nearest")
    path = SAMPLES / "dogs.jpg"
    [api] = model.predict(images=path)
    [cli_result] = [r for r in predict_json(tmp_path, "--backend", "keras")
                    if r["image"] == "dogs.jpg"]
    assert api["predictions"] == cli_result["predictions"]
    # A PIL image of the same file: resized by NEAREST from all its pixels, as the file is.
    with Image.open(path) as img:
        [pil] = model.predict(images=img.convert("RGB"))
    np.testing.assert_allclose(pil["predictions"], api["predictions"], atol=1e-6)


def test_evaluate_and_calibrate_see_the_models_pixels(tmp_path):
    """evaluate's input pipeline resizes with the model's own method: its predictions equal
    predict's on the same files."""
    from nima.evaluate import evaluate

    results = predict_json(tmp_path, "--backend", "keras")
    samples = tmp_path / "labels.json"
    samples.write_text(json.dumps([{"image_id": Path(r["image"]).stem, "label": [1] * 10}
                                   for r in results]))
    rows = tmp_path / "rows.json"
    evaluate(samples, image_dir=SAMPLES, model="aesthetic", predictions_file=rows)
    got = {r["image_id"]: r["predictions"] for r in json.loads(rows.read_text())}
    for r in results:
        np.testing.assert_allclose(got[r["image_id"]], r["predictions"], atol=1e-5)


def test_savedmodel_bytes_signature_resizes_nearest(tmp_path):
    """TF Serving clients send JPEG bytes: the SavedModel decodes and resizes them in the
    graph the way the model was trained (NEAREST here), giving predict's scores."""
    import tensorflow as tf

    from nima.export import export
    from nima.model import load_model

    out = export(load_model(REPO / "models" / "aesthetic" / "model.keras"), "savedmodel",
                 tmp_path / "sm")
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    paths = sorted(SAMPLES.glob("*.jpg"))[:3]
    got = serve(image_bytes=tf.constant([p.read_bytes() for p in paths]))["predictions"].numpy()
    want = {r["image"]: r["predictions"] for r in predict_json(tmp_path, "--backend", "keras")}
    for p, g in zip(paths, got):
        np.testing.assert_allclose(g, want[p.name], atol=1e-5)


def test_unknown_names_and_wrong_files_are_one_line(tmp_path, capsys, monkeypatch):
    assert cli.main(["predict", "--image-source", str(SAMPLES), "--model", "aesthetics"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("nima predict: error: unknown model 'aesthetics': not a file or folder, "
                       "and not a shipped model (aesthetic, technical)")
    photo = SAMPLES / "dogs.jpg"
    assert cli.main(["predict", "--image-source", str(SAMPLES), "--model", str(photo)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"nima predict: error: {photo} is not a model file: expected a .keras model (a zip "
        "archive), a model or job directory, or .h5/.hdf5 weights with --config-file")
    fake = tmp_path / "model.keras"
    fake.write_text("not a zip")
    with pytest.raises(ModelError, match="is not a model file"):
        resolve.resolve(fake)
    # A path wins over a name: a folder called "technical" here is that folder.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "technical").mkdir()
    with pytest.raises(ModelError, match="no best.keras or model.keras in technical"):
        resolve.resolve("technical")


def test_training_and_import_record_the_resize(tmp_path):
    from nima.config import Config
    from nima.errors import ConfigError
    from nima.model import build_model, model_resize

    config = Config(base_model_name="MobileNet", base_model_args={"alpha": 0.25},
                    base_weights=None, input_size=32, resize_method="nearest")
    model = build_model(config)
    model.save(tmp_path / "m.keras")
    assert model_resize(model) == "nearest"
    assert resolve.keras_file_resize(tmp_path / "m.keras") == "nearest"
    with pytest.raises(ConfigError, match="'resize_method' must be one of bilinear, nearest"):
        Config(base_model_name="MobileNet", resize_method="bicubic")
