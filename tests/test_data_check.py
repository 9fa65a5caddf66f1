"""nima data check / stats / undersample on generated and on the shipped label files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, make_images
from nima import scores
from nima.cli import main
from nima.data.check import check
from nima.data.stats import compute
from nima.data.undersample import rating_bin, undersample
from nima.errors import LabelError
from nima.labels import load_samples

AVA_TEST = REPO / "data" / "AVA" / "ava_labels_test.json"


def test_check_reports_every_kind_of_problem(tmp_path, capsys):
    images = tmp_path / "images"
    rows = make_images(images, 8, size=(40, 40))
    make_images(tmp_path / "big", 1, size=(80, 120))
    (tmp_path / "big" / "img0000.jpg").rename(images / "big.jpg")
    rows.append({"image_id": "big", "label": [1] * 10})
    # truncated JPEG, cut inside the compressed scan (header intact, end marker gone)
    make_images(tmp_path / "large", 1, size=(200, 300))
    data = (tmp_path / "large" / "img0000.jpg").read_bytes()
    (images / "img0001.jpg").write_bytes(data[: len(data) * 2 // 3])
    # truncated PNG
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(images / "img0002.png")
    (images / "img0002.jpg").unlink()
    png = (images / "img0002.png").read_bytes()
    (images / "img0002.png").write_bytes(png[: len(png) // 2])
    (images / "img0003.jpg").write_bytes(b"not an image at all")
    (images / "img0004.jpg").unlink()
    # JPEG with bytes appended after its end marker is fine, not truncated
    with open(images / "img0005.jpg", "ab") as f:
        f.write(b"trailing camera data" * 10)
    rows += [
        {"image_id": "img0000", "label": [1] * 10},          # duplicate of row 0
        {"image_id": "x1", "label": [1] * 9},                # 9 numbers
        {"image_id": "x2", "label": [0] * 10},               # zero sum
        {"image_id": "x3", "label": [1] * 9 + [-1]},         # negative
        {"image_id": "../x4", "label": [1] * 10},            # traversal
        {"label": [1] * 10},                                 # no id
        "not a row",
    ]
    raw = json.dumps(rows)
    labels = tmp_path / "labels.json"
    labels.write_text(raw.replace('"x3", "label": [1, 1, 1, 1, 1, 1, 1, 1, 1, -1]',
                                  '"x3", "label": [1, 1, 1, 1, 1, 1, 1, 1, 1, NaN]'))
    clean = tmp_path / "clean.json"
    code = main(["data", "check", str(labels), "--image-dir", str(images), "--min-size", "50",
                 "--write-clean", str(clean)])
    assert code == 3
    r = check(labels, images, min_size=50)
    assert r.counts() == {"bad_row": 6, "duplicate": 1, "missing": 1, "unreadable": 1,
                          "truncated": 2, "tiny": 4}
    by_index = {p.index: p.kind for p in r.problems}
    assert by_index[1] == "truncated" and by_index[2] == "truncated"
    assert by_index[3] == "unreadable" and by_index[4] == "missing" and by_index[9] == "duplicate"
    assert [by_index[i] for i in range(10, 16)] == ["bad_row"] * 6
    assert [p.index for p in r.problems if p.kind == "tiny"] == [0, 5, 6, 7]
    assert [row["image_id"] for row in json.loads(clean.read_text())] == ["big"]
    out = capsys.readouterr().out
    assert "truncated: 2" in out and "row 12: label values must be finite" in out
    # every problem line names its row, image problems too (they used to name only the file)
    assert f"row 3: not a recognised image file: {images / 'img0003.jpg'}" in out
    assert f"row 0: 40x40 is smaller than 50 px: {images / 'img0000.jpg'}" in out
    assert "row 1: truncated image" in out
    # without --min-size the small images are fine; with --full-decode the same verdicts
    r = check(labels, images, full_decode=True)
    assert r.counts()["tiny"] == 0 and r.counts()["truncated"] == 2
    assert sorted(r.good) == [0, 5, 6, 7, 8]
    r = check(labels, images)  # cheap checks: appended data after the JPEG end is fine
    assert r.counts()["truncated"] == 2 and sorted(r.good) == [0, 5, 6, 7, 8]


def test_check_good_dataset_exits_0(tmp_path, dataset, capsys):
    samples, image_dir, _ = dataset
    assert main(["data", "check", str(samples), "--image-dir", str(image_dir),
                 "--full-decode"]) == 0
    assert "24 rows, 24 good, 0 with problems" in capsys.readouterr().out


def test_check_shipped_ava_labels_with_few_images(tmp_path, capsys):
    rows = json.loads(AVA_TEST.read_text())
    images = tmp_path / "images"
    make_images(images, 6)  # the 6th keeps its name and has no label
    for i, row in enumerate(rows[:5]):  # give 5 real ids an image
        (images / f"img{i:04d}.jpg").rename(images / f"{row['image_id']}.jpg")
    report = tmp_path / "report.json"
    clean = tmp_path / "clean.json"
    assert main(["data", "check", str(AVA_TEST), "--image-dir", str(images),
                 "--report", str(report), "--write-clean", str(clean)]) == 3
    out = capsys.readouterr().out
    assert (f"{len(rows)} rows, 5 good, {len(rows) - 5} with problems (5 images checked, "
            "1 unlabelled in the folder)") in out
    rep = json.loads(report.read_text())
    assert rep["counts"]["missing"] == len(rows) - 5 == 25546
    assert sum(rep["counts"].values()) == len(rows) - 5
    assert json.loads(clean.read_text()) == rows[:5]  # raw counts kept


def test_check_invalid_json_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n{"image_id": "a", "label": [1,1,1,1,1,1,1,1,1,1]},\n{"image_id": }\n]')
    assert main(["data", "check", str(bad)]) == 1
    assert f"{bad}: invalid JSON at line 3 column 14" in capsys.readouterr().err


GOOD_ROWS = '[{"image_id": "a", "label": [1,1,1,1,1,1,1,1,1,1]}]'


@pytest.mark.parametrize("tool", [["check"], ["stats"],
                                  ["undersample", "--max-per-bin", "1", "--out", "OUT"]])
@pytest.mark.parametrize("content, ok, message", [
    # Windows editors write a byte-order mark; training accepts it, so must the tools
    (b"\xef\xbb\xbf" + GOOD_ROWS.encode(), True, ""),
    # an empty file is one training refuses: "all is well" (exit 0) would be a lie
    (b"[]", False, "contains no samples"),
    (b"[" * 100_000, False, "JSON nested too deeply"),  # was a RecursionError traceback
    (b"\xff\xfe[]", False, "not UTF-8 text (byte 0 is 0xff)"),
])
def test_data_tools_read_label_files_as_training_does(tmp_path, capsys, tool, content, ok,
                                                      message):
    path = tmp_path / "labels.json"
    path.write_bytes(content)
    argv = ["data", tool[0], str(path)] + [str(tmp_path / "out.json") if a == "OUT" else a
                                           for a in tool[1:]]
    trained_ok = True
    try:
        load_samples(path)
    except LabelError:
        trained_ok = False
    assert trained_ok == ok
    assert main(argv) == (0 if ok else 1)
    err = capsys.readouterr().err
    if not ok:
        assert f"nima data {tool[0]}: error: {path}: {message}" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_stats_on_shipped_ava_labels(tmp_path, capsys):
    rows = json.loads(AVA_TEST.read_text())
    png = tmp_path / "hist.png"
    assert main(["data", "stats", str(AVA_TEST), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    totals = [sum(r["label"]) for r in rows]
    means = scores.mean_score(scores.normalize(np.array([r["label"] for r in rows])))
    assert f"{len(rows)} images, labels are vote counts" in out
    assert (f"votes per image: min {min(totals)}, median {np.median(totals):g}, "
            f"max {max(totals)}") in out
    assert f"mean score > 5: {(means > 5).mean():.1%}" in out
    assert "mean score > 5: 70.3%" in out  # as measured in /work/shared/README.md
    st = compute(AVA_TEST)
    assert sum(st.histogram) == len(rows)
    assert st.histogram == np.histogram(means, bins=np.arange(1, 10.01, 0.5))[0].tolist()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (700, 400)


def test_stats_distributions_have_no_vote_counts(capsys):
    assert main(["data", "stats", str(REPO / "data" / "TID2013" / "tid_labels_test.json")]) == 0
    out = capsys.readouterr().out
    assert "360 images, labels are distributions" in out and "votes per image" not in out


def test_stats_rejects_bad_rows_with_their_index(tmp_path):
    bad = tmp_path / "l.json"
    bad.write_text(json.dumps([{"image_id": "a", "label": [1] * 10},
                               {"image_id": "b", "label": [1] * 11}]))
    with pytest.raises(LabelError, match="row 1 .*10 numbers"):
        compute(bad)


def test_undersample_caps_each_bin(tmp_path, capsys):
    rows = json.loads(AVA_TEST.read_text())[:2000]
    src = tmp_path / "l.json"
    src.write_text(json.dumps(rows))
    out = tmp_path / "u.json"
    assert main(["data", "undersample", str(src), "--out", str(out), "--max-per-bin", "100",
                 "--seed", "1"]) == 0
    kept = json.loads(out.read_text())
    bins_before = np.bincount([rating_bin(float(scores.mean_score(scores.normalize(r["label"]))))
                               for r in rows], minlength=11)
    bins_after = np.bincount([rating_bin(float(scores.mean_score(scores.normalize(r["label"]))))
                              for r in kept], minlength=11)
    assert bins_after.tolist() == np.minimum(bins_before, 100).tolist()
    assert bins_before.max() > 100  # the cap did something
    order = {r["image_id"]: i for i, r in enumerate(rows)}
    assert [order[r["image_id"]] for r in kept] == sorted(order[r["image_id"]] for r in kept)
    assert all(r == rows[order[r["image_id"]]] for r in kept)  # raw counts kept
    again = tmp_path / "again.json"
    undersample(src, again, 100, seed=1)
    assert again.read_text() == out.read_text()
    undersample(src, again, 100, seed=2)
    assert again.read_text() != out.read_text()
    load_samples(out)


def test_rating_bin_rounds_halves_up():
    assert [rating_bin(m) for m in (1.0, 1.49, 1.5, 5.5, 6.5, 9.6, 10.0)] == [1, 1, 2, 6, 7, 10, 10]


@pytest.mark.parametrize("argv, message", [
    (["--workers", "-1"], "--workers must be at least 1, got -1"),  # was a ValueError traceback
    (["--workers", "0"], "--workers must be at least 1, got 0"),    # silently meant "default"
    (["--min-size", "-5"], "--min-size must not be negative, got -5"),
])
def test_check_options_out_of_range_are_one_line(tmp_path, capsys, argv, message):
    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps(make_images(tmp_path / "images", 2)))
    assert main(["data", "check", str(labels_file), "--image-dir", str(tmp_path / "images"),
                 *argv]) == 1
    assert capsys.readouterr().err.strip() == f"nima data check: error: {message}"


@pytest.mark.parametrize("fmt", ["bmp", "tiff"])
def test_cheap_check_finds_truncated_files_without_an_end_marker(tmp_path, fmt):
    # TID2013's images are BMPs: cut in half, the header is intact and the cheap check (end
    # markers exist only for JPEG and PNG) called them good, while training skipped them.
    images = tmp_path / "images"
    images.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(images / f"good.{fmt}")
    data = (images / f"good.{fmt}").read_bytes()
    (images / f"cut.{fmt}").write_bytes(data[: len(data) // 2])
    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps([{"image_id": i, "label": [1] * 10}
                                       for i in ("good", "cut")]))
    r = check(labels_file, images)
    assert [(p.kind, p.image_id) for p in r.problems] == [("truncated", "cut")]
    assert r.good == [0]
