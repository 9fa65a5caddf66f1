"""Bad and awkward image files (tests/corpus.py) through the decoder, `nima predict`, `nima train`.

The contract: a bad file becomes an `error` entry / a skipped sample with one sentence, a good
file gets a score, and nothing stops the run or hangs; on TensorFlow and on JAX (TensorFlow
hidden), whose input paths differ (tf.data / TFLite against nima.feed / Keras).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from corpus import BLUE, NON_UTF8_NAME, RED, bomb_png, write_corpus
from conftest import BACKENDS, backend_env, make_images, tiny_config
from nima import images
from nima.errors import ImageError

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def nima(*args: str | Path, cwd: Path | None = None, timeout: int = 180,
         backend: str = "tensorflow"):
    env = ENV if backend == "tensorflow" else backend_env(backend)
    return subprocess.run([sys.executable, "-m", "nima", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    return d, write_corpus(d)


# --- the decoder, file by file ------------------------------------------------------------------

def test_every_corpus_file_decodes_or_fails_with_image_error(corpus):
    d, items = corpus
    for name, item in items.items():
        if item.good:
            arr = images.load_image(d / name, 32)
            assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8, name
        else:
            with pytest.raises(ImageError) as e:
                images.load_image(d / name, 32)
            assert str(d / name) in str(e.value) and "\n" not in str(e.value), name


def test_exif_orientation_is_applied(corpus):
    d, _ = corpus
    arr = images.load_image(d / "rotated6.jpg")
    # stored 48 wide x 32 high, left half red; shown rotated 90 degrees clockwise: 32x48, top red
    assert arr.shape == (48, 32, 3)
    top, bottom = arr[:20].reshape(-1, 3).mean(0), arr[28:].reshape(-1, 3).mean(0)
    assert np.allclose(top, RED, atol=30) and np.allclose(bottom, BLUE, atol=30)


def test_modes_become_what_a_viewer_shows(corpus):
    d, _ = corpus
    gray16 = images.load_image(d / "gray16.png")
    # a full-range 16-bit ramp must stay a full-range ramp, not clip to white
    assert gray16[0, 0, 0] < 5 and gray16[-1, -1, 0] > 250
    assert (gray16[..., 0] == gray16[..., 1]).all()
    rgba = images.load_image(d / "rgba.png")
    assert (rgba[:, 0] == 255).all()  # alpha 0 -> composited on white
    assert (images.load_image(d / "animated.gif")[0, 0] == RED).all()  # first frame
    assert (images.load_image(d / "one_pixel.png", 32) == (10, 200, 30)).all()


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_transparent_pixels_are_white_in_every_mode(tmp_path, fmt):
    """Gray+alpha (LA) and palette images with a transparent index, not only RGBA: left half
    transparent, right half opaque dark gray (40)."""
    from PIL import Image

    alpha = np.zeros((8, 12), np.uint8)
    alpha[:, 6:] = 255
    palette = Image.new("P", (12, 8))
    palette.putdata((alpha // 255).flatten().tolist())  # index 0 (transparent) or 1 (gray)
    palette.putpalette([0, 0, 0, 40, 40, 40])
    palette.save(tmp_path / f"P.{fmt}", transparency=0)
    saved = ["P"]
    if fmt == "PNG":  # GIF has no gray+alpha mode
        Image.fromarray(np.dstack([np.full_like(alpha, 40), alpha])).save(tmp_path / "LA.PNG")
        saved.append("LA")
    for mode in saved:
        arr = images.load_image(tmp_path / f"{mode}.{fmt}")
        assert (arr[:, :6] == 255).all(), (mode, fmt)
        assert (arr[:, 6:] == 40).all(), (mode, fmt)


# 900 Mpx: past Pillow's own hard limit (2 x MAX_IMAGE_PIXELS); 150 Mpx: past our 100 Mpx
# limit, where Pillow alone only warns and would decode it.
@pytest.mark.parametrize("width, height", [(30000, 30000), (12500, 12000)])
def test_decompression_bomb_refused_from_header_without_memory(tmp_path, width, height):
    import resource

    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(width, height))
    assert path.stat().st_size < 2000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match="pixels, refused"):
        images.load_image(path, 32)
    with pytest.raises(ImageError, match="pixels, refused"):
        images.check_image(path)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 100  # decoding would need 150 or 900 MB


def test_fifo_named_jpg_is_refused_not_opened(corpus):
    d, _ = corpus
    # opening a FIFO for reading would block this test forever
    with pytest.raises(ImageError, match="not a regular file"):
        images.open_image(d / "fifo.jpg")


def test_chmod_000_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading; "
                    "unreadable files are covered by dangling-symlink and FIFO items instead")
    path = tmp_path / "locked.jpg"
    make_images(tmp_path / "src", 1)
    path.write_bytes((tmp_path / "src" / "img0000.jpg").read_bytes())
    path.chmod(0)
    with pytest.raises(ImageError, match="ermission denied"):
        images.load_image(path, 32)


def test_walk_survives_symlink_loop_and_lists_each_file_once(corpus):
    d, items = corpus
    found = [p.relative_to(d) for p in images.iter_image_files(d)]
    assert len(found) == len(set(found))
    assert {str(p) for p in found} == set(items)


def test_truncated_and_corrupt_files_fail_the_training_check(corpus):
    d, _ = corpus
    for name in ("truncated.jpg", "corrupt.png"):
        images.open_image(d / name).close()  # the header alone looks fine ...
        with pytest.raises(ImageError):  # ... the full check does not
            images.check_image(d / name)
    images.check_image(d / "plain.jpg")


# --- nima predict over the whole corpus -----------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The smallest model predict accepts (32x32 RGB in, 10 softmax out): loads in a blink."""
    import keras

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x)).save(path)
    return path


