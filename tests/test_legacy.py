"""Keras 2 NIMA weights (idealo's layout) read into this toolkit's model.

The files are written the way idealo's image-quality-assessment builds and saves its model: a
flat keras.applications base with pooling="avg", Dropout, Dense(10, softmax), preprocessing
outside the model, saved by Keras' own writer of the Keras 2 HDF5 layout. The imported model
must give that network's outputs on the same pixels.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format  # Keras' writer of the Keras 2 layout

from conftest import make_images

from nima import images, legacy
from nima.config import Config
from nima.errors import ModelError
from nima.model import load_model

ALPHA, SIZE = 0.25, 96


def idealo_model(alpha: float = ALPHA, size: int = SIZE, seed: int = 0) -> keras.Model:
    """idealo's Nima.build(), with random weights whose outputs depend on the image."""
    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNet(input_shape=(size, size, 3), alpha=alpha, weights=None,
                                        include_top=False, pooling="avg")
    x = keras.layers.Dropout(0.75)(base.output)
    x = keras.layers.Dense(units=10, activation="softmax")(x)
    model = keras.Model(base.input, x)
    # A random-init base with BatchNorm's initial statistics gives every image the same
    # features; statistics of a random batch (momentum 0, one training-mode pass) do not.
    rng = np.random.default_rng(seed)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        gamma, beta, mean, var = layer.get_weights()
        layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.uniform(-0.2, 0.4, beta.shape),
                           mean, var])
        layer.momentum = 0.0
    pixels = rng.integers(0, 256, (16, size, size, 3)).astype(np.float32)
    pixels[:8] *= 0.3
    model(keras.applications.mobilenet.preprocess_input(pixels), training=True)
    for layer in norms:
        layer.momentum = 0.99
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([rng.normal(0, 0.3, kernel.shape), rng.normal(0, 0.3, bias.shape)])
    return model


def save_keras2_weights(model: keras.Model, path: Path) -> Path:
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
        # tf.keras 2 stored the name lists as byte strings (Keras 3's writer: str).
        for group in [f, *(f[name] for name in f)]:
            for key, value in list(group.attrs.items()):
                if key.startswith(("layer_names", "weight_names")):
                    group.attrs[key] = np.asarray([str(v).encode("utf8") for v in value])
    return path


def idealo_scores(model: keras.Model, pixels: np.ndarray) -> np.ndarray:
    x = keras.applications.mobilenet.preprocess_input(pixels.astype(np.float32))
    return np.asarray(model.predict(x, verbose=0), np.float64)


@pytest.fixture(scope="module")
def keras2_file(tmp_path_factory) -> tuple[Path, keras.Model, Path]:
    d = tmp_path_factory.mktemp("keras2")
    model = idealo_model()
    weights = save_keras2_weights(model, d / "weights_mobilenet_technical_0.11.hdf5")
    config = d / "config.json"
    config.write_text(json.dumps({"base_model_name": "MobileNet", "input_size": SIZE,
                                  "base_model_args": {"alpha": ALPHA}}))
    return weights, model, config


def run_nima(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nima", *args], capture_output=True, text=True,
                          timeout=300)


def nima_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """`nima ARGS` through cli.main in this process: the same exit code and output without
    a new Python importing TensorFlow (about 5 s a call); one test runs the real command."""
    from nima.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def test_file_has_the_keras2_layout(keras2_file):
    weights, model, _ = keras2_file
    with h5py.File(weights) as f:
        names = [n.decode() for n in f.attrs["layer_names"]]  # bytes, as tf.keras 2 wrote
    assert names[0] == model.layers[0].name and names[-1] == model.layers[-1].name
    assert legacy.is_keras2_weights(weights)
    layers = legacy.read_layers(weights)
    assert [n for n, _ in layers] == [layer.name for layer in model.layers if layer.weights]


def test_name_lists_split_over_several_attributes(tmp_path):
    # Keras splits a name list over name0, name1, ... when it exceeds HDF5's header limit.
    path = tmp_path / "chunked.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names0"] = np.asarray([b"a", b"b"])
        f.attrs["layer_names1"] = np.asarray([b"c"])
        for name, n in (("a", 1), ("b", 0), ("c", 2)):
            g = f.create_group(name)
            g.attrs["weight_names"] = np.asarray([f"{name}/w{k}".encode() for k in range(n)])
            for k in range(n):
                g.create_dataset(f"{name}/w{k}", data=np.full((2,), k))
    assert legacy.is_keras2_weights(path)
    layers = legacy.read_layers(path)
    assert [n for n, _ in layers] == ["a", "c"]  # b has no weights
    assert [a.tolist() for a in layers[1][1]] == [[0, 0], [1, 1]]


