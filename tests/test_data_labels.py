"""nima data ava / tid2013 / mos: label files from dataset files (no TensorFlow)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import REPO
from nima import scores
from nima.cli import build_parser, main
from nima.data import ava, mos, tid2013
from nima.data.distributions import maxent_distribution, normal_distribution
from nima.errors import DataError
from nima.labels import load_samples

TID = REPO / "data" / "TID2013"


def write_ava(path: Path, n: int = 40, seed: int = 0) -> list[str]:
    """n AVA.txt lines: tag 15 (Interior) on every third image, tag 2 on the rest."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        votes = rng.integers(0, 30, 10)
        votes[0] += 1  # never all zero
        tag1 = 15 if i % 3 == 0 else 2
        lines.append(" ".join(map(str, [i + 1, 1000 + i, *votes, tag1, 0, 7])))
    path.write_text("\n".join(lines) + "\n")
    return lines


TAGS = "1 Abstract\n2 Animals\n15 Interior\n19 Black and White\n"


# ---------------------------------------------------------------- distributions

@pytest.mark.parametrize("mean", [1.0, 1.0 + 1e-9, 1.3, 3.7, 5.5, 6.51429, 9.99, 10.0])
def test_maxent_hits_mean_and_is_a_distribution(mean):
    p = maxent_distribution(mean)
    assert p.shape == (10,) and np.all(p >= 0) and abs(p.sum() - 1) < 1e-12
    assert abs(float(p @ scores.RATINGS) - mean) < 1e-6
    # log p is linear in the rating: that is what maximum entropy means here
    if 1.01 < mean < 9.99:
        assert np.allclose(np.diff(np.log(p)), np.diff(np.log(p))[0], atol=1e-9)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1.0, max_value=10.0))
def test_maxent_any_mean(mean):
    p = maxent_distribution(mean)
    assert np.all(p >= 0) and abs(p.sum() - 1) < 1e-12
    assert abs(float(p @ scores.RATINGS) - mean) < 1e-6


def test_maxent_rejects_means_outside_the_scale():
    with pytest.raises(ValueError):
        maxent_distribution(0.5)


def test_normal_distribution_mean_and_spread():
    p = normal_distribution(5.5, 1.0)
    assert abs(p.sum() - 1) < 1e-12 and abs(float(p @ scores.RATINGS) - 5.5) < 1e-9
    assert abs(float(scores.sd_score(p)) - np.sqrt(1 + 1 / 12)) < 0.01  # binning adds 1/12
    assert normal_distribution(3.2, 0.0).tolist() == [0, 0, 1] + [0] * 7


# ---------------------------------------------------------------- AVA

def test_ava_random_split(tmp_path):
    lines = write_ava(tmp_path / "AVA.txt", 40)
    out = tmp_path / "out"
    assert main(["data", "ava", str(tmp_path / "AVA.txt"), "--out-dir", str(out),
                 "--test-fraction", "0.25", "--seed", "3"]) == 0
    train = json.loads((out / "ava_labels_train.json").read_text())
    test = json.loads((out / "ava_labels_test.json").read_text())
    assert len(train) == 30 and len(test) == 10
    ids = {r["image_id"] for r in train} | {r["image_id"] for r in test}
    assert ids == {str(1000 + i) for i in range(40)}
    first = lines[0].split()
    by_id = {r["image_id"]: r["label"] for r in train + test}
    assert by_id[first[1]] == [int(v) for v in first[2:12]]  # counts stay integers
    # same seed, same split; other seed, other split
    main(["data", "ava", str(tmp_path / "AVA.txt"), "--out-dir", str(tmp_path / "again"),
          "--test-fraction", "0.25", "--seed", "3"])
    assert (tmp_path / "again" / "ava_labels_test.json").read_text() == \
        (out / "ava_labels_test.json").read_text()
    main(["data", "ava", str(tmp_path / "AVA.txt"), "--out-dir", str(tmp_path / "other"),
          "--test-fraction", "0.25", "--seed", "4"])
    assert (tmp_path / "other" / "ava_labels_test.json").read_text() != \
        (out / "ava_labels_test.json").read_text()
    load_samples(out / "ava_labels_train.json")  # the trainer accepts it


