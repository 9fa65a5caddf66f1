import numpy as np
import pytest
from scipy.stats import wasserstein_distance

import keras

from nima import scores
from nima.config import Config
from nima.errors import ConfigError, ModelError
from nima.model import BASES, EMDLoss, Preprocess, base_of, build_model, load_model


def random_dists(n, seed):
    return np.random.default_rng(seed).dirichlet(np.ones(10), size=n)


def test_emd_loss_r1_equals_scipy_wasserstein():
    p, q = random_dists(32, 0), random_dists(32, 1)
    loss = EMDLoss(r=1.0, reduction=None)(p.astype("float32"), q.astype("float32"))
    bins = np.arange(1, 11)
    # scipy's 1-D Wasserstein-1 over unit-spaced bins is sum |CDF diff|; NIMA's r=1 is the mean.
    expected = [wasserstein_distance(bins, bins, a, b) / 10 for a, b in zip(p, q)]
    np.testing.assert_allclose(np.asarray(loss), expected, rtol=1e-5, atol=1e-7)


def test_emd_loss_r2_per_sample_then_mean():
    p, q = random_dists(16, 2), random_dists(16, 3)
    per_sample = np.sqrt(np.mean((np.cumsum(p, 1) - np.cumsum(q, 1)) ** 2, axis=1))
    np.testing.assert_allclose(np.asarray(EMDLoss(reduction=None)(p, q)), per_sample, rtol=1e-5)
    # Averaging per-sample EMDs is not the EMD of averaged CDFs: the reduction order matters.
    np.testing.assert_allclose(float(EMDLoss()(p, q)), per_sample.mean(), rtol=1e-5)
    np.testing.assert_allclose(scores.emd(p, q), per_sample, rtol=1e-12)
    assert float(EMDLoss()(p, p)) < 1e-5


def test_emd_loss_gradient_finite_at_zero():
    import tensorflow as tf

    y = tf.constant(random_dists(4, 5), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(y)
        loss = EMDLoss()(y, y)
    assert np.all(np.isfinite(tape.gradient(loss, y).numpy()))


def test_mean_and_sd():
    d = np.zeros(10)
    d[[3, 5]] = 0.5  # ratings 4 and 6
    assert scores.mean_score(d) == pytest.approx(5.0)
    assert scores.sd_score(d) == pytest.approx(1.0)


@pytest.mark.parametrize("module, mode", [
    ("mobilenet", "tf"), ("resnet50", "caffe"), ("densenet", "torch"), ("inception_v3", "tf")])
def test_preprocess_layer_matches_keras_preprocess_input(module, mode):
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, module).preprocess_input(x.copy())
    np.testing.assert_allclose(np.asarray(Preprocess(mode)(x)), expected, rtol=1e-5, atol=1e-4)


def test_every_base_family_has_a_keras_constructor():
    for name in BASES:
        assert hasattr(keras.applications, name), name


@pytest.mark.parametrize("name, args", [
    ("MobileNet", {"alpha": 0.25}), ("MobileNetV2", {"alpha": 0.35}),
    ("EfficientNetV2B0", {}), ("MobileNetV3Small", {"minimalistic": True})])
def test_build_model_head_and_freeze(name, args):
    cfg = Config(base_model_name=name, base_model_args=args, base_weights=None, input_size=64,
                 dropout_rate=0.5)
    model = build_model(cfg)
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 10)
    out = model.predict_on_batch(np.zeros((2, 64, 64, 3), "float32"))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    base = base_of(model)
    base.trainable = False
    assert len(model.trainable_weights) == 2  # Dense kernel and bias only


def test_default_input_size_from_base():
    cfg = Config(base_model_name="InceptionV3", base_weights=None, resize_size=None)
    assert build_model(cfg).input_shape[1] == 299


def test_unknown_base_and_bad_args():
    # An unknown base is refused by Config itself (tests/test_config.py), before any model.
    with pytest.raises(ConfigError, match="base_model_name.*MobileNetV9"):
        build_model(Config(base_model_name="MobileNetV9", base_weights=None))
    with pytest.raises(ModelError, match="base_model_args"):
        build_model(Config(base_model_name="MobileNet", base_weights=None, input_size=64,
                           base_model_args={"alphaa": 1}))
    with pytest.raises(ModelError, match="not found"):
        build_model(Config(base_model_name="MobileNet", base_weights="/nope.h5", input_size=64))


def test_imagenet_offline_is_one_clear_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached weights
    cfg = Config(base_model_name="MobileNet", base_model_args={"alpha": 0.25}, input_size=128)
    try:
        build_model(cfg)
    except ModelError as e:
        msg = str(e)
        assert "ImageNet weights" in msg and "base_weights" in msg and "\n" not in msg
    else:
        pytest.skip("this machine can download ImageNet weights; offline path not exercised")


def test_save_load_roundtrip_safe_mode(tmp_path):
    cfg = Config(base_model_name="MobileNet", base_model_args={"alpha": 0.25},
                 base_weights=None, input_size=32)
    model = build_model(cfg)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope.keras")


def test_base_output_layer_pools_a_cut_base_that_trains_saves_and_exports(tmp_path):
    whole = build_model(Config(base_model_name="MobileNetV2", base_weights=None, input_size=64))
    cfg = Config(base_model_name="MobileNetV2", base_weights=None, input_size=64,
                 base_output_layer="block_6_expand_relu", batchnorm_momentum=0.9)
    model = build_model(cfg)
    base = base_of(model)
    assert base.output_shape == (None, 192)  # block_6's expansion: 32 channels x 6
    assert model.count_params() < whole.count_params() / 10
    assert "block_6_depthwise" not in {layer.name for layer in base.layers}
    assert all(layer.momentum == 0.9 for layer in base.layers
               if isinstance(layer, keras.layers.BatchNormalization))
    base.trainable = False
    assert len(model.trainable_weights) == 2  # freezing the cut base leaves the head

    x = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    model.save(tmp_path / "cut.keras")
    again = load_model(tmp_path / "cut.keras")
    assert base_of(again).output_shape == (None, 192)
    np.testing.assert_allclose(again.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)

    from nima.runtime import TFLiteRunner, convert_tflite
    lite = TFLiteRunner(convert_tflite(again), num_threads=1)
    np.testing.assert_allclose(lite(x), model.predict_on_batch(x), atol=1e-4)


def test_unknown_base_output_layer_is_one_line_naming_layer_and_base():
    with pytest.raises(ModelError) as e:
        build_model(Config(base_model_name="MobileNetV2", base_weights=None, input_size=64,
                           base_output_layer="block_6_expand_rel"))
    msg = str(e.value)
    assert "'block_6_expand_rel'" in msg and "MobileNetV2" in msg and "\n" not in msg
    assert "did you mean 'block_6_expand_relu'" in msg