def test_import_gives_the_original_networks_scores(keras2_file, tmp_path):
    weights, model, config = keras2_file
    out = tmp_path / "imported.keras"
    r = run_nima("import-keras2", "--weights-file", str(weights), "--config-file", str(config),
                 "--output-file", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(out)
    pixels = np.random.default_rng(1).integers(0, 256, (6, SIZE, SIZE, 3)).astype(np.float32)
    expected = idealo_scores(model, pixels)
    got = np.asarray(load_model(out).predict(pixels, verbose=0), np.float64)
    assert np.abs(expected - expected.mean(0)).max() > 1e-3  # the images score differently
    np.testing.assert_allclose(got, expected, atol=5e-5)


def test_predict_reads_keras2_weights_directly(keras2_file, tmp_path, capsys):
    weights, model, config = keras2_file
    folder = tmp_path / "photos"
    make_images(folder, 5, size=(120, 160))
    out = tmp_path / "scores.json"
    r = nima_main(capsys, "predict", "--weights-file", str(weights), "--config-file", str(config),
                 "--image-source", str(folder), "--predictions-file", str(out),
                 "--backend", "keras")
    assert r.returncode == 0, r.stderr[-2000:]
    results = {x["image"]: x for x in json.loads(out.read_text())}
    assert len(results) == 5
    for name, result in results.items():
        # Keras 2 models are scored on the pixels they learned from: load_img's NEAREST.
        pixels = images.load_image(folder / name, SIZE, "nearest")[None]
        expected = idealo_scores(model, pixels)[0]
        np.testing.assert_allclose(result["predictions"], expected, atol=5e-5)
        assert result["mean_score_prediction"] == pytest.approx(
            float(np.dot(expected, np.arange(1, 11))), abs=5e-4)


def test_default_mobilenet_by_name(tmp_path, capsys):
    """`--base-model-name MobileNet`: idealo's released shape (alpha 1.0, 224 px)."""
    model = idealo_model(alpha=1.0, size=224, seed=2)
    weights = save_keras2_weights(model, tmp_path / "weights_mobilenet_aesthetic_0.07.hdf5")
    out = tmp_path / "aesthetic.keras"
    r = nima_main(capsys, "import-keras2", "--weights-file", str(weights), "--base-model-name",
                 "MobileNet", "--output-file", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    pixels = np.random.default_rng(3).integers(0, 256, (2, 224, 224, 3)).astype(np.float32)
    got = np.asarray(load_model(out).predict(pixels, verbose=0), np.float64)
    np.testing.assert_allclose(got, idealo_scores(model, pixels), atol=5e-5)


def test_wrong_base_is_one_clear_error(keras2_file, tmp_path, capsys):
    weights, _, _ = keras2_file
    config = tmp_path / "half.json"
    config.write_text(json.dumps({"base_model_name": "MobileNet", "input_size": SIZE,
                                  "base_model_args": {"alpha": 0.5}}))
    r = nima_main(capsys, "import-keras2", "--weights-file", str(weights), "--config-file", str(config),
                 "--output-file", str(tmp_path / "x.keras"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"nima import-keras2: error: {weights} does not fit MobileNet {{'alpha': 0.5}}: layer "
        "'conv1' has weights of shapes [(3, 3, 3, 8)], the model's 'conv1' [(3, 3, 3, 16)]")
    assert not (tmp_path / "x.keras").exists()
    r = nima_main(capsys, "import-keras2", "--weights-file", str(weights), "--base-model-name",
                 "MobileNetV2", "--output-file", str(tmp_path / "x.keras"))
    assert r.returncode == 1 and "does not fit MobileNetV2: it has 55 layers with weights, the model 105" \
        in r.stderr, r.stderr[-1000:]


def test_not_keras2_files_are_refused(tmp_path, keras2_file):
    _, model, _ = keras2_file
    keras3 = tmp_path / "model.weights.h5"
    model.save_weights(keras3)  # Keras 3's own layout
    text = tmp_path / "notes.hdf5"
    text.write_text("not HDF5")
    assert not legacy.is_keras2_weights(keras3) and not legacy.is_keras2_weights(text)
    with pytest.raises(ModelError, match="is not a Keras 2 HDF5 weights file"):
        legacy.read_layers(keras3)
    with pytest.raises(ModelError, match="cannot read .*notes.hdf5 as HDF5"):
        legacy.read_layers(text)
    with pytest.raises(ModelError, match="weights file not found"):
        legacy.load_keras2_weights(tmp_path / "missing.hdf5", Config(base_model_name="MobileNet"))