def test_ava_tags_min_votes_test_ids_image_dir(tmp_path):
    write_ava(tmp_path / "AVA.txt", 30)
    (tmp_path / "tags.txt").write_text(TAGS)
    (tmp_path / "test.jpgl").write_text("1000\n1003\n9999\n")
    images = tmp_path / "images"
    images.mkdir()
    for i in (0, 3, 6, 9, 12):
        (images / f"{1000 + i}.jpg").write_bytes(b"")  # only presence matters here
    r = ava.build(tmp_path / "AVA.txt", tmp_path / "out", tags=["interior"],
                  tags_file=tmp_path / "tags.txt", test_ids=tmp_path / "test.jpgl",
                  image_dir=images)
    assert [x.image_id for x in r.test] == ["1000", "1003"]
    assert [x.image_id for x in r.train] == ["1006", "1009", "1012"]
    assert r.dropped["not in selected tags"] == 20 and r.dropped["image missing"] == 5
    totals = sorted(sum(x.votes) for x in ava.read_ava(tmp_path / "AVA.txt"))
    r = ava.build(tmp_path / "AVA.txt", tmp_path / "out2", min_votes=totals[10],
                  test_fraction=0)
    assert len(r.train) == sum(t >= totals[10] for t in totals) >= 20
    assert all(sum(x.votes) >= totals[10] for x in r.train) and r.test == []
    with pytest.raises(DataError, match="unknown tag 'Portraits'.*Interior"):
        ava.build(tmp_path / "AVA.txt", tmp_path / "o", tags=["Portraits"],
                  tags_file=tmp_path / "tags.txt")
    with pytest.raises(DataError, match="--tags-file"):
        ava.build(tmp_path / "AVA.txt", tmp_path / "o", tags=["Interior"])


