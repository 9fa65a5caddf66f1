"""The gallery in a real browser: headless Chromium runs its JavaScript and draws it.

Chromium's --dump-dom prints the DOM after scripts ran: the page's script sets data-ready and
data-shown on <body>, and hides filtered-out items, so the filter is checked as a user would
see it (bounds from the URL: gallery.html#min=..&max=..). Console messages (errors included)
go to stderr with --enable-logging=stderr; the page itself logs nothing, so any CONSOLE line
fails the test. A page with a deliberate error proves that this detection works.

Needs Debian's `chromium` (./run-tests installs it when CI=true); skipped loudly without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_helpers import Page, scored_folder, write_json

from nima import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="NO CHROMIUM: the gallery browser test did not run "
    "(apt-get install -y chromium; ./run-tests does it when CI=true)")


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def body_attrs(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))


def test_console_error_detection_works(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body><script>noSuchFunction();</script></body></html>")
    out = chromium(tmp_path, bad.as_uri(), "--dump-dom")
    assert any("noSuchFunction" in line for line in console_lines(out.stderr)), out.stderr[-2000:]


def test_gallery_in_headless_chromium(tmp_path):
    image_dir, results = scored_folder(tmp_path)
    out = tmp_path / "gallery.html"
    report.gallery(write_json(tmp_path / "p.json", results), image_dir, out)
    means = [r["mean_score_prediction"] for r in results if "error" not in r]

    # All items, script ran without a console message.
    run = chromium(tmp_path, out.as_uri(), "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert console_lines(run.stderr) == []
    assert body_attrs(run.stdout) == {"data-shown": "12", "data-ready": "true"}
    assert len(Page(run.stdout).items) == 12

    # The filter: bounds from the URL hide the items outside them.
    lo, hi = 4.0, 7.5
    expected = sum(lo <= round(m, 4) <= hi for m in means)
    assert 0 < expected < 12  # the range really filters something
    run = chromium(tmp_path, f"{out.as_uri()}#min={lo}&max={hi}", "--dump-dom")
    assert console_lines(run.stderr) == []
    assert body_attrs(run.stdout)["data-shown"] == str(expected)
    page = Page(run.stdout)
    visible = [float(a["data-mean"]) for a in page.items if "hidden" not in a]
    assert len(visible) == expected and all(lo <= m <= hi for m in visible)

    # What a person sees: a screenshot with photos, bars and text, not a blank page.
    shot = tmp_path / "gallery.png"
    run = chromium(tmp_path, out.as_uri(), "--hide-scrollbars", "--window-size=1280,900",
                   f"--screenshot={shot}")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1280, 900)
        arr = np.asarray(img.convert("RGB"))
    colours = len(np.unique(arr.reshape(-1, 3), axis=0))
    assert colours > 1000, colours  # noisy photo thumbnails, not a flat background
    assert (arr.std(axis=(0, 1)) > 20).all()
    # The bar colour (#6d8fbf) is drawn: the SVG distributions rendered.
    assert np.all(arr == (0x6d, 0x8f, 0xbf), axis=-1).sum() > 2000