@pytest.fixture(scope="module")
def utf8_corpus(tmp_path_factory):
    # without the Latin-1 file name: see test_predict_cli_non_utf8_file_name
    d = tmp_path_factory.mktemp("corpus_utf8")
    return d, write_corpus(d, non_utf8_name=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_predict_cli_scores_good_files_reports_bad_ones_exit_3(utf8_corpus, tiny_model, tmp_path,
                                                               fmt, backend):
    d, items = utf8_corpus
    out = tmp_path / f"predictions.{fmt}"
    r = nima("predict", "--image-source", d, "--model", tiny_model, "--predictions-file", out,
             "--format", fmt, "--batch-size", "4", backend=backend)
    assert r.returncode == 3, r.stderr[-2000:]
    if fmt == "json":
        results = json.loads(out.read_text(encoding="utf-8"))
    else:
        import csv

        with open(out, newline="", encoding="utf-8") as f:
            results = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    by_name = {r["image"]: r for r in results}
    assert len(results) == len(by_name) == len(items), sorted(by_name)
    for name, item in items.items():
        got = by_name[name]
        if item.good:
            assert "error" not in got, (name, got)
            assert 1 <= float(got["mean_score_prediction"]) <= 10
        else:
            assert got.get("error") and "mean_score_prediction" not in got, (name, got)


def test_predict_cli_non_utf8_file_name(tmp_path, tiny_model):
    src = tmp_path / "images"
    make_images(src, 1)
    os.rename(src / "img0000.jpg", src / NON_UTF8_NAME)
    out = tmp_path / "predictions.jsonl"
    r = nima("predict", "--image-source", src, "--model", tiny_model, "--predictions-file", out,
             "--format", "jsonl")
    assert r.returncode == 0, r.stderr[-1500:]
    [result] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert os.fsencode(result["image"]) == os.fsencode(NON_UTF8_NAME) or \
        result["image"] == os.fsencode(NON_UTF8_NAME).decode("utf-8", "backslashreplace")


# --- nima train with bad samples --------------------------------------------------------------

def _train_setup(tmp_path: Path, corpus, max_missing: float):
    d, items = corpus
    image_dir = tmp_path / "images"
    rows = make_images(image_dir, 24)
    bad = [n for n, it in items.items() if not it.good]
    for name in bad:
        src = d / name
        if src.is_symlink() or not src.is_file():
            os.symlink(os.readlink(src) if src.is_symlink() else src, image_dir / name)
        else:
            (image_dir / name).write_bytes(src.read_bytes())
    bad_ids = [Path(n).stem for n in bad] + ["no_such_image"]
    rows += [{"image_id": i, "label": [1] * 10} for i in bad_ids]
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps(rows))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(epochs_train_dense=1, epochs_train_all=0,
                                             max_missing_fraction=max_missing)))
    return samples, image_dir, config, bad_ids


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_skips_and_lists_bad_samples(tmp_path, corpus, backend):
    samples, image_dir, config, bad_ids = _train_setup(tmp_path, corpus, 0.5)
    job = tmp_path / "job"
    r = nima("train", "--config-file", config, "--samples-file", samples, "--image-dir",
             image_dir, "--job-dir", job, backend=backend)
    assert r.returncode == 0, r.stderr[-3000:]
    skipped = (job / "skipped.txt").read_text().splitlines()
    assert len(skipped) == len(bad_ids)
    for i in bad_ids:
        assert sum(Path(line.split("\t")[0]).stem == i for line in skipped) == 1, i
    summary = json.loads((job / "summary.json").read_text())
    assert summary["n_skipped"] == len(bad_ids)
    assert summary["n_train"] + summary["n_validation"] == 24
    assert f"{len(bad_ids)} of {24 + len(bad_ids)} samples" in r.stderr


def test_train_stops_before_first_epoch_when_too_many_are_bad(tmp_path, corpus):
    samples, image_dir, config, bad_ids = _train_setup(tmp_path, corpus, 0.1)
    job = tmp_path / "job"
    r = nima("train", "--config-file", config, "--samples-file", samples, "--image-dir",
             image_dir, "--job-dir", job)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("nima train: error:")]
    assert len(errors) == 1 and "max_missing_fraction" in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert len((job / "skipped.txt").read_text().splitlines()) == len(bad_ids)
    assert not (job / "checkpoint").exists() and not (job / "history.json").exists()