@pytest.mark.parametrize("bad_line, message", [
    ("3 1002 1 2 3 4 5 6 7 8 9 10 1 0", "expected 15 fields"),
    ("3 1002 1 2 3 4 x 6 7 8 9 10 1 0 7", "field 7 must be an integer"),
    ("3 1002 1 2 3 4 -5 6 7 8 9 10 1 0 7", "negative vote count"),
    ("3 1000 1 2 3 4 5 6 7 8 9 10 1 0 7", r"duplicate image id 1000 \(first on line 1\)"),
    ("3 .. 1 2 3 4 5 6 7 8 9 10 1 0 7", "plain file name"),
])
def test_ava_malformed_lines_name_file_and_line(tmp_path, capsys, bad_line, message):
    lines = write_ava(tmp_path / "AVA.txt", 3)
    lines[2] = bad_line
    (tmp_path / "AVA.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=f"AVA.txt:3: .*{message}"):
        ava.read_ava(tmp_path / "AVA.txt")
    assert main(["data", "ava", str(tmp_path / "AVA.txt"), "--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nima data ava: error: ") and "AVA.txt:3:" in err
    assert not (tmp_path / "ava_labels_train.json").exists()


def test_ava_rebuilds_the_shipped_test_file(tmp_path):
    """25,551 real AVA rows through AVA.txt and an official test-id list, counts unchanged."""
    shipped = json.loads((REPO / "data" / "AVA" / "ava_labels_test.json").read_text())
    (tmp_path / "AVA.txt").write_text("".join(
        f"{i + 1} {r['image_id']} {' '.join(map(str, r['label']))} 0 0 0\n"
        for i, r in enumerate(shipped)))
    test_ids = [r["image_id"] for r in shipped[::2]]
    (tmp_path / "test.jpgl").write_text("\n".join(test_ids) + "\n")
    r = ava.build(tmp_path / "AVA.txt", tmp_path / "out", test_ids=tmp_path / "test.jpgl")
    assert r.total == len(shipped) == 25551
    test = json.loads((tmp_path / "out" / "ava_labels_test.json").read_text())
    train = json.loads((tmp_path / "out" / "ava_labels_train.json").read_text())
    assert test == shipped[::2] and train == shipped[1::2]


def test_tags_file_errors_have_line_numbers(tmp_path):
    (tmp_path / "tags.txt").write_text("1 Abstract\nInterior\n")
    with pytest.raises(DataError, match="tags.txt:2: expected 'id name'"):
        ava.read_names(tmp_path / "tags.txt", "tags file")
    (tmp_path / "tags.txt").write_text("1 Abstract\n\nx Interior\n")
    with pytest.raises(DataError, match="tags.txt:3: id must be an integer"):
        ava.read_names(tmp_path / "tags.txt", "tags file")


# ---------------------------------------------------------------- TID2013

def shipped_tid_as_mos_file(path: Path) -> list[dict]:
    """Rebuild mos_with_names.txt from the shipped labels (MOS = mean - 1), in shipped order."""
    rows = json.loads((TID / "tid_labels_test.json").read_text())
    rows += json.loads((TID / "tid_labels_train.json").read_text())
    path.write_text("".join(f"{float(np.array(r['label']) @ scores.RATINGS) - 1:.10f} "
                            f"{r['image_id']}.bmp\r\n" for r in rows))
    return rows


def test_tid2013_reproduces_the_shipped_files(tmp_path):
    shipped_tid_as_mos_file(tmp_path / "mos_with_names.txt")
    out = tmp_path / "out"
    assert main(["data", "tid2013", str(tmp_path / "mos_with_names.txt"),
                 "--out-dir", str(out)]) == 0
    for name in ("tid_labels_train.json", "tid_labels_test.json"):
        ours = json.loads((out / name).read_text())
        shipped = json.loads((TID / name).read_text())
        assert [r["image_id"] for r in ours] == [r["image_id"] for r in shipped]
        ours_p = np.array([r["label"] for r in ours])
        shipped_p = np.array([r["label"] for r in shipped])
        assert np.abs(ours_p - shipped_p).max() < 1e-6
        assert np.abs(ours_p @ scores.RATINGS - shipped_p @ scores.RATINGS).max() < 1e-6
        assert np.all(ours_p >= 0) and np.allclose(ours_p.sum(axis=1), 1, atol=1e-12)


def test_tid2013_splits_by_reference_image(tmp_path):
    # 25 references x 2 distortions x 3 levels, mixed-case ids as in the real file
    (tmp_path / "mos.txt").write_text("".join(
        f"{(ref + d + lv) % 9:.5f} {'I' if lv == 1 else 'i'}{ref:02d}_{d:02d}_{lv}.bmp\n"
        for ref in range(1, 26) for d in (1, 2) for lv in (1, 2, 3)))
    r = tid2013.build(tmp_path / "mos.txt", tmp_path / "a", test_fraction=0.2, seed=5)
    test_refs = {x.reference for x in r.test}
    assert len(test_refs) == 5 and test_refs == set(r.test_refs)
    assert not test_refs & {x.reference for x in r.train}
    assert len(r.test) == 5 * 6 and len(r.train) == 20 * 6
    written = json.loads((tmp_path / "a" / "tid_labels_test.json").read_text())
    assert [row["image_id"] for row in written] == [x.image_id for x in r.test]
    again = tid2013.build(tmp_path / "mos.txt", tmp_path / "b", test_fraction=0.2, seed=5)
    assert again.test_refs == r.test_refs
    r = tid2013.build(tmp_path / "mos.txt", tmp_path / "b", test_refs=["I25", "7"])
    assert r.test_refs == [7, 25] and len(r.test) == 12
    assert r.test[0].image_id == "I07_01_1" and r.test[1].image_id == "i07_01_2"
    with pytest.raises(DataError, match=r"\[26\] are not in"):
        tid2013.build(tmp_path / "mos.txt", tmp_path / "c", test_refs=["I26"])
    # every reference held out: an empty training file used to be written without a word
    with pytest.raises(DataError, match="no training images would be left"):
        tid2013.build(tmp_path / "mos.txt", tmp_path / "c",
                      test_refs=[str(i) for i in range(1, 26)])
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("bad_line, message", [
    ("5.1", "expected 'MOS filename'"),
    ("five I01_02_1.bmp", "MOS must be a number"),
    ("9.5 I01_02_1.bmp", "outside TID2013's 0..9"),
    ("nan I01_02_1.bmp", "MOS must be finite"),
    ("5.1 foo.bmp", "does not start with a reference id"),
    ("5.1 i01_01_1.BMP", r"duplicate image i01_01_1.BMP \(first on line 1\)"),
])
def test_tid2013_malformed_lines_name_file_and_line(tmp_path, bad_line, message):
    (tmp_path / "mos.txt").write_text(f"5.51429 I01_01_1.bmp\n\n{bad_line}\n")
    with pytest.raises(DataError, match=f"mos.txt:3: .*{message}"):
        tid2013.read_mos(tmp_path / "mos.txt")


# ---------------------------------------------------------------- generic MOS CSV

def test_mos_csv_maxent_and_normal(tmp_path):
    (tmp_path / "m.csv").write_text("image,mos,std,n\na.jpg,3.0,0.5,20\nb.png,5,1.0,4\n"
                                    "c,1,0,30\n")
    out = tmp_path / "m.json"
    assert main(["data", "mos", str(tmp_path / "m.csv"), "--out", str(out),
                 "--scale", "1", "5"]) == 0
    rows = json.loads(out.read_text())
    assert [r["image_id"] for r in rows] == ["a", "b", "c"]
    means = [float(np.array(r["label"]) @ scores.RATINGS) for r in rows]
    assert np.allclose(means, [5.5, 10.0, 1.0], atol=1e-6)  # 1..5 -> 1..10
    main(["data", "mos", str(tmp_path / "m.csv"), "--out", str(out), "--scale", "1", "5",
          "--method", "normal", "--min-n", "10"])
    rows = json.loads(out.read_text())
    assert [r["image_id"] for r in rows] == ["a", "c"]
    a = np.array(rows[0]["label"])
    assert abs(float(a @ scores.RATINGS) - 5.5) < 1e-6
    assert abs(float(scores.sd_score(a)) - np.sqrt((0.5 * 9 / 4) ** 2 + 1 / 12)) < 0.02
    assert rows[1]["label"][0] == 1.0


def test_mos_without_header_and_tab_separated(tmp_path):
    (tmp_path / "m.tsv").write_text("x1.jpg\t0.25\ny2.jpg\t0.75\n")
    mos.convert(tmp_path / "m.tsv", tmp_path / "o.json", scale=(0, 1))
    samples = load_samples(tmp_path / "o.json")
    assert np.allclose([float(scores.mean_score(s.label)) for s in samples], [3.25, 7.75])


def test_mos_delimiter_comes_from_the_data_not_a_comment(tmp_path):
    # a comment line without commas above a CSV made every line one whitespace-split field
    (tmp_path / "m.csv").write_text("# scores from the 2025 study\nimage,mos\nmy photo.jpg,3\n")
    r = mos.convert(tmp_path / "m.csv", tmp_path / "o.json", scale=(1, 5))
    assert r.written == 1
    [sample] = load_samples(tmp_path / "o.json")
    assert sample.image_id == "my photo"
    assert float(scores.mean_score(sample.label)) == pytest.approx(5.5)


def test_mos_dmos_direction_is_never_guessed_silently(tmp_path, caplog):
    # 'dmos' is lower-is-better in LIVE (0..100) and higher-is-better in KADID-10k (1..5): it
    # used to be read as a mos without a word, which inverts a LIVE user's ranking
    (tmp_path / "live.csv").write_text("image,dmos\npristine.bmp,10\nawful.bmp,90\n")
    mos.convert(tmp_path / "live.csv", tmp_path / "a.json", scale=(0, 100))
    assert "pass --invert" in caplog.text
    caplog.clear()
    r = mos.convert(tmp_path / "live.csv", tmp_path / "b.json", scale=(0, 100), invert=True)
    assert r.written == 2 and "--invert" not in caplog.text
    means = {s.image_id: float(scores.mean_score(s.label)) for s in load_samples(
        tmp_path / "b.json")}
    assert means["pristine"] == pytest.approx(1 + 9 * 0.9) and means["awful"] == pytest.approx(
        1 + 9 * 0.1)
    assert main(["data", "mos", str(tmp_path / "live.csv"), "--out", str(tmp_path / "c.json"),
                 "--scale", "0", "100", "--invert"]) == 0
    assert (tmp_path / "c.json").read_text() == (tmp_path / "b.json").read_text()
    # KADID-10k's own header: dist_img is the image, dmos higher-is-better on 1..5
    (tmp_path / "kadid.csv").write_text("dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,4.57,"
                                        "0.496\n")
    r = mos.convert(tmp_path / "kadid.csv", tmp_path / "k.json", scale=(1, 5))
    [sample] = load_samples(tmp_path / "k.json")
    assert sample.image_id == "I01_01_01"
    assert float(scores.mean_score(sample.label)) == pytest.approx(1 + 9 * 3.57 / 4)


@pytest.mark.parametrize("content, kwargs, message", [
    ("image,mos\na.jpg,5\nb.jpg,11\n", {}, r"m.csv:3: mos 11 is outside the scale 1..10"),
    ("image,mos\na.jpg,5\nb.jpg,\n", {}, "m.csv:3: mos must be a number"),
    ("image,mos\na.jpg,5\nb.jpg\n", {}, "m.csv:3: expected 2 fields"),
    ("image,mos\na.jpg,5\na.png,6\n", {}, r"m.csv:3: duplicate image a.png \(first on line 2\)"),
    ("image,mos\na.jpg,5\n../b.jpg,6\n", {}, "m.csv:3: .*plain file name"),
    ("image,mos\na.jpg,5\nb.jpg,6\n", {"method": "normal"}, "m.csv:2: method 'normal' needs"),
    ("image,mos,std\na.jpg,5,1\nb.jpg,6,-1\n", {"method": "normal"},
     "m.csv:3: std must not be negative"),
    ("picture,rating\na.jpg,5\n", {}, "m.csv:1: header has no 'image' column"),
    ("# study 2025\npicture,rating\na.jpg,5\n", {}, "m.csv:2: header has no 'image' column"),
    ("image,mos,n\na.jpg,5,3\nb.jpg,6,\n", {"min_n": 2}, "m.csv:3: --min-n needs an n value"),
])
def test_mos_malformed_rows_name_file_and_line(tmp_path, content, kwargs, message):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        mos.convert(tmp_path / "m.csv", tmp_path / "o.json", **kwargs)
    assert not (tmp_path / "o.json").exists()


def test_data_tools_do_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys; from nima.cli import main; "
            "import nima.data.ava, nima.data.tid2013, nima.data.mos, nima.data.undersample, "
            "nima.data.check, nima.data.stats; "
            "main(['data', 'stats', sys.argv[1]]); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code, str(TID / "tid_labels_test.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "360 images" in r.stdout


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_train_and_data_argument_has_help():
    top = _subparsers(build_parser())
    parsers = {"train": top["train"], **{f"data {name}": p
                                          for name, p in _subparsers(top["data"]).items()}}
    undocumented = [f"nima {name} {a.option_strings[0] if a.option_strings else a.metavar}"
                    for name, p in parsers.items() for a in p._actions
                    if not a.help and not isinstance(a, argparse._HelpAction)]
    assert undocumented == []
