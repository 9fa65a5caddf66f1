"""A tiny NIMA model whose scores actually vary between images, for parity tests.

A randomly initialised MobileNet's activations shrink layer by layer until every image gets
the uniform distribution (0.1 per bin), which would make any export "match" trivially. Setting
each BatchNormalization's moving statistics from a batch of real images (data-dependent
initialisation) keeps activations near unit scale, so outputs differ per image and an export
that mishandles pixels, preprocessing or weights shows up as a large difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import tiny_config



def build_scoring_model(directory: Path, calibration: np.ndarray, input_size: int = 32) -> Path:
    """Build, calibrate and save a tiny model; returns the `.keras` path (config beside it)."""
    import keras

    from nima.config import Config
    from nima.model import base_of, build_model

    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "config.json"
    config_file.write_text(json.dumps(tiny_config(input_size=input_size,
                                                  resize_size=input_size + input_size // 4)))
    keras.utils.set_random_seed(0)  # the same model, and so the same measurements, every run
    model = build_model(Config.load(config_file))
    x = model.get_layer("preprocess")(np.asarray(calibration, np.float32))
    for layer in base_of(model).layers[1:]:  # MobileNet v1 is a plain chain of layers
        if isinstance(layer, keras.layers.BatchNormalization):
            axes = tuple(range(len(x.shape) - 1))
            # Scale only, no centring (centring on the batch mean blows the tiny differences
            # between images up to unit scale), and no more gain for a near-dead channel than
            # for a typical one: both make the random net chaotic.
            power = np.mean(np.square(x), axis=axes)
            layer.moving_variance.assign(power + np.mean(power) + 1e-6)
        x = layer(x, training=False)
    head = model.get_layer("scores")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 2.0, bias])
    path = directory / "model.keras"
    model.save(path)
    return path


def write_test_images(directory: Path) -> list[Path]:
    """Real photos (scikit-learn's two sample images) as JPEG and PNG, plus harder cases:
    RGBA PNG, grayscale JPEG, GIF, EXIF-rotated JPEG and small generated JPEGs (upscaled)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from conftest import make_images

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, pixels in zip(("china", "flower"), load_sample_images().images):
        img = Image.fromarray(pixels)
        for ext in ("jpg", "png"):
            img.save(directory / f"{name}.{ext}", quality=90)
            paths.append(directory / f"{name}.{ext}")
        small = img.resize((160, 107))
        rgba = small.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(small.size))
        rgba.save(directory / f"{name}_alpha.png")
        small.convert("L").save(directory / f"{name}_gray.jpg", quality=85)
        small.save(directory / f"{name}.gif")
        paths += [directory / f"{name}_alpha.png", directory / f"{name}_gray.jpg",
                  directory / f"{name}.gif"]
        # A phone-style portrait photo: stored landscape, EXIF says "rotate 90 clockwise".
        exif = Image.Exif()
        exif[0x0112] = 6
        small.save(directory / f"{name}_exif6.jpg", quality=90, exif=exif)
        paths.append(directory / f"{name}_exif6.jpg")
    make_images(directory / "generated", 4, size=(24, 30))
    return paths + sorted((directory / "generated").glob("*.jpg"))


_CACHE: dict[str, tuple[Path, list[Path]]] = {}


def shared_scoring_model(tmp_path_factory) -> tuple[Path, list[Path]]:
    """(model.keras, image paths), built once per test session for every test file."""
    if "model" not in _CACHE:
        from nima import images

        root = tmp_path_factory.mktemp("scoring_model")
        paths = write_test_images(root / "images")
        calibration = np.stack([images.load_image(p, 32) for p in paths])
        _CACHE["model"] = build_scoring_model(root / "model", calibration), paths
    return _CACHE["model"]
