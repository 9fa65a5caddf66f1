"""Fast prediction: TFLite equals Keras, sharding, streaming formats, merge, resume after
kill -9, ensembles, normalisation. Tiny MobileNets (alpha 0.25, 32/48 px, no weights)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_images, tiny_config


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Two tiny saved models (32 px MobileNet, 48 px MobileNetV2) and a conversion cache."""
    import keras

    from nima.config import Config
    from nima.model import build_model

    root = tmp_path_factory.mktemp("fast")
    previous = os.environ.get("NIMA_CACHE_DIR")
    os.environ["NIMA_CACHE_DIR"] = str(root / "cache")  # a cache of this module's own
    models = {}
    for name, cfg in {"a": tiny_config(), "b": tiny_config(base_model_name="MobileNetV2",
                                                           base_model_args={"alpha": 0.35},
                                                           input_size=48, resize_size=56)}.items():
        d = root / name
        d.mkdir()
        model = build_model(Config(**cfg))
        # Random init collapses every input to one output; batch-norm statistics taken from
        # one batch of noise make the outputs depend on the image, so comparisons mean something.
        for layer in model.layers[2].layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.0
        size = cfg["input_size"]
        noise = np.random.default_rng(0).uniform(0, 255, (16, size, size, 3)).astype("float32")
        model(noise, training=True)
        model.save(d / "model.keras")
        (d / "metadata.json").write_text(json.dumps({"description": f"model {name}"}))
        models[name] = d / "model.keras"
    yield root, models
    if previous is None:
        os.environ.pop("NIMA_CACHE_DIR", None)
    else:  # the session's (conftest.py): later modules must not write to ~/.cache either
        os.environ["NIMA_CACHE_DIR"] = previous


