"""`nima export`: every format against the Keras model, on real photos and generated images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scoring_model import shared_scoring_model

tf = pytest.importorskip("tensorflow")

from nima import cli, export, images, tfimages  # noqa: E402
from nima.predict import Predictor  # noqa: E402
from nima.results import result_fields  # noqa: E402

FP32_TOLERANCE = 1e-4
RATINGS = np.arange(1, 11)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model_path, paths = shared_scoring_model(tmp_path_factory)
    predictor = Predictor.load(model_path)
    pixels = np.stack([images.load_image(p, predictor.input_size) for p in paths])
    expected = predictor.predict_arrays(pixels)
    # The test model must tell images apart, or "parity" would hold trivially.
    assert np.ptp(expected @ RATINGS) > 0.5
    return predictor, paths, pixels.astype(np.float32), expected


@pytest.fixture(scope="module")
def savedmodel(setup, tmp_path_factory):
    predictor, *_ = setup
    out = tmp_path_factory.mktemp("export") / "nima" / "1"
    assert export.export(predictor.model, "savedmodel", out) == out
    return out, tf.saved_model.load(str(out))


def assert_outputs_match(outputs: dict, expected: np.ndarray, tol: float) -> None:
    fields = [result_fields(d) for d in expected]
    np.testing.assert_allclose(np.asarray(outputs["predictions"]), expected, atol=tol, rtol=0)
    for name in ("mean_score_prediction", "sd_score_prediction"):
        np.testing.assert_allclose(np.asarray(outputs[name]), [f[name] for f in fields],
                                   atol=10 * tol, rtol=0)


def tflite_outputs(data: bytes, pixels: np.ndarray) -> dict:
    interpreter = tf.lite.Interpreter(model_content=data)
    assert interpreter.get_signature_list() == {"serving_default": {
        "inputs": ["images"], "outputs": sorted(export.OUTPUTS)}}
    run = interpreter.get_signature_runner("serving_default")
    outs = [run(images=pixels[i:i + 1]) for i in range(len(pixels))]
    return {k: np.concatenate([o[k] for o in outs]) for k in export.OUTPUTS}


def mean_score_error(outputs: dict, expected: np.ndarray) -> float:
    return float(np.mean(np.abs(outputs["predictions"] @ RATINGS - expected @ RATINGS)))


# --- SavedModel -------------------------------------------------------------------------------

def test_savedmodel_signatures_for_tf_serving(savedmodel, setup):
    path, loaded = savedmodel
    size = setup[0].input_size
    sigs = loaded.signatures
    assert set(sigs) == {"serving_default", "serving_float"}
    args, kwargs = sigs["serving_default"].structured_input_signature
    assert args == () and list(kwargs) == ["image_bytes"]
    assert kwargs["image_bytes"].dtype == tf.string and kwargs["image_bytes"].shape.as_list() == [None]
    spec = sigs["serving_float"].structured_input_signature[1]["images"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, size, size, 3]
    for sig in sigs.values():
        assert set(sig.structured_outputs) == set(export.OUTPUTS)
    # The tool TF Serving users check a model with sees the same signatures.
    cli_bin = Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run([str(cli_bin), "show", "--dir", str(path), "--all"],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert shown.returncode == 0, shown.stderr[-2000:]
    for needle in ("signature_def['serving_default']", "signature_def['serving_float']",
                   "inputs['image_bytes'] tensor_info:", "dtype: DT_STRING",
                   "outputs['mean_score_prediction']"):
        assert needle in shown.stdout


def test_savedmodel_is_self_contained(savedmodel, setup):
    """TF Serving has no Python and no nima: a fresh process with TensorFlow alone gets the
    same scores from the files as this process does."""
    path, loaded = savedmodel
    images_ = [str(p) for p in setup[1][:3]]
    code = ("import json, sys, tensorflow as tf\n"
            "m = tf.saved_model.load(sys.argv[1])\n"
            "data = [open(p, 'rb').read() for p in sys.argv[2:]]\n"
            "out = m.signatures['serving_default'](image_bytes=tf.constant(data))\n"
            "assert not any(k == 'nima' or k.startswith('nima.') for k in sys.modules)\n"
            "print(json.dumps(out['mean_score_prediction'].numpy().tolist()))\n")
    run = subprocess.run([sys.executable, "-c", code, str(path), *images_], cwd=path.parent,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stderr[-2000:]
    here = loaded.signatures["serving_default"](
        image_bytes=tf.constant([Path(p).read_bytes() for p in images_]))
    np.testing.assert_allclose(json.loads(run.stdout.strip().splitlines()[-1]),
                               here["mean_score_prediction"].numpy(), atol=1e-5)


def test_savedmodel_float_signature_matches_keras(savedmodel, setup):
    _, loaded = savedmodel
    _, _, pixels, expected = setup
    out = loaded.signatures["serving_float"](images=tf.constant(pixels))
    assert_outputs_match({k: v.numpy() for k, v in out.items()}, expected, FP32_TOLERANCE)


def test_graph_decoder_matches_pillow_path(setup):
    """decode_image gives exactly images.load_image's pixels: JPEG draft scales, PNG, alpha on
    white, grayscale, GIF, EXIF rotation, small images upscaled."""
    predictor, paths, pixels, _ = setup
    for path, pil in zip(paths, pixels):
        tfpix = tfimages.decode_image(tf.constant(path.read_bytes()), predictor.input_size)
        np.testing.assert_array_equal(tfpix.numpy(), pil, err_msg=path.name)


@pytest.mark.parametrize("size", [32, 224])
def test_graph_resize_and_exif_match_pillow_on_any_shape(size, tmp_path):
    """Pillow's resize (two fixed-point passes, order chosen by shape) and every EXIF
    orientation, on portrait, landscape, square, down- and upscaled images."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photo = Image.fromarray(load_sample_images().images[1])
    rng = np.random.default_rng(size)
    shapes = [(int(w), int(h)) for w, h in rng.integers(size // 2, 3 * size, (12, 2))]
    for i, (w, h) in enumerate(shapes + [(size, size), (size, 3 * size), (40, 50)]):
        exif = Image.Exif()
        exif[0x0112] = i % 8 + 1
        path = tmp_path / f"{i}.jpg"
        photo.resize((w, h)).save(path, quality=90, exif=exif)
        tfpix = tfimages.decode_image(tf.constant(path.read_bytes()), size).numpy()
        np.testing.assert_array_equal(tfpix, images.load_image(path, size),
                                      err_msg=f"{w}x{h} orientation {i % 8 + 1}")


def test_savedmodel_bytes_signature_is_decoder_plus_model(savedmodel, setup):
    _, loaded = savedmodel
    predictor, paths, _, expected = setup
    size = predictor.input_size
    data = [p.read_bytes() for p in paths]
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(data))
    decoded = np.stack([tfimages.decode_image(tf.constant(d), size).numpy() for d in data])
    assert_outputs_match({k: v.numpy() for k, v in out.items()},
                         predictor.predict_arrays(decoded), FP32_TOLERANCE)
    # The decoder reproduces the Pillow path's pixels, so files score as `nima predict` does.
    assert_outputs_match({k: v.numpy() for k, v in out.items()}, expected, FP32_TOLERANCE)
    # An undecodable file fails the request (TF Serving answers with an error), as documented.
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_default"](image_bytes=tf.constant([data[0], b"not an image"]))


# --- TFLite -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tflite_fp32(setup) -> bytes:
    return export.tflite_bytes(setup[0].model)


def test_tflite_fp32_matches_keras(setup, tflite_fp32):
    _, _, pixels, expected = setup
    assert_outputs_match(tflite_outputs(tflite_fp32, pixels), expected, FP32_TOLERANCE)


def test_tflite_quantized_bounds(setup, tflite_fp32, tmp_path):
    """fp16 is close; int8 costs at most about as much as +-1 level of pixel noise does."""
    predictor, paths, pixels, expected = setup
    noise = np.random.default_rng(0).integers(-1, 2, pixels.shape)
    noisy = predictor.predict_arrays(np.clip(pixels + noise, 0, 255))
    noise_error = mean_score_error({"predictions": noisy}, expected)

    fp16_file = tmp_path / "fp16.tflite"
    model_file = predictor.info["model"]
    assert cli.main(["export", "--weights-file", model_file, "--format", "tflite",
                     "--quantize", "fp16", "--output", str(fp16_file)]) == 0
    fp16 = tflite_outputs(fp16_file.read_bytes(), pixels)
    assert_outputs_match(fp16, expected, 0.03)
    assert mean_score_error(fp16, expected) < 0.05

    dynamic = tflite_outputs(export.tflite_bytes(predictor.model, "int8"), pixels)
    rep_dir = paths[0].parent  # calibrate on the same folder (the CLI's --representative-images)
    full = tflite_outputs(export.tflite_bytes(
        predictor.model, "int8", export.representative_images(rep_dir, predictor.input_size)),
        pixels)
    errors = {name: mean_score_error(out, expected)
              for name, out in (("int8", dynamic), ("int8-full", full))}
    print(f"mean |d mean score|: +-1 pixel noise {noise_error:.3f}, fp16 "
          f"{mean_score_error(fp16, expected):.4f}, {errors}")
    for name, err in errors.items():
        assert err <= 2 * noise_error, (name, err, noise_error)
        assert err > 0  # really quantized
    assert fp16_file.stat().st_size < 0.6 * len(tflite_fp32)


# --- ONNX -------------------------------------------------------------------------------------

def test_onnx_matches_keras_with_any_batch(setup, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    predictor, _, pixels, expected = setup
    out = export.export(predictor.model, "onnx", tmp_path / "nima.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].shape[1:] == [predictor.input_size] * 2 + [3]
    names = list(export.OUTPUTS)
    batch = dict(zip(names, session.run(names, {"images": pixels})))
    assert_outputs_match(batch, expected, FP32_TOLERANCE)
    single = session.run(names, {"images": pixels[:1]})
    np.testing.assert_allclose(single[0], expected[:1], atol=FP32_TOLERANCE, rtol=0)

    quantized = export.export(predictor.model, "onnx", tmp_path / "int8.onnx", "int8")
    assert quantized.stat().st_size < 0.5 * out.stat().st_size
    session = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    int8 = dict(zip(names, session.run(names, {"images": pixels})))
    noise = np.random.default_rng(0).integers(-1, 2, pixels.shape)
    noise_error = mean_score_error(
        {"predictions": predictor.predict_arrays(np.clip(pixels + noise, 0, 255))}, expected)
    print(f"onnx int8: mean |d mean score| {mean_score_error(int8, expected):.3f} "
          f"(+-1 pixel noise {noise_error:.3f})")
    assert 0 < mean_score_error(int8, expected) <= 2 * noise_error


# --- CLI errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--format", "savedmodel", "--quantize", "int8"], "not savedmodel"),
    (["--format", "onnx", "--quantize", "fp16"], "int8 only"),
    (["--format", "tflite", "--quantize", "fp16", "--representative-images", "x"],
     "needs --quantize int8"),
    (["--format", "tflite", "--quantize", "int8", "--representative-images", "/nonexistent"],
     "representative images not found"),
])
def test_cli_rejects_bad_options_before_loading(args, message, tmp_path, capsys):
    code = cli.main(["export", "--weights-file", str(tmp_path / "missing.keras"),
                     "--output", str(tmp_path / "out"), *args])
    assert code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx", "--quantize", "int8", "--representative-images", "."],
     "applies to tflite only"),
    (["--format", "savedmodel", "--output", "{full}"], "already exists"),
    (["--format", "tflite", "--output", "{full}"], "is a directory"),
])
def test_cli_rejects_options_and_outputs_before_loading(args, message, tmp_path, capsys):
    """Refused before the model is loaded: the model path does not even exist."""
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "saved_model.pb").write_bytes(b"serving")
    args = [a.format(full=tmp_path / "full") for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out.onnx")]
    code = cli.main(["export", "--weights-file", str(tmp_path / "missing.keras"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("nima export: error: ") and message in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["full"]
    assert (tmp_path / "full" / "saved_model.pb").read_bytes() == b"serving"


def test_cli_refuses_to_overwrite_a_savedmodel(setup, savedmodel, capsys):
    path, _ = savedmodel
    before = sorted(p.name for p in path.iterdir())
    code = cli.main(["export", "--weights-file", setup[0].info["model"], "--format",
                     "savedmodel", "--output", str(path)])
    assert code == 1
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in path.iterdir()) == before
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_cli_missing_model_is_one_line(tmp_path, capsys):
    code = cli.main(["export", "--weights-file", str(tmp_path / "nope.keras"), "--format",
                     "onnx", "--output", str(tmp_path / "m.onnx")])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("nima export: error: model not found") and "\n" not in err
