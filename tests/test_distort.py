"""`nima data distort`: each distortion grows with its level in a quantity one can measure,
labels fall with the level, and the train/test split is by source photo (never leaks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nima import labels, scores
from nima.errors import DataError, ImageError
from nima.data import distort


def photo_like(size: int = 96, seed: int = 0) -> np.ndarray:
    """Smooth shading plus edges plus fine texture: every distortion has something to damage."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = 60 + 120 * x[..., None] * np.array([1.0, 0.7, 0.4]) + 40 * y[..., None]
    squares = ((x * 6).astype(int) + (y * 6).astype(int)) % 2 * 50.0
    texture = rng.normal(0, 12, (size, size, 3))
    return np.clip(base + squares[..., None] + texture, 0, 255).astype(np.uint8)


def high_freq_energy(img: np.ndarray) -> float:
    g = img.astype(np.float64).mean(axis=2)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.mean(lap ** 2))


def by_level(name: str, img: np.ndarray) -> list[np.ndarray]:
    fn = distort.DISTORTIONS[name]
    return [img] + [fn(img, level, np.random.default_rng(7)) for level in range(1, 6)]


def strictly_decreasing(values: list[float]) -> bool:
    return all(a > b for a, b in zip(values, values[1:]))


def test_blur_lowers_high_frequency_energy_at_every_level():
    energies = [high_freq_energy(v) for v in by_level("blur", photo_like())]
    assert strictly_decreasing(energies), energies


def test_noise_error_grows_at_every_level():
    img = photo_like()
    errors = [float(np.std(v.astype(float) - img)) for v in by_level("noise", img)]
    assert strictly_decreasing([-e for e in errors]), errors


def test_jpeg_error_grows_as_quality_falls():
    img = photo_like()
    errors = [float(np.mean((v.astype(float) - img) ** 2)) for v in by_level("jpeg", img)]
    assert errors[0] == 0 and strictly_decreasing([-e for e in errors]), errors


def test_exposure_lowers_contrast_and_moves_brightness():
    img = photo_like()
    variants = by_level("exposure", img)
    contrast = [float(v.astype(float).std()) for v in variants]
    assert strictly_decreasing(contrast), contrast
    shift = [abs(float(v.mean()) - float(img.mean())) for v in variants]
    assert strictly_decreasing([-s for s in shift]), shift


def test_labels_fall_linearly_from_pristine_to_level_5():
    means = [float(scores.mean_score(distort.level_label(k))) for k in range(6)]
    assert means[0] == pytest.approx(8.5, abs=0.2) and means[5] == pytest.approx(2.0, abs=0.25)
    assert strictly_decreasing(means)
    for k in range(6):
        assert distort.level_label(k).sum() == pytest.approx(1.0)


def make_sources(directory: Path, n: int) -> list[str]:
    directory.mkdir(parents=True)
    (directory / "sub").mkdir()
    names = []
    for i in range(n):
        where = directory / "sub" if i % 2 else directory
        Image.fromarray(photo_like(80 + 8 * i, seed=i)).save(where / f"photo {i}.png")
        names.append(f"photo {i}")
    return names


def test_dataset_is_split_by_source_and_reproducible(tmp_path: Path):
    src = tmp_path / "src"
    make_sources(src, 6)
    m = distort.distort_dataset(src, tmp_path / "a", seed=3, crops=2, size=48,
                                test_fraction=0.34)
    per_crop = 1 + len(distort.DISTORTIONS) * distort.LEVELS
    assert m["n_images"]["train"] + m["n_images"]["test"] == 6 * 2 * per_crop
    splits = {s["name"]: s["split"] for s in m["sources"]}
    assert sorted(splits.values()).count("test") == 2

    for side in ("train", "test"):
        samples = labels.load_samples(tmp_path / "a" / f"labels_{side}.json")
        found, missing = labels.find_images(samples, tmp_path / "a" / "images")
        assert not missing
        # Every image on this side comes from a source assigned to this side: no leak.
        owners = {s.image_id.rsplit("_c", 1)[0] for s in samples}
        assert owners and all(splits[o] == side for o in owners)
        for _, path in found:
            assert Image.open(path).size == (48, 48)

    # Same seed: same split, same pixels (noise included).
    m2 = distort.distort_dataset(src, tmp_path / "b", seed=3, crops=2, size=48,
                                 test_fraction=0.34)
    assert m2["sources"] == m["sources"]
    for name in ("photo-0_c01_noise3.png", "sub-photo-1_c00_exposure5.png"):
        a = np.asarray(Image.open(tmp_path / "a" / "images" / name))
        b = np.asarray(Image.open(tmp_path / "b" / "images" / name))
        assert np.array_equal(a, b)


def test_cli_distort_and_errors(tmp_path: Path):
    src = tmp_path / "src"
    make_sources(src, 3)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "nima", "data", "distort", "--source", str(src), "--out",
           str(out), "--crops", "1", "--size", "40", "--test-fraction", "0.3"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "3 source photos (1 held out)" in r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["score_mapping"]["means"][0] == 8.5

    r = subprocess.run(cmd[:6] + [str(tmp_path / "nope")] + cmd[7:], capture_output=True,
                       text=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("nima data distort: error: source folder")

    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.fromarray(photo_like(30)).save(tiny / "small.png")
    r = subprocess.run(cmd[:6] + [str(tiny)] + cmd[7:], capture_output=True, text=True)
    assert r.returncode == 1 and "smaller than the crop size" in r.stderr


def test_camera_photos_are_cut_upright(tmp_path: Path):
    """EXIF orientation is applied, as in training and prediction: a phone photo stored
    sideways must not be distorted sideways."""
    src = tmp_path / "src"
    src.mkdir()
    stored = np.zeros((80, 120, 3), np.uint8)  # landscape as stored: left black, right white
    stored[:, 60:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to display (portrait, 80x120)
    Image.fromarray(stored).save(src / "phone.jpg", quality=95, exif=exif)
    # crop side == short side: the crop spans the full width of the upright photo
    distort.distort_dataset(src, tmp_path / "out", crops=1, size=80, test_fraction=0.0)
    ref = np.asarray(Image.open(tmp_path / "out" / "images" / "phone_c00_ref.png"), float)
    assert ref.shape == (80, 80, 3)
    # upright, the black/white edge is horizontal: rows are flat, columns are not
    assert ref.std(axis=1).mean() < 10 < ref.std(axis=0).mean()


def test_bad_or_small_source_fails_before_anything_is_written(tmp_path: Path):
    src = tmp_path / "src"
    make_sources(src, 2)
    Image.fromarray(photo_like(30)).save(src / "zz-small.png")  # found last
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"zz-small.png is 30x30, smaller than the crop size 48"):
        distort.distort_dataset(src, out, crops=1, size=48)
    (src / "zz-small.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="zz-small.png"):
        distort.distort_dataset(src, out, crops=1, size=48)
    assert not out.exists()  # no half-written dataset
    with pytest.raises(DataError, match="source is not a folder"):
        distort.distort_dataset(src / "zz-small.png", out, crops=1, size=48)


def test_negative_seed_is_one_line_not_a_numpy_traceback(tmp_path: Path):
    src = tmp_path / "src"
    make_sources(src, 2)
    r = subprocess.run([sys.executable, "-m", "nima", "data", "distort", "--source", str(src),
                        "--out", str(tmp_path / "out"), "--seed", "-1"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "nima data distort: error: --seed must not be negative, got -1"]
    assert not (tmp_path / "out").exists()
