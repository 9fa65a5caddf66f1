"""predict and evaluate through the real CLI entry point, on a tiny saved model."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nima import evaluate, scores
from nima.config import Config
from nima.model import build_model

from conftest import REPO, make_images
from scoring_model import shared_scoring_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    cfg = Config(base_model_name="MobileNet", base_model_args={"alpha": 0.25},
                 base_weights=None, input_size=32)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    build_model(cfg).save(path)
    return path


def nima(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nima", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def nima_main(capsys, *args) -> subprocess.CompletedProcess:
    """`nima ARGS` through cli.main in this process: the same exit code, stdout and stderr,
    without a new Python importing TensorFlow (about 5 s a call). The tests of a clean
    stdout and of tracebacks run the real command (`nima` above)."""
    from nima.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def test_predict_folder_json(tmp_path, model_file, capsys):
    src = tmp_path / "photos"
    make_images(src / "sub", 3)
    Image.new("RGBA", (20, 30), (10, 200, 30, 128)).save(src / "alpha.png")
    (src / "broken.jpg").write_text("not an image")
    out = tmp_path / "out" / "pred.json"
    r = nima_main(capsys, "predict", "--image-source", src, "--weights-file", model_file,
             "--predictions-file", out)
    assert r.returncode == 3, r.stderr  # partial: one file failed
    assert r.stdout == ""
    results = json.loads(out.read_text())
    assert [x["image"] for x in results] == [
        "alpha.png", "broken.jpg", "sub/img0000.jpg", "sub/img0001.jpg", "sub/img0002.jpg"]
    bad = results[1]
    assert bad["image_id"] == "broken" and "not a recognised image" in bad["error"]
    for x in results[:1] + results[2:]:
        assert set(x) == {"image_id", "image", "predictions", "mean_score_prediction",
                          "sd_score_prediction"}
        p = np.array(x["predictions"])
        assert p.shape == (10,) and abs(p.sum() - 1) < 1e-5
        assert x["mean_score_prediction"] == pytest.approx(scores.mean_score(p), abs=1e-5)
        assert x["sd_score_prediction"] == pytest.approx(scores.sd_score(p), abs=1e-5)


def test_predict_single_file_to_stdout_matches_keras(tmp_path, model_file):
    import keras

    from nima.images import load_image

    make_images(tmp_path, 1)
    r = nima("predict", "--image-source", tmp_path / "img0000.jpg", "--weights-file", model_file)
    assert r.returncode == 0, r.stderr
    (result,) = json.loads(r.stdout)
    assert result["image"] == "img0000.jpg"
    model = keras.saving.load_model(model_file)
    expected = model.predict_on_batch(load_image(tmp_path / "img0000.jpg", 32)[None].astype("float32"))
    np.testing.assert_allclose(result["predictions"], expected[0], atol=1e-5)


def test_predictions_file_dash_is_stdout(tmp_path, model_file):
    make_images(tmp_path / "photos", 2)
    r = nima("predict", "--image-source", "photos", "--weights-file", model_file,
             "--predictions-file", "-", "--format", "jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["image"] for line in r.stdout.splitlines()] == [
        "img0000.jpg", "img0001.jpg"]
    assert not (tmp_path / "-").exists()


def test_predict_errors_are_one_line(tmp_path, model_file):
    r = nima("predict", "--image-source", tmp_path / "nope", "--weights-file", model_file)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("nima predict: error:")
    assert "Traceback" not in r.stderr
    r = nima("predict", "--image-source", tmp_path, "--weights-file", tmp_path / "none.keras")
    assert r.returncode == 1 and "model not found" in r.stderr


def test_empty_folder_gives_empty_array(tmp_path, model_file, capsys):
    out = tmp_path / "p.json"
    r = nima_main(capsys, "predict", "--image-source", tmp_path, "--weights-file", model_file,
             "--predictions-file", out)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text()) == []


def test_metrics_against_independent_computation():
    rng = np.random.default_rng(0)
    y_true = rng.dirichlet(np.ones(10) * 3, size=200)
    y_pred = 0.7 * y_true + 0.3 * rng.dirichlet(np.ones(10) * 3, size=200)
    m = evaluate.metrics(y_true, y_pred)
    bins = np.arange(1, 11)
    mt, mp = y_true @ bins, y_pred @ bins
    st, sp = [np.sqrt(y @ bins**2 - (y @ bins) ** 2) for y in (y_true, y_pred)]
    ranks = lambda a: np.argsort(np.argsort(a))
    cdf_gap = np.abs(np.cumsum(y_true, 1) - np.cumsum(y_pred, 1))
    assert m["n"] == 200
    assert m["plcc_mean"] == pytest.approx(np.corrcoef(mt, mp)[0, 1])
    assert m["srcc_mean"] == pytest.approx(np.corrcoef(ranks(mt), ranks(mp))[0, 1])
    assert m["srcc_sd"] == pytest.approx(np.corrcoef(ranks(st), ranks(sp))[0, 1])
    assert m["accuracy_at_5"] == pytest.approx(np.mean((mt > 5) == (mp > 5)))
    assert m["mae_mean"] == pytest.approx(np.mean(np.abs(mt - mp)))
    assert m["emd_r1"] == pytest.approx(np.mean(cdf_gap.mean(axis=1)))
    assert m["emd_r2"] == pytest.approx(np.mean(np.sqrt((cdf_gap ** 2).mean(axis=1))))
    assert evaluate.metrics(y_true, y_true)["emd_r1"] == pytest.approx(0, abs=1e-12)


def test_prior_baseline_on_real_ava_labels(tmp_path, capsys):
    out = tmp_path / "m.json"
    r = nima_main(capsys, "evaluate", "--samples-file", REPO / "data/AVA/ava_labels_test.json",
             "--baseline", "prior", "--output-file", out)
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    assert m["n"] == 25551
    assert m["emd_r2"] == pytest.approx(0.0893, abs=5e-4)
    assert m["emd_r1"] == pytest.approx(0.0636, abs=5e-4)
    assert m["accuracy_at_5"] == pytest.approx(0.703, abs=1e-3)
    assert m["srcc_mean"] is None  # a constant prediction has no rank correlation
    assert "EMD (r=2)" in r.stdout


def test_evaluate_model_on_images(tmp_path, tmp_path_factory, capsys):
    """The metrics are those of the model's own scores for each image, paired with that
    image's label (a model whose scores vary, so a mis-paired label would show)."""
    from nima.images import load_image
    from nima.predict import Predictor

    model, _ = shared_scoring_model(tmp_path_factory)
    rows = make_images(tmp_path / "img", 9, size=(40, 56), seed=5)
    (tmp_path / "img" / "img0003.jpg").write_bytes(b"not a jpeg")  # fails to decode
    (tmp_path / "s.json").write_text(json.dumps(rows + [{"image_id": "gone", "label": [1] * 10}]))
    out, pred_file = tmp_path / "m.json", tmp_path / "p.json"
    r = nima_main(capsys, "evaluate", "--samples-file", tmp_path / "s.json", "--image-dir", tmp_path / "img",
             "--weights-file", model, "--output-file", out, "--predictions-file", pred_file,
             "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    assert m["n"] == 8 and m["n_skipped"] == 2

    good = [row for row in rows if row["image_id"] != "img0003"]
    y_true = scores.normalize([row["label"] for row in good])
    y_pred = Predictor.load(model).predict_arrays(
        np.stack([load_image(tmp_path / "img" / f"{row['image_id']}.jpg", 32) for row in good]))
    assert np.ptp(y_pred @ np.arange(1, 11)) > 0.05  # the model tells these images apart
    for key, value in evaluate.metrics(y_true, y_pred).items():
        assert m[key] == pytest.approx(value, abs=1e-5), key
    written = json.loads(pred_file.read_text())
    assert [w["image_id"] for w in written] == [row["image_id"] for row in good]
    np.testing.assert_allclose([w["label"] for w in written], y_true, atol=1e-6)
    np.testing.assert_allclose([w["predictions"] for w in written], y_pred, atol=1e-5)


def test_evaluate_errors_are_one_line(tmp_path, model_file, capsys):
    from nima.cli import main

    rows = make_images(tmp_path / "img", 2)
    (tmp_path / "s.json").write_text(json.dumps(rows))
    (tmp_path / "elsewhere").mkdir()
    base = ["evaluate", "--samples-file", str(tmp_path / "s.json"), "--weights-file",
            str(model_file)]
    for extra, message in ((["--image-dir", str(tmp_path / "elsewhere")], "none of the 2 images"),
                           (["--image-dir", str(tmp_path / "img"), "--batch-size", "0"],
                            "--batch-size must be at least 1")):
        assert main(base + extra) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("nima evaluate: error: ") and message in err[-1], err


def test_undefined_correlations_read_n_a(tmp_path):
    """A constant prediction (the prior baseline) has no correlation: the table, on stdout and
    in report.html, says n/a, as docs/reports.md promises, not nan."""
    from nima import evaluation_report as report

    y_true = np.random.default_rng(0).dirichlet(np.ones(10), size=20)
    y_pred = np.broadcast_to(y_true.mean(axis=0), y_true.shape)
    m = {"model": "baseline:prior", **evaluate.metrics(y_true, y_pred)}
    table = evaluate.format_table(m)
    assert "nan" not in table and table.count("n/a") == 3
    assert evaluate.format_table(evaluate._json_safe(m)) == table  # null from a JSON file
    page = report.write_evaluation_report(tmp_path, [str(i) for i in range(20)], y_true,
                                          y_pred, m).read_text()
    assert "n/a" in page and "nan" not in page
