"""Reports: history.png from training, the evaluation report, the gallery and contact sheet.

One tiny real run (train 1+1 epochs, predict, evaluate) is shared by the module; order and
filter checks use results with known, distinct means (a 2-epoch model scores everything
alike, which would make a sort test pass whatever the code did).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import make_images, tiny_config
from PIL import Image
from report_helpers import Page, decode_data_uri, external_urls, scored_folder, write_json

from nima import cli, evaluation_report, plots, report
from nima import results as result_files


def png_ok(path: Path, min_size: tuple[int, int] = (200, 150)) -> np.ndarray:
    """The file decodes as a PNG of at least min_size with real content (not one flat colour)."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width >= min_size[0] and img.height >= min_size[1], img.size
        arr = np.asarray(img.convert("RGB"))
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 20, f"{path} is nearly blank"
    assert arr.std() > 10
    return arr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train a tiny model, then score its folder (plus a sub-folder and one broken file)."""
    root = tmp_path_factory.mktemp("run")
    image_dir = root / "images"
    rows = make_images(image_dir, 24)
    make_images(image_dir / "sub", 2, seed=3, ext="png")
    (image_dir / "broken.jpg").write_bytes(b"not an image")
    (root / "samples.json").write_text(json.dumps(rows))
    (root / "config.json").write_text(json.dumps(tiny_config()))
    job = root / "job"
    assert cli.main(["train", "--config-file", str(root / "config.json"), "--samples-file",
                     str(root / "samples.json"), "--image-dir", str(image_dir),
                     "--job-dir", str(job)]) == 0
    predictions = root / "predictions.json"
    # Exit 3: one file could not be scored, which the gallery must list.
    assert cli.main(["predict", "--image-source", str(image_dir), "--weights-file", str(job),
                     "--predictions-file", str(predictions)]) == 3
    return SimpleNamespace(root=root, image_dir=image_dir, samples=root / "samples.json",
                           job=job, predictions=predictions)


# --- training history --------------------------------------------------------------------------

@pytest.mark.slow
def test_training_writes_history_png(run, tmp_path):
    history = json.loads((run.job / "history.json").read_text())
    assert [r["phase"] for r in history] == ["dense", "all"]
    written = png_ok(run.job / "history.png", (400, 300))
    # It was redrawn after the last epoch: identical to a plot of the full history.
    plots.save(plots.history_figure(history), tmp_path / "expected.png")
    assert np.array_equal(written, np.asarray(Image.open(tmp_path / "expected.png").convert("RGB")))


def test_history_plot_marks_phases_and_never_raises(tmp_path, caplog):
    rows = [{"epoch": i + 1, "phase": "dense" if i < 3 else "all", "loss": 0.3 - 0.01 * i,
             "val_loss": 0.31 - 0.01 * i} for i in range(6)]
    fig = plots.history_figure(rows)
    ax = fig.axes[0]
    # One dashed line, between epoch 3 (last of phase 1) and epoch 4.
    boundaries = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert boundaries == [3.5]
    assert {t.get_text() for t in ax.texts} == set(plots.PHASE_TITLES.values())
    labels = ax.get_legend_handles_labels()[1]
    assert "train loss" in labels and "validation loss" in labels
    # Training without validation has only `loss`: still a plot.
    assert plots.write_history_plot(tmp_path / "h.png", [{k: v for k, v in r.items()
                                                         if k != "val_loss"} for r in rows])
    png_ok(tmp_path / "h.png")
    # A plot that cannot be written costs a warning, never an exception.
    (tmp_path / "file").write_text("x")
    with caplog.at_level(logging.WARNING, logger="nima.plots"):
        assert plots.write_history_plot(tmp_path / "file" / "history.png", rows) is False
    assert "could not plot the training history" in caplog.text


def test_history_plot_without_matplotlib_only_warns(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now fails
    rows = [{"epoch": 1, "phase": "dense", "loss": 0.3}]
    with caplog.at_level(logging.WARNING, logger="nima.plots"):
        assert plots.write_history_plot(tmp_path / "history.png", rows) is False
    assert "could not plot" in caplog.text and not (tmp_path / "history.png").exists()


# --- evaluation report -------------------------------------------------------------------------

def _check_eval_report(report_dir: Path, metrics: dict) -> Page:
    text = (report_dir / "report.html").read_text()
    page = Page(text)
    figures = evaluation_report.EVAL_FIGURES
    assert sorted(u for u in page.urls if not u.startswith("data:")) == sorted(figures)
    for name in evaluation_report.EVAL_FIGURES:
        png_ok(report_dir / name)
    assert f"{metrics['emd_r2']:.4f}" in text
    assert not external_urls(text, page)
    return page


@pytest.mark.slow
def test_evaluate_report_for_a_model(run, tmp_path):
    out = tmp_path / "rep"
    assert cli.main(["evaluate", "--samples-file", str(run.samples), "--image-dir",
                     str(run.image_dir), "--weights-file", str(run.job), "--report-dir",
                     str(out), "--output-file", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    text = (out / "report.html").read_text()
    _check_eval_report(out, metrics)
    assert text.count("<tr>") == 1 + 20  # header + the 20 largest errors of 24 images
    page = Page(text)
    thumbs = [u for u in page.urls if u.startswith("data:")]
    assert len(thumbs) == 20 and max(decode_data_uri(thumbs[0]).size) <= 96


def test_evaluate_report_for_the_prior_baseline(tmp_path):
    rows = make_images(tmp_path / "unused", 30, size=(4, 4))
    samples = tmp_path / "s.json"
    samples.write_text(json.dumps(rows))
    out = tmp_path / "rep"
    assert cli.main(["evaluate", "--samples-file", str(samples), "--baseline", "prior",
                     "--report-dir", str(out), "--output-file", str(tmp_path / "m.json")]) == 0
    _check_eval_report(out, json.loads((tmp_path / "m.json").read_text()))


def test_evaluation_report_lists_the_largest_errors_with_their_images(tmp_path):
    """The table holds the `worst` largest mean-score errors, largest first, each row with
    its own image's values and thumbnail (a run of the real model scores too alike to show
    a wrong order or a mixed-up row)."""
    import re

    from conftest import gaussian_label
    from nima import evaluate, scores

    rows = make_images(tmp_path / "images", 26, size=(30, 40), seed=4)
    ids = [r["image_id"] for r in rows]
    y_true = np.array([r["label"] for r in rows])
    shift = np.random.default_rng(0).permutation(np.linspace(-3, 3, 26))  # distinct errors
    y_pred = np.array([gaussian_label(float(np.clip(m + d, 1, 10)))
                       for m, d in zip(scores.mean_score(y_true), shift)])
    result = {"model": "m", **evaluate.metrics(y_true, y_pred)}
    page = evaluation_report.write_evaluation_report(tmp_path / "rep", ids, y_true, y_pred,
                                                     result, image_dir=tmp_path / "images"
                                                     ).read_text()
    table = page.split('<table id="worst">')[1]
    found = re.findall(r'<tr><td><img src="(data:[^"]+)" alt="([^"]+)">([^<]+)</td>'
                       r"<td>([-\d.]+)</td><td>([-\d.]+)</td><td>([-+\d.]+)</td>"
                       r"<td>([\d.]+)</td></tr>", table)
    m_true, m_pred = scores.mean_score(y_true), scores.mean_score(y_pred)
    error = m_pred - m_true
    expected = sorted(range(26), key=lambda i: -abs(error[i]))[:20]
    assert [f[2] for f in found] == [ids[i] for i in expected]
    emd = scores.emd(y_true, y_pred)
    for (uri, alt, image_id, t, p, err, e), i in zip(found, expected):
        assert alt == image_id
        assert (float(t), float(p), float(err), float(e)) == pytest.approx(
            (m_true[i], m_pred[i], error[i], emd[i]), abs=1e-3)
        thumb = np.asarray(decode_data_uri(uri).convert("RGB"), float)
        original = np.asarray(Image.open(tmp_path / "images" / f"{image_id}.jpg"), float)
        assert abs(thumb.mean() - original.mean()) < 3, image_id


def test_confusion_counts():
    t = np.array([2.0, 6.0, 7.0, 4.0, 5.0])
    p = np.array([6.0, 6.5, 3.0, 4.5, 5.5])
    # rows true low/high, columns predicted low/high; 5.0 itself counts as low.
    assert plots.confusion_counts(t, p, 5.0).tolist() == [[1, 2], [1, 1]]


# --- gallery from the real run ------------------------------------------------------------------

@pytest.mark.slow
def test_gallery_of_a_real_prediction_run(run, tmp_path):
    out = tmp_path / "gallery.html"
    assert cli.main(["report", str(run.predictions), "--image-source", str(run.image_dir),
                     "-o", str(out)]) == 0
    text = out.read_text()
    page = Page(text)
    results = json.loads(run.predictions.read_text())
    ok = [r for r in results if "error" not in r]
    assert len(page.items) == len(ok) == 26
    assert len(page.thumbs) == 26  # every image (also sub/*.png) found and embedded
    for uri in page.thumbs[:3]:
        assert max(decode_data_uri(uri).size) <= 160
    assert page.means == sorted(page.means, reverse=True)
    assert [f.split()[0] for f in page.failed] == ["broken.jpg"]
    assert "Failed files (1)" in page.headings
    assert not external_urls(text, page)


# --- gallery structure with known scores ---------------------------------------------------------

def test_gallery_sorted_with_thumbnails_failures_and_no_urls(tmp_path):
    image_dir, results = scored_folder(tmp_path)
    preds = write_json(tmp_path / "p.json", results)
    out = tmp_path / "g.html"
    report.gallery(preds, image_dir, out)
    text = out.read_text()
    page = Page(text)
    expected = sorted((r for r in results if "error" not in r),
                      key=lambda r: -r["mean_score_prediction"])
    assert page.means == [round(r["mean_score_prediction"], 4) for r in expected]
    assert [a["data-rank"] for a in page.items] == [str(i) for i in range(1, 13)]
    # The thumbnails are the images in that order: brighter images score higher here.
    brightness = [np.asarray(decode_data_uri(u)).mean() for u in page.thumbs]
    assert all(a > b - 2 for a, b in zip(brightness, brightness[1:])), brightness
    assert page.failed == ["broken.jpg not a recognised image file: broken.jpg"]
    assert not external_urls(text, page)
    assert "script" in page.tags and text.count("<svg") == 12
    # mean ± sd on every card
    for r in expected[:3]:
        assert f"{r['mean_score_prediction']:.2f}</span> ± {r['sd_score_prediction']:.2f}" in text


def test_json_jsonl_and_csv_give_the_same_gallery(tmp_path):
    from nima.results import ResultWriter

    image_dir, results = scored_folder(tmp_path)
    pages = []
    for fmt in ("json", "jsonl", "csv"):
        preds = tmp_path / f"p.{fmt}"
        with ResultWriter(preds, fmt) as w:
            for r in results:
                w.write(r)
        report.gallery(preds, image_dir, tmp_path / f"{fmt}.html")
        page = Page((tmp_path / f"{fmt}.html").read_text())
        pages.append([(a["data-mean"], a["data-sd"]) for a in page.items] + page.failed)
    assert pages[0] == pages[1] == pages[2]
    assert len(pages[0]) == 13


def test_top_bottom_and_limit(tmp_path):
    image_dir, results = scored_folder(tmp_path)
    preds = write_json(tmp_path / "p.json", results)
    means = sorted((r["mean_score_prediction"] for r in results if "error" not in r),
                   reverse=True)
    sel = report.gallery(preds, image_dir, tmp_path / "g.html", top=3, bottom=2)
    page = Page((tmp_path / "g.html").read_text())
    assert page.means == [round(m, 4) for m in means[:3] + means[-2:]]
    assert [a["data-rank"] for a in page.items] == ["1", "2", "3", "11", "12"]
    assert page.headings[:2] == ["Top 3 of 12", "Bottom 2 of 12"]
    assert sel.n_failed == 1
    # Overlapping top and bottom: every image once.
    report.gallery(preds, image_dir, tmp_path / "g2.html", top=8, bottom=8)
    assert len(Page((tmp_path / "g2.html").read_text()).items) == 12
    # --limit reads only the first N entries of the file (here: the failure and 4 images).
    report.gallery(preds, image_dir, tmp_path / "g3.html", limit=5)
    page = Page((tmp_path / "g3.html").read_text())
    first4 = sorted((r["mean_score_prediction"] for r in results[1:5]), reverse=True)
    assert page.means == [round(m, 4) for m in first4]
    assert len(page.failed) == 1


def test_missing_image_file_gets_a_placeholder(tmp_path, caplog):
    image_dir, results = scored_folder(tmp_path)
    (image_dir / f"{results[1]['image_id']}.jpg").unlink()
    preds = write_json(tmp_path / "p.json", results)
    with caplog.at_level(logging.WARNING):
        report.gallery(preds, image_dir, tmp_path / "g.html")
    text = (tmp_path / "g.html").read_text()
    assert len(Page(text).items) == 12 and len(Page(text).thumbs) == 11
    assert text.count("image unavailable") == 1
    assert "1 of 12 images could not be read" in caplog.text


def test_contact_sheet_png(tmp_path):
    image_dir, results = scored_folder(tmp_path)
    preds = write_json(tmp_path / "p.json", results)
    out = tmp_path / "sheet.png"
    assert cli.main(["report", str(preds), "--image-source", str(image_dir), "-o", str(out),
                     "--top", "5", "--bottom", "5"]) == 0
    arr = png_ok(out, (1000, 500))
    assert arr.shape[0] < arr.shape[1]  # 10 images in 5 columns: 2 rows, wider than tall
    # Too many images for one sheet: one clear error, exit 1.
    results += [dict(r, image_id=f"{r['image_id']}x{i}") for i in range(9) for r in results[1:]]
    write_json(preds, results)
    assert cli.main(["report", str(preds), "--image-source", str(image_dir), "-o",
                     str(tmp_path / "big.png")]) == 1
    assert not (tmp_path / "big.png").exists()


# --- reading predictions files -------------------------------------------------------------------

def test_json_array_is_streamed_in_any_layout(tmp_path):
    _, results = scored_folder(tmp_path, n=5)
    one_line = tmp_path / "one.json"
    one_line.write_text(json.dumps(results))
    assert list(report.read_predictions(one_line)) == json.loads(one_line.read_text())
    # Chunk boundaries anywhere inside an object: tiny chunks must give the same entries.
    with open(one_line, encoding="utf-8") as f:
        assert list(result_files._json_array(f, one_line, chunk=7)) == results


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("[\n{\"image\": \"a.jpg\", \"predictions\": [0.1]}\n]", "10 numbers"),
    ("[\n{\"image\": \"a.jpg\", \"error\": \"x\"},\n", "not closed"),
    ("[{\"image\": \"a.jpg\", \"error\": \"x\"}]\n[{\"image\": \"b.jpg\", \"error\": \"x\"}]\n",
     "text after the closing ] of the JSON array"),
    ("{\"image\": \"a.jpg\", \"error\": \"x\"}\n{oops\n", "line 2 is not valid JSON"),
    ("name,score\na,1\n", "not a predictions CSV"),
    ("[]", "no predictions"),
    (b"\xff\xd8\xff\xe0 a JPEG given by mistake", "not UTF-8 text"),
    ('[{"image": "a.jpg", "predictions": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], '
     '"mean_score_prediction": "high"}]', "is not a number"),
])
def test_bad_predictions_file_is_one_clear_error(tmp_path, capsys, content, message):
    preds = tmp_path / "p.json"
    preds.write_bytes(content if isinstance(content, bytes) else content.encode())
    (tmp_path / "images").mkdir()
    code = cli.main(["report", str(preds), "--image-source", str(tmp_path / "images"), "-o",
                     str(tmp_path / "g.html")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("nima report: error: ") and message in err[-1], err
    assert not (tmp_path / "g.html").exists()


def test_non_utf8_file_names_survive_every_format(tmp_path):
    """A file name that is not valid UTF-8 (an old camera card, a Latin-1 archive): the CSV
    predict writes keeps its bytes; merge and report must read it back, and the page shows
    it (the bytes as U+FFFD) with its thumbnail."""
    import os

    image_dir, results = scored_folder(tmp_path, n=3)
    raw = os.fsencode(image_dir) + b"/caf\xe9.jpg"
    os.rename(image_dir / results[1]["image"], raw)
    name = os.fsdecode(b"caf\xe9.jpg")  # "caf\udce9.jpg"
    results[1] = dict(results[1], image=name, image_id=name[:-4])
    for fmt in ("csv", "jsonl"):
        with result_files.ResultWriter(tmp_path / f"p.{fmt}", fmt) as writer:
            for r in results:
                writer.write(r)
    assert b"caf\xe9.jpg" in (tmp_path / "p.csv").read_bytes()
    assert result_files.merge(tmp_path / "m.jsonl", [tmp_path / "p.csv"]) == (4, 1)
    assert [r["image"] for r in result_files.read_results(tmp_path / "m.jsonl")] == \
        [r["image"] for r in results]
    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"g-{fmt}.html"
        assert cli.main(["report", str(tmp_path / f"p.{fmt}"), "--image-source",
                         str(image_dir), "-o", str(out)]) == 0
        page = Page(out.read_text(encoding="utf-8"))
        assert len(page.items) == 3 and "caf\ufffd.jpg" in out.read_text(encoding="utf-8")
        assert "image unavailable" not in out.read_text(encoding="utf-8")
    assert cli.main(["report", str(tmp_path / "p.csv"), "--image-source", str(image_dir),
                     "-o", str(tmp_path / "sheet.png")]) == 0


def test_normalized_scores_are_not_filtered_out(tmp_path):
    """`nima predict --normalize minmax --range 0 100` results: the page's filter starts
    open over 0..100 (a fixed 1..10 filter hid every card above 10 on load), and each
    chart's mean line stays at its distribution's mean, inside the 1..10 axis."""
    import re

    image_dir, results = scored_folder(tmp_path, n=4)
    means = [r["mean_score_prediction"] for r in results if "error" not in r]
    lo, hi = min(means), max(means)
    normalized = [r if "error" in r else
                  dict(r, mean_score_prediction=round((r["mean_score_prediction"] - lo)
                                                     / (hi - lo) * 100, 6),
                       mean_score_raw=r["mean_score_prediction"]) for r in results]
    preds = write_json(tmp_path / "n.json", normalized)
    out = tmp_path / "g.html"
    assert cli.main(["report", str(preds), "--image-source", str(image_dir), "-o",
                     str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    low = float(re.search(r'id="min"[^>]* value="([-\d.]+)"', text).group(1))
    high = float(re.search(r'id="max"[^>]* value="([-\d.]+)"', text).group(1))
    assert low <= 0 and high >= 100
    lines = [float(x) for x in re.findall(r'<line x1="([-\d.]+)"', text)]
    raw = sorted((r["mean_score_raw"] for r in normalized if "error" not in r), reverse=True)
    assert lines == pytest.approx([(m - 1) * 16 + 8 for m in raw], abs=0.01)
    # Plain 1..10 scores keep the 1..10 filter.
    assert cli.main(["report", str(write_json(tmp_path / "p.json", results)), "--image-source",
                     str(image_dir), "-o", str(out)]) == 0
    assert 'id="min" type="number" min="1" max="10" step="0.1" value="1"' in out.read_text()
