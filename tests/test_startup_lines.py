"""The command line without TensorFlow's start-up lines (abseil prints them before logging is
initialised, so TF_CPP_MIN_LOG_LEVEL does not silence them); everything else on stderr stays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, make_images, tiny_config
from nima.kerasbackend import NATIVE_NOISE, native_stderr_filtered

IMPORT_TF = "import tensorflow as tf; tf.config.list_physical_devices('GPU')"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                               "KERAS_BACKEND": "tensorflow"})


def _noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NATIVE_NOISE.search(line)]


def test_tensorflow_prints_its_start_up_lines_despite_the_log_level():
    """The premise: if a TensorFlow release stops printing them, the filter can go."""
    lines = _noise(_python(IMPORT_TF).stderr)
    assert any("absl::InitializeLog" in x for x in lines), lines
    assert any("oneDNN custom operations" in x for x in lines), lines


def test_quiet_start_drops_them_wherever_tensorflow_is_first_imported():
    for first in (IMPORT_TF, "import keras; keras.ops.ones(2)"):
        r = _python("from nima import kerasbackend; kerasbackend.quiet_tensorflow_start(); "
                    f"{first}; import sys; print('after', file=sys.stderr)")
        assert r.returncode == 0, r.stderr
        assert _noise(r.stderr) == [] and r.stderr.strip().endswith("after"), r.stderr


FILTERED = """
import os, sys
from nima.kerasbackend import native_stderr_filtered
with native_stderr_filtered():
    os.write(2, b"native one\\n")
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                b"written to STDERR\\n")
    print("python two", file=sys.stderr)
    os.write(2, b"E0000 00:00:1796388679.136211   24682 cuda_platform.cc:52] failed call "
                b"to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\\n")
    # A driver that is there but unusable is news, not noise.
    os.write(2, b"E0000 00:00:1796388679.136211   24682 cuda_platform.cc:52] failed call "
                b"to cuInit: CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE (804)\\n")
    os.write(2, b"native three, no newline")
print(" and after", file=sys.stderr)
"""


def test_the_filter_keeps_every_other_line_in_order():
    r = _python(FILTERED)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ("native one\npython two\nE0000 00:00:1796388679.136211   24682 "
                        "cuda_platform.cc:52] failed call to cuInit: "
                        "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE (804)\n"
                        "native three, no newline and after\n")


def test_the_filter_passes_an_exception_through_and_still_writes(capfd):
    try:
        with native_stderr_filtered():
            os.write(2, b"before the error\n")
            raise ValueError("boom")
    except ValueError as e:
        assert str(e) == "boom"
    assert capfd.readouterr().err == "before the error\n"


def test_nima_train_says_where_it_trains_without_the_start_up_lines(tmp_path: Path):
    rows = make_images(tmp_path / "images", 6, size=(40, 40))
    (tmp_path / "samples.json").write_text(json.dumps(rows))
    (tmp_path / "config.json").write_text(json.dumps(tiny_config(epochs_train_all=0)))
    r = subprocess.run([sys.executable, "-m", "nima", "train", "--config-file", "config.json",
                        "--samples-file", "samples.json", "--image-dir", "images",
                        "--job-dir", "job"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=600, env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert _noise(r.stderr) == [], r.stderr[:3000]
    assert "distribution: none, 1 replica(s), no GPU visible: on the CPU" in r.stderr
    assert (tmp_path / "job" / "model.keras").is_file()
