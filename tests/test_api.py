"""The Python API: `nima.load()` and `model.predict(images=...)` for every input kind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from scoring_model import shared_scoring_model

pytest.importorskip("tensorflow")

import nima  # noqa: E402
from nima import cli, images, resolve  # noqa: E402
from nima.errors import ImageError, ModelError  # noqa: E402
from nima.results import result_fields  # noqa: E402


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    model_path, paths = shared_scoring_model(tmp_path_factory)
    return nima.load(model_path.parent), paths


@pytest.fixture(scope="module")
def model(model_and_images):
    return model_and_images[0]


@pytest.fixture(scope="module")
def pngs(model_and_images, tmp_path_factory):
    """A folder of PNGs (no JPEG draft decoding, so PIL/numpy inputs give identical pixels)."""
    folder = tmp_path_factory.mktemp("pngs")
    for p in model_and_images[1]:
        if p.suffix == ".png":
            shutil.copy(p, folder / p.name)
    return sorted(folder.glob("*.png"))


def scores_only(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("image_id", "image")}


def test_import_nima_stays_tensorflow_free():
    code = ("import sys, nima; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; "
            "assert 'load' in dir(nima)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with pytest.raises(AttributeError):
        nima.no_such_name  # noqa: B018


def test_load_reads_model_and_training_config(model, model_and_images):
    assert model.input_size == 32
    assert model.crop_source_size == 40  # resize_size from the config.json beside the model
    assert model.keras_model is model.predictor.model
    assert model.info["model"].endswith("model.keras")


def test_default_model_and_missing_default(model_and_images, tmp_path, monkeypatch):
    monkeypatch.setenv("NIMA_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelError, match="default model is missing"):
        nima.load()
    shutil.copytree(model_and_images[0].info["model"].rsplit("/", 1)[0],
                    tmp_path / resolve.DEFAULT)
    loaded = nima.load()
    assert loaded.info["model"] == str(tmp_path / resolve.DEFAULT / "model.keras")
    path = model_and_images[1][0]
    assert loaded.predict(images=path) == model_and_images[0].predict(images=path)


def test_folder_gives_the_cli_results(model, model_and_images, tmp_path):
    folder = model_and_images[1][0].parent
    out = tmp_path / "cli.json"
    assert cli.main(["predict", "--image-source", str(folder), "--weights-file",
                     model.info["model"], "--predictions-file", str(out)]) == 0
    results = model.predict(images=folder)
    assert results == json.loads(out.read_text())
    assert len(results) == len(model_and_images[1])
    assert {r["image"] for r in results} >= {"china.jpg", "generated/img0000.jpg"}


def test_single_path_and_list_of_paths(model, model_and_images, tmp_path):
    paths = model_and_images[1][:3]
    single = model.predict(images=str(paths[0]))
    assert len(single) == 1 and single[0]["image"] == paths[0].name
    assert single[0]["image_id"] == paths[0].stem
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    listed = model.predict(images=[paths[0], str(paths[1]), bad, tmp_path / "gone.jpg", paths[2]],
                           batch_size=2)
    assert [r["image"] for r in listed] == [str(p) for p in
                                            (paths[0], paths[1], bad, tmp_path / "gone.jpg",
                                             paths[2])]
    assert listed[2] == {"image_id": "broken", "image": str(bad),
                         "error": f"not a recognised image file: {bad}"}
    assert listed[3] == {"image_id": "gone", "image": str(tmp_path / "gone.jpg"),
                         "error": f"file not found: {tmp_path / 'gone.jpg'}"}
    assert scores_only(listed[0]) == scores_only(single[0])
    expected = model.predictor.predict_arrays(images.load_image(paths[1], 32)[None])[0]
    assert scores_only(listed[1]) == result_fields(expected)


def test_pil_images_and_arrays_match_files(model, pngs):
    from_files = model.predict(images=pngs)
    assert len({r["mean_score_prediction"] for r in from_files}) == len(pngs)  # not constant
    pil = [Image.open(p) for p in pngs]
    arrays = [np.asarray(img.convert("RGBA") if "alpha" in p.name else img.convert("RGB"))
              for img, p in zip(pil, pngs)]
    for results in (model.predict(images=pil), model.predict(images=arrays)):
        assert [r["image_id"] for r in results] == list(range(len(pngs)))
        assert all(r["image"] is None for r in results)
        assert [scores_only(r) for r in results] == [scores_only(r) for r in from_files]
    one = model.predict(images=pil[0])
    assert one == [{"image_id": 0, "image": None, **scores_only(from_files[0])}]


def test_array_kinds_batch_gray_float(model, pngs):
    rgb = np.asarray(Image.open(pngs[0]).convert("RGB").resize((50, 40)))
    gray = rgb.mean(axis=-1).round().astype(np.uint8)
    batch = np.stack([rgb, rgb[::-1]])
    by_batch = model.predict(images=batch)
    assert [r["image_id"] for r in by_batch] == [0, 1]
    assert scores_only(by_batch[0]) == scores_only(model.predict(images=rgb)[0])
    assert scores_only(model.predict(images=rgb.astype(np.float32))[0]) == \
        scores_only(by_batch[0])
    as_rgb = np.repeat(gray[..., None], 3, axis=-1)
    assert scores_only(model.predict(images=gray)[0]) == \
        scores_only(model.predict(images=as_rgb)[0])
    assert scores_only(model.predict(images=gray[..., None])[0]) == \
        scores_only(model.predict(images=as_rgb)[0])
    # Already at the input size: not resampled, fed as is.
    exact = rgb[:32, :32]
    expected = model.predictor.predict_arrays(exact[None])[0]
    assert scores_only(model.predict(images=exact)[0]) == result_fields(expected)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4, 5), np.uint8), "has shape"),
    (np.full((8, 8, 3), 300.0), "outside 0..255"),
    (np.full((8, 8, 3), np.nan), "outside 0..255"),
    (np.array([["a"]]), "has dtype"),
    (42, "cannot score int"),
    ([Image.new("RGB", (8, 8)), 3.5], "item 1 is a float"),
])
def test_bad_inputs_raise_one_sentence(model, bad, message):
    with pytest.raises(ImageError, match=message):
        model.predict(images=bad)


def test_missing_source_raises(model, tmp_path):
    with pytest.raises(ImageError, match="image source not found"):
        model.predict(images=tmp_path / "nothing")


def test_augmented_averages_flip_and_crops(model, model_and_images):
    path = model_and_images[1][0]
    plain = model.predict(images=path)[0]
    augmented = model.predict(images=path, augmented=True)[0]
    full = images.load_image(path, 32)
    big = images.load_image(path, 40)
    views = [full, full[:, ::-1]] + [big[y:y + 32, x:x + 32]
                                     for y, x in ((4, 4), (0, 0), (0, 8), (8, 0), (8, 8))]
    expected = model.predictor.predict_arrays(np.stack(views)).mean(axis=0)
    assert scores_only(augmented) == result_fields(expected)
    assert augmented["predictions"] != plain["predictions"]
    assert augmented["image"] == plain["image"] == path.name
    # In-memory images and errors go through the same path.
    arr = np.asarray(Image.open(path).convert("RGB"))
    mixed = model.predict(images=[arr, path.parent / "missing.png"], augmented=True)
    assert mixed[0]["image_id"] == 0 and "predictions" in mixed[0]
    assert mixed[1]["error"] == f"file not found: {path.parent / 'missing.png'}"
