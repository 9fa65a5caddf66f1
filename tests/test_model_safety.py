"""Loading a model file never runs code from it (Keras safe mode), and says so in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import pytest

from conftest import make_images
from nima.errors import ModelError
from nima.model import load_model

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _tiny(middle=None) -> keras.Model:
    inputs = keras.Input((32, 32, 3))
    x = middle(inputs) if middle else inputs
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    """A .keras file whose Lambda layer creates `marker` when its code runs."""
    d = tmp_path_factory.mktemp("evil")
    marker = d / "CODE_RAN"
    code = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).touch(), t)[1]")
    _tiny(keras.layers.Lambda(code)).save(d / "evil.keras")
    assert marker.exists()  # the payload works: building the model ran it
    marker.unlink()
    return d / "evil.keras", marker


def test_lambda_model_refused(evil):
    path, marker = evil
    with pytest.raises(ModelError, match="contains Python code .* refused") as e:
        load_model(path)
    assert "\n" not in str(e.value) and not marker.exists()


def test_lambda_model_refused_by_cli(evil, tmp_path):
    path, marker = evil
    make_images(tmp_path / "images", 2)
    r = subprocess.run([sys.executable, "-m", "nima", "predict", "--image-source",
                        str(tmp_path / "images"), "--model", str(path)],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 1 and r.stdout == ""
    assert f"nima predict: error: model {path} contains Python code" in r.stderr
    assert "Traceback" not in r.stderr and not marker.exists()


def _rewrite(src: Path, dst: Path, edit) -> None:
    with zipfile.ZipFile(src) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(parts["config.json"])
    edit(cfg)
    parts["config.json"] = json.dumps(cfg).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)


def test_functions_from_other_modules_refused(tmp_path):
    """A config naming os.system as an activation must not resolve it."""
    _tiny().save(tmp_path / "ok.keras")
    load_model(tmp_path / "ok.keras")

    def edit(cfg):
        dense = [la for la in cfg["config"]["layers"] if la["class_name"] == "Dense"][0]
        dense["config"]["activation"] = {"module": "os", "class_name": "function",
                                         "config": "system", "registered_name": "system"}

    _rewrite(tmp_path / "ok.keras", tmp_path / "mod.keras", edit)
    with pytest.raises(ModelError, match="Could not locate function 'system'"):
        load_model(tmp_path / "mod.keras")


def test_damaged_model_files(tmp_path):
    _tiny().save(tmp_path / "ok.keras")
    data = (tmp_path / "ok.keras").read_bytes()
    for name, content in (("empty.keras", b""), ("half.keras", data[: len(data) // 2]),
                          ("text.keras", b"not a zip\n")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelError, match=f"cannot load model .*{name}"):
            load_model(tmp_path / name)
    with pytest.raises(ModelError, match="model file not found"):
        load_model(tmp_path / "missing.keras")
