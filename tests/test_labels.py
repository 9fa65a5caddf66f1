import json

import numpy as np
import pytest

from nima import labels
from nima.errors import DataError, LabelError

from conftest import REPO


def test_real_label_files_load_and_normalise():
    ava = labels.load_samples(REPO / "data/AVA/ava_labels_test.json")
    assert len(ava) == 25551
    assert all(abs(s.label.sum() - 1) < 1e-9 for s in ava[:100])
    tid = labels.load_samples(REPO / "data/TID2013/tid_labels_train.json")
    assert len(tid) == 2640 and tid[0].image_id == "I04_01_1"


def test_counts_are_normalised():
    (s,) = labels.parse_samples([{"image_id": "a", "label": [0, 0, 0, 0, 1, 3, 0, 0, 0, 0]}])
    np.testing.assert_allclose(s.label[4:6], [0.25, 0.75])


@pytest.mark.parametrize("row, message", [
    ({"image_id": "a", "label": [1] * 9}, "10 numbers"),
    ({"image_id": "a", "label": [1] * 9 + [-1]}, "negative"),
    ({"image_id": "a", "label": [0] * 10}, "positive sum"),
    ({"image_id": "a", "label": [1] * 9 + [float("nan")]}, "finite"),
    ({"image_id": "a", "label": [1] * 9 + ["x"]}, "numbers"),
    ({"image_id": "../etc/passwd", "label": [1] * 10}, "path separators"),
    ({"image_id": "a/../b", "label": [1] * 10}, "path separators"),
    ({"image_id": "..", "label": [1] * 10}, "path separators"),
    ({"image_id": 7, "label": [1] * 10}, "string"),
    ({"label": [1] * 10}, "image_id"),
])
def test_bad_rows_name_their_position(row, message):
    data = [{"image_id": "ok", "label": [1] * 10}, row]
    with pytest.raises(LabelError, match=f"row 1.*{message}|{message}.*"):
        labels.parse_samples(data, source="f.json")
    with pytest.raises(LabelError, match="row 1"):
        labels.parse_samples(data, source="f.json")


def test_duplicate_ids_rejected():
    rows = [{"image_id": "a", "label": [1] * 10}] * 2
    with pytest.raises(LabelError, match="duplicate"):
        labels.parse_samples(rows)


def test_malformed_json_reports_line(tmp_path):
    f = tmp_path / "s.json"
    f.write_text('[\n{"image_id": "a", "label": [1,1,1,1,1,1,1,1,1,1]},\n{"image_id": }\n]')
    with pytest.raises(LabelError, match="line 3"):
        labels.load_samples(f)
    with pytest.raises(LabelError, match="not found"):
        labels.load_samples(tmp_path / "missing.json")


def test_find_images_any_extension_and_case(tmp_path):
    for name in ["a.jpg", "b.PNG", "I01_01_1.BMP", "c.webp", "d.txt", "e.jpeg"]:
        (tmp_path / name).write_bytes(b"x")
    ids = ["a", "b", "i01_01_1", "c", "d", "e", "zzz"]
    samples = labels.parse_samples([{"image_id": i, "label": [1] * 10} for i in ids])
    found, missing = labels.find_images(samples, tmp_path)
    assert {s.image_id: p.name for s, p in found} == {
        "a": "a.jpg", "b": "b.PNG", "i01_01_1": "I01_01_1.BMP", "c": "c.webp", "e": "e.jpeg"}
    assert missing == ["d", "zzz"]
    with pytest.raises(DataError, match="not found"):
        labels.find_images(samples, tmp_path / "nope")
    # The case-folded match is only a fallback: an exact match wins, whichever sorts first.
    (tmp_path / "Q.jpg").write_bytes(b"x")
    (tmp_path / "q.png").write_bytes(b"x")
    found, _ = labels.find_images(labels.parse_samples(
        [{"image_id": i, "label": [1] * 10} for i in ("q", "Q", "q.png", "Q.JPG")]), tmp_path)
    assert [p.name for _, p in found] == ["q.png", "Q.jpg", "q.png", "Q.jpg"]


def test_ids_may_be_full_file_names(tmp_path):
    # pyiqa-style label files name the file ("10004.jpg"); every one used to be "missing"
    for name in ["10004.jpg", "Photo.PNG", "x.jpg", "x.png", "y.tar.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    ids = ["10004.jpg", "photo.png", "x", "x.png", "y.tar", "y.tar.jpg", "10004.png"]
    samples = labels.parse_samples([{"image_id": i, "label": [1] * 10} for i in ids])
    found, missing = labels.find_images(samples, tmp_path)
    assert {s.image_id: p.name for s, p in found} == {
        "10004.jpg": "10004.jpg", "photo.png": "Photo.PNG", "x": "x.jpg", "x.png": "x.png",
        "y.tar": "y.tar.jpg", "y.tar.jpg": "y.tar.jpg"}
    assert missing == ["10004.png"]


def test_split_is_seeded_disjoint_and_complete():
    items = list(range(100))
    train, val = labels.split(items, 0.05, seed=3)
    assert len(val) == 5 and sorted(train + val) == items
    assert labels.split(items, 0.05, seed=3) == (train, val)
    assert labels.split(items, 0.05, seed=4)[1] != val
    assert labels.split(items, 0.0, seed=3) == (items, [])
    # A small fraction still validates on one item; a large one still trains on one.
    assert [len(part) for part in labels.split(items[:10], 0.01, seed=3)] == [9, 1]
    assert [len(part) for part in labels.split(items[:3], 0.9, seed=3)] == [1, 2]


def test_check_missing_threshold():
    labels.check_missing(100, ["a"] * 5, 0.05, "missing")
    with pytest.raises(DataError, match="6 of 100"):
        labels.check_missing(100, ["a"] * 6, 0.05, "missing")


def test_samples_json_roundtrip(tmp_path):
    samples = labels.load_samples(REPO / "data/TID2013/tid_labels_test.json")
    f = tmp_path / "out.json"
    f.write_text(labels.samples_to_json(samples))
    again = labels.load_samples(f)
    assert [s.image_id for s in again] == [s.image_id for s in samples]
    np.testing.assert_allclose([s.label for s in again], [s.label for s in samples])
    assert json.loads(f.read_text())[0].keys() == {"image_id", "label"}
