import json

import pytest

from nima.config import Config
from nima.errors import ConfigError

from conftest import REPO


def test_all_shipped_configs_load():
    configs = sorted(REPO.glob("models/*/config_*.json"))
    assert len(configs) >= 16  # 4 bases x {aesthetic, technical} x {cpu, gpu}
    for path in configs:
        cfg = Config.load(path)
        task, device = path.stem.split("_")[1:]
        assert cfg.task == task, path
        assert cfg.base_model_name == path.parent.name, path
        if device == "cpu":
            assert cfg.batch_size <= 32, path


def test_mobilenet_aesthetic_gpu_follows_nima_recipe():
    cfg = Config.load(REPO / "models/MobileNet/config_aesthetic_gpu.json")
    assert (cfg.batch_size, cfg.epochs_train_dense, cfg.learning_rate_dense) == (96, 5, 1e-3)
    assert (cfg.epochs_train_all, cfg.learning_rate_all) == (9, 3e-5)
    assert cfg.decay_all > 0 and cfg.dropout_rate == 0.75


def test_defaults_and_roundtrip(tmp_path):
    cfg = Config.from_dict({"base_model_name": "MobileNet"})
    assert cfg.emd_r == 2.0 and cfg.validation_fraction == 0.05
    cfg.save(tmp_path / "c.json")
    assert Config.load(tmp_path / "c.json") == cfg


@pytest.mark.parametrize("data, key", [
    ({"base_model_name": "MobileNet", "learning_rate_dens": 0.1}, "learning_rate_dens"),
    ({"base_model_name": "MobileNet", "batch_size": "32"}, "batch_size"),
    ({"base_model_name": "MobileNet", "batch_size": 0}, "batch_size"),
    ({"base_model_name": "MobileNet", "batch_size": 3.5}, "batch_size"),
    ({"base_model_name": "MobileNet", "dropout_rate": 1.0}, "dropout_rate"),
    ({"base_model_name": "MobileNet", "random_crop": 1}, "random_crop"),
    ({"base_model_name": "MobileNet", "distribution": "magic"}, "distribution"),
    ({"base_model_name": "MobileNet", "input_size": 224, "resize_size": 200}, "resize_size"),
    ({"base_model_name": "MobileNet", "base_model_args": {"weights": None}}, "base_model_args"),
    ({"base_model_name": 5}, "base_model_name"),
    ({}, "base_model_name"),
    ({"base_model_name": "MobileNetV9"}, "base_model_name"),
    ({"base_model_name": " MobileNet"}, "base_model_name"),
    ({"base_model_name": "MobileNet", "base_output_layer": ""}, "base_output_layer"),
    ({"base_model_name": "MobileNet", "base_output_layer": 12}, "base_output_layer"),
])
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key):
        Config.from_dict(data)


def test_learning_rate_accepts_json_integers():
    assert Config.from_dict({"base_model_name": "MobileNet", "learning_rate_all": 1}).learning_rate_all == 1


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Config.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"base_model_name": "MobileNet",\n "batch_size": }')
    with pytest.raises(ConfigError, match="line 2"):
        Config.load(bad)
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        Config.load(arr)


def test_unknown_base_model_is_refused_on_load_with_the_choices(tmp_path):
    # Before this check, a typo in base_model_name failed only after the job dir was made
    # and every image probed (minutes on AVA).
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"base_model_name": "MobileNetv2"}))
    with pytest.raises(ConfigError, match=r"key 'base_model_name' must be one of .*MobileNetV2"
                                          r".*got \"MobileNetv2\""):
        Config.load(path)


@pytest.mark.parametrize("name, default", [("InceptionV3", 299), ("NASNetLarge", 331),
                                           ("EfficientNetB7", 600)])
def test_default_resize_below_the_bases_default_input_is_refused(name, default):
    # resize_size defaults to 256; with input_size null the network takes `default` pixels,
    # which the random crop cannot cut from 256 (it used to fail mid-epoch in TensorFlow).
    with pytest.raises(ConfigError, match=f"'resize_size' must be at least the input size of "
                                          f"{name} \\({default};"):
        Config.from_dict({"base_model_name": name})
    cfg = Config.from_dict({"base_model_name": name, "resize_size": default + 32})
    assert cfg.model_input_size == default
    assert Config.from_dict({"base_model_name": name, "resize_size": None}).model_input_size \
        == default
    assert Config.from_dict({"base_model_name": name, "input_size": 224}).model_input_size == 224
    # without random crops resize_size is unused: such configs trained fine and still load
    assert Config.from_dict({"base_model_name": name, "random_crop": False}).resize_size == 256


def test_an_idealo_config_says_what_replaces_its_keys(tmp_path):
    # idealo's models/MobileNet/config_technical_cpu.json, as users bring it along
    idealo = {"train_env": "TID2013", "docker_image": "nima-cpu", "base_model_name": "MobileNet",
              "existing_weights": None, "n_classes": 10, "batch_size": 8,
              "epochs_train_dense": 1, "learning_rate_dense": 0.001, "decay_dense": 0,
              "epochs_train_all": 5, "learning_rate_all": 0.0000003, "decay_all": 0,
              "dropout_rate": 0.75, "multiprocessing_data_load": False,
              "num_workers_data_load": 10, "img_format": "bmp"}
    path = tmp_path / "config_technical_cpu.json"
    path.write_text(json.dumps(idealo))
    with pytest.raises(ConfigError, match=r"key 'docker_image' belongs to idealo's "
                       r"image-quality-assessment config: remove it .*docs/migrating.md"):
        Config.load(path)
    for key in ("docker_image", "train_env", "n_classes", "multiprocessing_data_load",
                "num_workers_data_load", "img_format"):
        idealo.pop(key)
    with pytest.raises(ConfigError, match="'existing_weights' .* nima train --init-model"):
        Config.from_dict(idealo)
    idealo.pop("existing_weights")
    cfg = Config.from_dict(idealo)  # the rest means the same here
    assert (cfg.epochs_train_all, cfg.learning_rate_all, cfg.dropout_rate) == (5, 3e-7, 0.75)
