"""Result files on a really full disk (a 64 KiB tmpfs), not a mocked one.

A write that does not fit must raise WriteError (one sentence), leave the previous file
byte-for-byte intact, and leave no temporary file behind (it would keep the disk full).
Needs root to mount; skipped, with the reason printed, otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_images, tiny_config
from nima import files
from nima.config import Config
from nima.files import WriteError

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
PREVIOUS = "previous complete results\n"


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs holding `results.json` (PREVIOUS) and a filler leaving 12 KiB free."""
    if os.geteuid() != 0:
        pytest.skip("NOT TESTED: the full-disk tests need root to mount a 64 KiB tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"NOT TESTED: cannot mount a tmpfs ({r.stderr.strip()})")
    try:
        (mnt / "results.json").write_text(PREVIOUS)
        _leave_free(mnt, 12 * 1024)  # tmpfs allocates 4 KiB pages: room for a small file
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _leave_free(mnt: Path, n: int) -> None:
    filler = mnt / "filler"
    filler.write_bytes(b"")
    st = os.statvfs(mnt)
    filler.write_bytes(b"x" * (st.f_bavail * st.f_frsize - n))


def _unchanged(mnt: Path) -> None:
    assert (mnt / "results.json").read_text() == PREVIOUS
    assert sorted(p.name for p in mnt.iterdir()) == ["filler", "results.json"]


def test_result_files_get_the_usual_permissions(tmp_path):
    """Not mkstemp's 0600: a file written by a root container must be readable on the host."""
    umask = os.umask(0)
    os.umask(umask)
    files.write_text(tmp_path / "a.txt", "x")
    with files.atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
    for name in ("a.txt", "b.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_text_and_json(full_disk):
    for write in (lambda p: files.write_text(p, "y" * 20_000),
                  lambda p: files.write_json(p, {"rows": list(range(5000))})):
        with pytest.raises(WriteError, match="results.json: disk full; the previous file is "
                                             "unchanged"):
            write(full_disk / "results.json")
        _unchanged(full_disk)
    files.write_text(full_disk / "results.json", "small fits\n")  # space was given back
    assert (full_disk / "results.json").read_text() == "small fits\n"


def test_streamed_writes(full_disk):
    with pytest.raises(WriteError, match="disk full"):
        with files.atomic_open(full_disk / "results.json", "w") as f:
            for i in range(2000):
                f.write(f"line {i}\n")
    _unchanged(full_disk)


def test_keras_model_and_weights(full_disk):
    import keras

    model = keras.Sequential([keras.Input((100,)), keras.layers.Dense(200)])  # 80 KB of weights
    # files.save_keras is how the trainer and calibrate save: a full disk must be a clean
    # WriteError before HDF5 runs out of space (HDF5 would crash the process at exit).
    for name, weights_only in (("results.json", True), ("m.keras", False)):
        with pytest.raises(WriteError, match="disk full"):
            files.save_keras(model, full_disk / name, weights_only=weights_only)
        _unchanged(full_disk)


def test_config_save(full_disk):
    _leave_free(full_disk, 1024)  # less than one page
    with pytest.raises(WriteError):
        Config.from_dict(tiny_config()).save(full_disk / "results.json")
    _unchanged(full_disk)


def test_predict_cli_on_full_disk(full_disk, tmp_path):
    """`nima predict --predictions-file` on a full disk: one error line, old results kept."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    model.save(tmp_path / "tiny.keras")
    make_images(tmp_path / "images", 150)  # ~27 KB of results
    r = subprocess.run([sys.executable, "-m", "nima", "predict", "--image-source",
                        str(tmp_path / "images"), "--model", str(tmp_path / "tiny.keras"),
                        "--predictions-file", str(full_disk / "results.json")],
                       capture_output=True, text=True, env=ENV, timeout=300)
    leftovers = sorted(p.name for p in full_disk.iterdir())
    assert (full_disk / "results.json").read_text() == PREVIOUS
    # The streamed partial results stay for --resume once space is freed, with the record of
    # the run that made them when there was room for it; no temp file is left.
    assert leftovers in (["filler", "results.json"],
                         ["filler", "results.json", "results.json.partial"],
                         ["filler", "results.json", "results.json.partial",
                          "results.json.partial.run.json"]), leftovers
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "nima predict: error: cannot write" in r.stderr and "disk full" in r.stderr