def real_images(directory: Path) -> Path:
    """Real photographs (scikit-learn's samples), cropped and resized, plus generated ones."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    directory.mkdir(parents=True, exist_ok=True)
    for i, photo in enumerate(load_sample_images().images):
        for j, (y, x) in enumerate([(0, 0), (100, 200), (200, 50)]):
            crop = Image.fromarray(photo[y:y + 220, x:x + 300])
            crop.resize((150 + 20 * j, 100 + 10 * j)).save(directory / f"photo{i}{j}.jpg",
                                                          quality=90)
    make_images(directory / "sub", 10, size=(40, 56))
    return directory


def load_results(path: Path) -> list[dict]:
    from nima.results import read_results

    return list(read_results(path))


def test_tflite_equals_keras_on_real_images(env, tmp_path, monkeypatch):
    from nima import images
    from nima.predict import Predictor

    _, models = env
    # A cache of its own: the module's shared one holds whatever earlier tests converted.
    monkeypatch.setenv("NIMA_CACHE_DIR", str(tmp_path / "cache"))
    folder = real_images(tmp_path / "img")
    keras_p = Predictor.load(models["a"], backend="keras")
    lite_p = Predictor.load(models["a"], backend="tflite")
    assert (keras_p.backend, lite_p.backend) == ("keras", "tflite")
    assert lite_p.input_size == keras_p.input_size == 32
    paths = sorted(images.iter_image_files(folder))
    batch = np.stack([images.load_image(p, 32) for p in paths])
    k, t = keras_p.predict_arrays(batch), lite_p.predict_arrays(batch)
    assert k.shape == t.shape == (len(paths), 10) and t.dtype == np.float64
    assert np.abs(k - t).max() < 1e-4
    assert k.std(axis=0).max() > 0.01  # the outputs depend on the image
    assert np.abs(t[:3] - lite_p.predict_arrays(batch[:3].astype(np.float32))).max() < 1e-6
    # score_files (threaded decode, batches of 4 with a ragged end) agrees with both.
    res = list(lite_p.score_files(paths, folder, batch_size=4))
    assert [r["image"] for r in res] == [str(p.relative_to(folder)) for p in paths]
    assert np.abs(np.array([r["predictions"] for r in res]) - k).max() < 1e-4
    # The conversion is cached by the model file's hash: a second load reuses it.
    cached = list((tmp_path / "cache" / "tflite").glob("*.tflite"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    Predictor.load(models["a"], backend="tflite")
    assert cached[0].stat().st_mtime_ns == mtime


def test_shards_score_every_image_once_and_merge(env, tmp_path):
    from nima.predict import predict
    from nima.results import merge

    _, models = env
    folder = tmp_path / "img"
    make_images(folder / "x", 13)
    make_images(folder / "y", 12, seed=1)
    (folder / "y" / "broken.jpg").write_bytes(b"not a jpeg")
    full = tmp_path / "full.jsonl"
    predict(folder, models["a"], predictions_file=full, fmt="jsonl", backend="tflite",
            batch_size=5)
    parts, counts = [], []
    for i, fmt in enumerate(["json", "jsonl", "csv"]):
        part = tmp_path / f"part{i}.{fmt}"
        counts.append(predict(folder, models["a"], predictions_file=part, fmt=fmt,
                              backend="tflite", num_shards=3, shard_index=i, batch_size=4)[0])
        parts.append(part)
    assert sum(counts) == 26 and all(counts)
    shard_images = [r["image"] for p in parts for r in load_results(p)]
    assert sorted(shard_images) == sorted(r["image"] for r in load_results(full))
    assert len(set(shard_images)) == 26
    # merge: any formats, overlapping parts are de-duplicated, scores survive every format.
    merged = tmp_path / "merged.json"
    assert merge(merged, [*parts, full]) == (26, 1)
    got = {r["image"]: r for r in json.loads(merged.read_text())}
    want = {r["image"]: r for r in load_results(full)}
    assert got.keys() == want.keys()
    for k, r in want.items():
        if "error" in r:
            assert got[k] == r
        else:
            assert np.allclose(got[k]["predictions"], r["predictions"], atol=1e-6)
    assert json.loads((tmp_path / "merged.json.meta.json").read_text())["duplicates_dropped"] == 26


def test_merge_prefers_a_score_over_an_error_and_validates(tmp_path):
    from nima.errors import DataError
    from nima.results import merge

    ok = {"image_id": "a", "image": "a.jpg", "predictions": [0.1] * 10,
          "mean_score_prediction": 5.5, "sd_score_prediction": 2.87}
    (tmp_path / "p1.jsonl").write_text(json.dumps({"image_id": "a", "image": "a.jpg",
                                                   "error": "x"}) + "\n")
    (tmp_path / "p2.json").write_text(json.dumps([ok], indent=1))  # not our layout: parsed whole
    assert merge(tmp_path / "m.jsonl", [tmp_path / "p1.jsonl", tmp_path / "p2.json"]) == (1, 0)
    assert load_results(tmp_path / "m.jsonl") == [ok]
    (tmp_path / "bad.jsonl").write_text(json.dumps({**ok, "predictions": [0.5] * 10}) + "\n")
    with pytest.raises(DataError, match="not a 10-bin distribution"):
        merge(tmp_path / "m2.json", [tmp_path / "bad.jsonl"])
    assert not (tmp_path / "m2.json").exists()
    (tmp_path / "cut.json").write_text("[\n" + json.dumps(ok) + ",\n")
    with pytest.raises(DataError, match="truncated"):
        merge(tmp_path / "m3.json", [tmp_path / "cut.json"])
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a predictions file")
    with pytest.raises(DataError, match="photo.jpg is not UTF-8 text"):
        merge(tmp_path / "m4.json", [tmp_path / "photo.jpg"])
    # Every format, any JSON layout, an empty shard: all read back the same.
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "pretty.json").write_text(json.dumps([ok], indent=2))
    assert merge(tmp_path / "m5.csv", [tmp_path / "empty.jsonl", tmp_path / "pretty.json"]) \
        == (1, 0)
    assert merge(tmp_path / "m6.jsonl", [tmp_path / "m5.csv"]) == (1, 0)
    assert json.loads((tmp_path / "m6.jsonl").read_text()) == ok


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_empty_folder_gives_a_valid_file(env, tmp_path, fmt):
    from nima.predict import predict

    _, models = env
    (tmp_path / "empty").mkdir()
    out = tmp_path / f"out.{fmt}"
    assert predict(tmp_path / "empty", models["a"], predictions_file=out, fmt=fmt,
                   backend="tflite") == (0, 0)
    text = out.read_text()
    if fmt == "json":
        assert json.loads(text) == []
    elif fmt == "jsonl":
        assert text == ""
    else:
        assert list(csv.reader(text.splitlines()))[0][:2] == ["image_id", "image"]
    meta = json.loads((tmp_path / f"out.{fmt}.meta.json").read_text())
    assert meta["count"] == 0 and meta["backend"] == ["tflite"]
    assert not (tmp_path / f"out.{fmt}.partial").exists()


def test_resume_after_sigkill(env, tmp_path):
    root, models = env
    folder = tmp_path / "img"
    make_images(folder, 600, size=(120, 160))
    out = tmp_path / "out.json"
    partial = tmp_path / "out.json.partial"
    cmd = [sys.executable, "-m", "nima", "predict", "--image-source", str(folder),
           "--model", str(models["a"]), "--predictions-file", str(out), "--backend", "tflite",
           "--batch-size", "4", "--workers", "1"]
    env_vars = dict(os.environ, NIMA_CACHE_DIR=str(root / "cache"))
    proc = subprocess.Popen(cmd, env=env_vars, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and partial.stat().st_size > 0:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run finished before it could be killed"
    done = len(partial.read_bytes().splitlines())
    assert 0 < done < 600
    r = subprocess.run(cmd + ["--resume"], env=env_vars, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    results = json.loads(out.read_text())
    assert sorted(x["image"] for x in results) == sorted(p.name for p in folder.iterdir())
    assert not partial.exists()
    meta = json.loads((tmp_path / "out.json.meta.json").read_text())
    assert meta["resumed_from_partial"] >= done - 4 and meta["count"] == 600
    assert meta["scored_this_run"] == 600 - meta["resumed_from_partial"]


def _complete_run(model, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """5 images scored in one uninterrupted run: (folder, full.jsonl, its lines)."""
    from nima.predict import predict

    folder = tmp_path / "img"
    make_images(folder, 5)
    full = tmp_path / "full.jsonl"
    predict(folder, model, predictions_file=full, fmt="jsonl", backend="tflite")
    return folder, full, full.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("cut", [40, -1], ids=["mid-line", "only-newline-missing"])
def test_resume_cuts_a_half_written_last_line(env, tmp_path, cut):
    """A kill -9 in the middle of a line (the timed test above rarely hits one): resume drops
    the half line, even one that lacks only its newline, keeps the complete ones and scores
    the rest, each image once."""
    from nima.predict import predict

    _, models = env
    folder, full, lines = _complete_run(models["a"], tmp_path)
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.partial").write_text("".join(lines[:2]) + lines[2][:cut])
    assert predict(folder, models["a"], predictions_file=out, fmt="jsonl", backend="tflite",
                   resume=True) == (5, 0)
    assert sorted(load_results(out), key=lambda r: r["image"]) == load_results(full)
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert (meta["resumed_from_partial"], meta["scored_this_run"]) == (2, 3)


def test_resume_refuses_a_different_run(env, tmp_path):
    """Partial results of one model (or folder, or shard) must not be completed by another."""
    from nima.errors import NimaError
    from nima.predict import predict
    from nima.partial import run_path

    _, models = env
    folder, full, lines = _complete_run(models["a"], tmp_path)
    assert not run_path(tmp_path / "full.jsonl.partial").exists()  # removed with the partial
    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    partial.write_text("".join(lines[:2]))
    run_path(partial).write_text(json.dumps({
        "image source": str(folder.resolve()), "models": [str(Path(models["a"]).resolve())],
        "shard": "0 of 1"}))  # as the interrupted run with model a left it
    with pytest.raises(NimaError, match=r"--resume: .*out.jsonl.partial was made with models "
                       r"\[.*\], this run has \[.*\]; give the same arguments"):
        predict(folder, models["b"], predictions_file=out, fmt="jsonl", backend="tflite",
                resume=True)
    with pytest.raises(NimaError, match="was made with shard 0 of 1, this run has 1 of 2"):
        predict(folder, models["a"], predictions_file=out, fmt="jsonl", backend="tflite",
                resume=True, num_shards=2, shard_index=1)
    assert partial.read_text() == "".join(lines[:2])  # nothing lost
    assert predict(folder, models["a"], predictions_file=out, fmt="jsonl", backend="tflite",
                   resume=True) == (5, 0)
    assert sorted(load_results(out), key=lambda r: r["image"]) == load_results(full)
    assert not partial.exists() and not run_path(partial).exists()


def test_ensemble_averages_models_at_their_own_sizes(env, tmp_path):
    from nima import images
    from nima.predict import Predictor, predict

    _, models = env
    folder = tmp_path / "img"
    make_images(folder, 6)
    out = tmp_path / "out.jsonl"
    predict(folder, [models["a"], models["b"]], predictions_file=out, fmt="jsonl",
            backend="tflite")
    got = np.array([r["predictions"] for r in load_results(out)])
    paths = sorted(folder.iterdir())
    want = []
    for m, size in ((models["a"], 32), (models["b"], 48)):
        p = Predictor.load(m, backend="keras")
        want.append(p.predict_arrays(np.stack([images.load_image(x, size) for x in paths])))
    assert np.abs(got - np.mean(want, axis=0)).max() < 1e-4
    assert np.abs(want[0] - want[1]).max() > 1e-3  # the average differs from either model
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert [m["description"] for m in meta["models"]] == ["model a", "model b"]
    assert meta["ensemble"] and meta["count"] == 6


def test_normalize_minmax(env, tmp_path):
    from nima.predict import predict

    _, models = env
    folder = tmp_path / "img"
    make_images(folder, 9)
    out = tmp_path / "out.csv"
    predict(folder, models["a"], predictions_file=out, fmt="csv", backend="tflite")
    raw = {r["image"]: r["mean_score_prediction"] for r in load_results(out)}
    out2 = tmp_path / "norm.json"
    predict(folder, models["a"], predictions_file=out2, backend="tflite", normalize="minmax",
            norm_range=(0.0, 100.0), batch_size=4)
    res = json.loads(out2.read_text())
    means = np.array([r["mean_score_prediction"] for r in res])
    raws = np.array([raw[r["image"]] for r in res])
    assert means.min() == pytest.approx(0, abs=1e-4) and means.max() == pytest.approx(100, abs=1e-4)
    want = (raws - raws.min()) / (raws.max() - raws.min()) * 100
    assert np.abs(means - want).max() < 0.05  # csv rounding of the raw means
    meta = json.loads((tmp_path / "norm.json.meta.json").read_text())
    assert meta["normalization"]["range"] == [0.0, 100.0]
    assert meta["normalization"]["min"] == pytest.approx(raws.min(), abs=1e-5)
    # One image (every mean equal): the middle of the range, not a division by zero.
    (tmp_path / "one").mkdir()
    (folder / "img0000.jpg").rename(tmp_path / "one" / "img0000.jpg")
    predict(tmp_path / "one", models["a"], predictions_file=out2, backend="tflite",
            normalize="minmax", norm_range=(0.0, 100.0))
    [only] = json.loads(out2.read_text())
    assert only["mean_score_prediction"] == 50.0
    assert only["mean_score_raw"] == pytest.approx(raw["img0000.jpg"], abs=1e-4)


def test_cli_errors_are_one_line(env, tmp_path, capsys):
    from nima.cli import main

    _, models = env
    make_images(tmp_path / "img", 2)
    args = ["predict", "--image-source", str(tmp_path / "img"), "--model", str(models["a"])]
    for argv, message in (
            ([*args, "--num-shards", "2", "--shard-index", "2"],
             "nima predict: error: --shard-index must be in 0..1, not 2"),
            ([*args, "--resume"], "nima predict: error: --resume needs --predictions-file "
                                  "(the partial results live beside it)"),
            (["merge", str(tmp_path / "m.json"), str(tmp_path / "missing.json")],
             f"nima merge: error: part not found: {tmp_path / 'missing.json'}")):
        assert main(argv) == 1
        captured = capsys.readouterr()
        assert captured.err.strip().splitlines() == [message] and captured.out == ""
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--workers", "-3"], "--workers must be at least 1"),
    (["--num-shards", "0"], "--num-shards must be at least 1, not 0"),
    (["--range", "0", "100"], "--range only applies with --normalize minmax"),
])
def test_bad_options_are_one_line_errors(env, tmp_path, capsys, extra, message):
    from nima.cli import main

    _, models = env
    make_images(tmp_path / "img", 2)
    assert main(["predict", "--image-source", str(tmp_path / "img"), "--model",
                 str(models["a"]), "--backend", "tflite", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"nima predict: error: {message}", err


def test_format_follows_the_file_suffix(env, tmp_path, caplog):
    """--predictions-file scores.csv without --format writes CSV, not JSON named .csv."""
    from nima.cli import main

    _, models = env
    make_images(tmp_path / "img", 3)
    base = ["predict", "--image-source", str(tmp_path / "img"), "--model", str(models["a"]),
            "--backend", "tflite", "--predictions-file"]
    assert main([*base, str(tmp_path / "s.csv")]) == 0
    assert (tmp_path / "s.csv").read_text().startswith("image_id,image,mean_score_prediction,")
    assert main([*base, str(tmp_path / "s.jsonl")]) == 0
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(x)["image"] for x in lines)
    assert main([*base, str(tmp_path / "s.csv.json"), "--format", "jsonl"]) == 0  # explicit
    assert len((tmp_path / "s.csv.json").read_text().splitlines()) == 3
    assert json.loads((tmp_path / "s.csv.meta.json").read_text())["format"] == "csv"
    # An empty folder is a valid, empty result, but never a silent one.
    (tmp_path / "none").mkdir()
    assert main(["predict", "--image-source", str(tmp_path / "none"), "--model",
                 str(models["a"]), "--backend", "tflite"]) == 0
    assert "no image files" in caplog.text


def test_a_second_run_on_the_same_file_is_refused(env, tmp_path):
    """Two runs appending to one partial file would interleave their lines; the second run
    must stop before touching the first one's results."""
    import fcntl

    from nima.errors import NimaError
    from nima.predict import predict

    _, models = env
    make_images(tmp_path / "img", 3)
    out = tmp_path / "out.json"
    partial = tmp_path / "out.json.partial"
    partial.write_text('{"image_id": "a", "image": "a.jpg", "error": "x"}\n')
    with open(partial, "a+b") as running:  # what a run in progress holds
        fcntl.flock(running.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        for resume in (False, True):
            with pytest.raises(NimaError, match="another nima predict is writing"):
                predict(tmp_path / "img", models["a"], predictions_file=out, backend="tflite",
                        resume=resume)
        assert partial.read_text().count("\n") == 1 and not out.exists()
    assert predict(tmp_path / "img", models["a"], predictions_file=out, backend="tflite",
                   resume=True) == (4, 1)
    assert not partial.exists()


def test_merged_shards_are_in_the_order_of_one_run(env, tmp_path):
    from nima.predict import predict
    from nima.results import merge

    _, models = env
    folder = tmp_path / "img"
    # "x-y/" sorts before "x/" as a string but after it in the folder walk.
    for sub, n in (("x", 5), ("x-y", 4), ("x.y", 3), ("", 4)):
        make_images(folder / sub, n, size=(20, 20), seed=n)
    full = tmp_path / "full.jsonl"
    predict(folder, models["a"], predictions_file=full, backend="tflite")
    parts = [tmp_path / f"part{i}.jsonl" for i in range(4)]
    for i, part in enumerate(parts):
        predict(folder, models["a"], predictions_file=part, backend="tflite", num_shards=4,
                shard_index=i)
    assert merge(tmp_path / "merged.jsonl", parts[::-1]) == (16, 0)
    assert load_results(tmp_path / "merged.jsonl") == load_results(full)


def test_a_damaged_conversion_cache_is_rebuilt(env, tmp_path, monkeypatch, caplog):
    from nima import images, runtime
    from nima.predict import Predictor

    _, models = env
    monkeypatch.setenv("NIMA_CACHE_DIR", str(tmp_path / "cache"))
    make_images(tmp_path / "img", 2)
    batch = np.stack([images.load_image(p, 32) for p in sorted((tmp_path / "img").iterdir())])
    want = Predictor.load(models["a"], backend="tflite").predict_arrays(batch)
    (cached,) = (tmp_path / "cache" / "tflite").iterdir()
    cached.write_bytes(cached.read_bytes()[:1000])  # e.g. a disk error, or a full disk elsewhere
    got = Predictor.load(models["a"], backend="tflite")
    assert got.backend == "tflite" and np.allclose(got.predict_arrays(batch), want, atol=1e-6)
    assert "discarding the unreadable cached conversion" in caplog.text
    assert runtime.TFLiteRunner(cached.read_bytes()).input_size == 32  # the entry was rebuilt


def test_resume_without_partial_results_says_so(env, tmp_path, caplog):
    from nima.predict import predict

    _, models = env
    make_images(tmp_path / "img", 2)
    assert predict(tmp_path / "img", models["a"], predictions_file=tmp_path / "o.json",
                   backend="tflite", resume=True) == (2, 0)
    assert "nothing to resume" in caplog.text


def test_a_directory_as_output_is_refused_before_scoring(env, tmp_path):
    from nima.errors import NimaError
    from nima.predict import predict
    from nima.results import merge

    _, models = env
    make_images(tmp_path / "img", 2)
    (tmp_path / "out").mkdir()
    with pytest.raises(NimaError, match="is a directory; name a file"):
        predict(tmp_path / "img", models["a"], predictions_file=tmp_path / "out",
                backend="tflite")
    assert not (tmp_path / "out.partial").exists()  # nothing was scored for nothing
    (tmp_path / "p.jsonl").write_text("")
    with pytest.raises(NimaError, match="is a directory; name a file"):
        merge(tmp_path / "out", [tmp_path / "p.jsonl"])


def test_every_scoring_option_has_help():
    from nima.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    missing = [(name, a.option_strings or a.dest)
               for name in ("predict", "merge", "evaluate", "report", "export", "calibrate")
               for a in sub.choices[name]._actions if a.help is None]
    assert missing == []


def test_long_runs_log_progress(env, tmp_path, monkeypatch, caplog):
    from nima import predict as predict_module

    _, models = env
    make_images(tmp_path / "img", 5)
    monkeypatch.setattr(predict_module, "PROGRESS_SECONDS", 0.0)
    caplog.set_level("INFO", logger="nima")
    predict_module.predict(tmp_path / "img", models["a"], predictions_file=tmp_path / "o.json",
                           backend="tflite", batch_size=2)
    assert "5 images scored so far (0 failed)" in caplog.text


def test_an_ensemble_of_different_tasks_warns(env, tmp_path, caplog):
    import shutil

    from nima.predict import Ensemble, Predictor

    _, models = env
    jobs = []
    for task in ("aesthetic", "technical"):
        job = tmp_path / task
        job.mkdir()
        shutil.copy(models["a"], job / "best.keras")
        (job / "config.json").write_text(json.dumps({"task": task}))
        jobs.append(Predictor.load(job, backend="tflite"))
    assert [p.info["task"] for p in jobs] == ["aesthetic", "technical"]
    Ensemble(jobs[:1] * 2)
    assert "different tasks" not in caplog.text
    Ensemble(jobs)
    assert "averaging models trained for different tasks (aesthetic, technical)" in caplog.text


def test_a_model_returning_nan_gives_error_entries_and_strict_json(env, tmp_path):
    """A diverged model (NaN weights) must not write NaN tokens: not JSON for jq, browsers or
    `nima merge`. Each image gets an error entry instead, and the exit code says so."""
    import keras

    from nima.cli import main
    from nima.results import merge

    _, models = env
    model = keras.saving.load_model(models["a"])
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, np.full_like(bias, np.nan)])
    model.save(tmp_path / "nan.keras")
    make_images(tmp_path / "img", 3)
    out = tmp_path / "o.json"
    assert main(["predict", "--image-source", str(tmp_path / "img"), "--model",
                 str(tmp_path / "nan.keras"), "--backend", "keras", "--predictions-file",
                 str(out)]) == 3
    def refuse(name):
        raise AssertionError(f"{name} in the output")
    results = json.loads(out.read_text(), parse_constant=refuse)
    assert len(results) == 3 and all("NaN" in r["error"] for r in results)
    assert merge(tmp_path / "m.json", [out]) == (3, 3)
