"""`nima calibrate` (precise BN): moving statistics become the batch statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import tiny_config
from nima.calibrate import batchnorm_layers, recalibrate_batchnorm
from nima.config import Config
from nima.model import base_of, build_model, load_model


def test_one_batch_makes_inference_equal_training_mode():
    model = build_model(Config.from_dict(tiny_config(dropout_rate=0.0)))
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
    # Fresh moving statistics (0 and 1) are far from these batch statistics.
    assert not np.allclose(model(x, training=False), model(x, training=True), atol=1e-4)
    momentum = [bn.momentum for bn in batchnorm_layers(model)]
    assert recalibrate_batchnorm(model, [x]) == 1
    np.testing.assert_allclose(model(x, training=False), model(x, training=True), atol=1e-4)
    assert [bn.momentum for bn in batchnorm_layers(model)] == momentum  # restored


def test_several_batches_give_the_plain_mean_of_their_statistics():
    """Each batch counts equally (not an exponential average dominated by the last one), and
    the flags that freeze the base during phase 1 are put back."""
    model = build_model(Config.from_dict(tiny_config(dropout_rate=0.0)))
    initial = model.get_weights()
    rng = np.random.default_rng(1)
    batches = [rng.uniform(lo, hi, (8, 32, 32, 3)).astype(np.float32)
               for lo, hi in ((0, 80), (60, 255), (120, 200))]
    base = base_of(model)
    base.trainable = False
    flags = [bn.trainable for bn in batchnorm_layers(model)]

    def stats(used):
        model.set_weights(initial)
        assert recalibrate_batchnorm(model, used) == len([b for b in used if len(b) >= 2])
        return [(bn.moving_mean.numpy(), bn.moving_variance.numpy())
                for bn in batchnorm_layers(model)]

    alone = [stats([b]) for b in batches]
    together = stats([batches[0], batches[1][:1], batches[1], batches[2]])  # 1 image: skipped
    for k, (mean, var) in enumerate(together):
        np.testing.assert_allclose(mean, np.mean([a[k][0] for a in alone], axis=0),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(var, np.mean([a[k][1] for a in alone], axis=0),
                                   rtol=1e-4, atol=1e-5)
    assert not np.allclose(alone[0][0][0], alone[1][0][0])  # the batches really differ
    assert base.trainable is False
    assert [bn.trainable for bn in batchnorm_layers(model)] == flags
    assert len(model.trainable_weights) == 2  # still only the head, as before


def test_cli_calibrates_a_saved_model(dataset, tmp_path: Path, capsys):
    from nima.cli import main

    samples, image_dir, config = dataset
    model = build_model(Config.load(config))
    model.save(tmp_path / "in.keras")
    out = tmp_path / "out.keras"
    code = main(["calibrate", "--model", str(tmp_path / "in.keras"), "--samples-file",
                 str(samples), "--image-dir", str(image_dir), "--output-file", str(out),
                 "--batches", "2", "--batch-size", "8"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "from 2 batches" in captured.out
    before = batchnorm_layers(load_model(tmp_path / "in.keras"))[0]
    after = batchnorm_layers(load_model(out))[0]
    assert np.allclose(before.moving_variance.numpy(), 1.0)
    assert not np.allclose(after.moving_variance.numpy(), 1.0)


def test_broken_images_and_a_wrong_suffix_are_handled(dataset, tmp_path: Path, capsys):
    """Batches that lose every image to decoding errors are skipped (an empty batch crashed
    Keras); a non-.keras output name is refused before anything is written."""
    import json

    from nima.cli import main

    samples, image_dir, config = dataset
    rows = json.loads(samples.read_text())
    for i in range(6):
        (image_dir / f"bad{i}.jpg").write_text("not a jpeg")
    bad_first = [{"image_id": f"bad{i}", "label": [1] * 10} for i in range(6)] + rows
    (tmp_path / "s.json").write_text(json.dumps(bad_first))
    build_model(Config.load(config)).save(tmp_path / "in.keras")
    args = ["calibrate", "--model", str(tmp_path / "in.keras"), "--samples-file",
            str(tmp_path / "s.json"), "--image-dir", str(image_dir), "--batch-size", "2"]
    assert main([*args, "--output-file", str(tmp_path / "out.h5")]) == 1
    assert "must end in .keras" in capsys.readouterr().err
    assert not (tmp_path / "out.h5").exists()
    # 30 images, 6 broken, batches of 2 in random order: some batches are entirely broken.
    assert main([*args, "--output-file", str(tmp_path / "out.keras"), "--batches", "15",
                 "--seed", "3"]) == 0
    used = int(capsys.readouterr().out.split("from ")[1].split()[0])
    assert 0 < used < 15
    bn = batchnorm_layers(load_model(tmp_path / "out.keras"))[0]
    assert np.isfinite(bn.moving_variance.numpy()).all()
    assert not np.allclose(bn.moving_variance.numpy(), 1.0)
