"""Label and config files: every malformed input is one named error with its position.

Hand-written cases for each known way a file goes wrong, then hypothesis fuzzing: whatever
the input, the parsers raise LabelError / ConfigError / ImageError or succeed, nothing else.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_config
from nima import images, labels
from nima.config import Config
from nima.errors import ConfigError, ImageError, LabelError

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
GOOD_ROW = {"image_id": "a", "label": [1, 2, 3, 4, 5, 5, 4, 3, 2, 1]}


def load_text(tmp_path: Path, text: str | bytes) -> list[labels.Sample]:
    path = tmp_path / "samples.json"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return labels.load_samples(path)


# --- label files: each failure names the file and the row -----------------------------------

@pytest.mark.parametrize("text, message", [
    ('[{"image_id": "a", "label": [1,2,3]', "invalid JSON at line 1 column 36"),
    ('[\n{"image_id": "a",\n "label": [1,2,,3]}]', "invalid JSON at line 3 column 16"),
    ('{"image_id": "a"}', "expected a JSON array"),
    ("[]", "contains no samples"),
    ('[{"image_id": "a"}]', "row 0: missing key 'label'"),
    ('[{"image_id": "a", "label": [1,2,3]}]', "row 0 (image_id 'a'): label must be a list of "
                                              "10 numbers, got 3"),
    ('[{"image_id": "a", "label": "1 2 3"}]', "got str"),
    ('[{"image_id": "a", "label": [1,1,1,1,1,1,1,1,1,-1]}]', "must not be negative"),
    ('[{"image_id": "a", "label": [0,0,0,0,0,0,0,0,0,0]}]', "positive sum"),
    ('[{"image_id": "a", "label": [1,1,1,1,NaN,1,1,1,1,1]}]', "must be finite"),
    ('[{"image_id": "a", "label": [1,1,1,1,Infinity,1,1,1,1,1]}]', "must be finite"),
    ('[{"image_id": "a", "label": [1e308,1e308,1,1,1,1,1,1,1,1]}]', "sum is not finite"),
    ('[{"image_id": "a", "label": [1,1,1,1,1,1,1,1,1,' + "9" * 30 + "]}]", "below 2**53"),
    ('[{"image_id": "a", "label": [1,1,1,1,1,1,1,1,1,true]}]', "must be numbers, got true"),
    ('[{"image_id": 17, "label": [1,1,1,1,1,1,1,1,1,1]}]', "image_id must be a string"),
    ('[{"image_id": "", "label": [1,1,1,1,1,1,1,1,1,1]}]', "1 to 255 characters"),
    ('[{"image_id": "' + "x" * 256 + '", "label": [1,1,1,1,1,1,1,1,1,1]}]', "1 to 255"),
    ('[{"image_id": "a", "label": [1,1,1,1,1,1,1,1,1,1]},\n'
     ' {"image_id": "b", "label": [1,1,1,1,1,1,1,1,1,1]},\n'
     ' {"image_id": "a", "label": [2,1,1,1,1,1,1,1,1,1]}]',
     "row 2 (image_id 'a'): duplicate image_id, first seen in row 0"),
    ("[" + "[" * 100_000 + "]" * 100_001, "nested too deeply"),
    ("[" + "1" * 5000 + "]", "invalid JSON"),
])
def test_bad_label_file(tmp_path, text, message):
    with pytest.raises(LabelError) as e:
        load_text(tmp_path, text)
    assert message in str(e.value)
    assert str(tmp_path / "samples.json") in str(e.value)


# "a/b" is a valid id since images may live in subfolders (LIVE's jp2k/img2); its parts may not
@pytest.mark.parametrize("image_id", ["../etc/passwd", "..", ".", "a/../b", "a//b", "a/",
                                      "/abs", "a\\b", "..\\..\\win", "nul\x00byte"])
def test_path_traversal_ids_rejected(tmp_path, image_id):
    row = {**GOOD_ROW, "image_id": image_id}
    with pytest.raises(LabelError, match="row 1: .*plain file name"):
        load_text(tmp_path, json.dumps([GOOD_ROW, row]))


@pytest.mark.parametrize("image_id", ["new\nline", "tab\there", "bell\x07", "del\x7f"])
def test_control_characters_in_ids_rejected(tmp_path, image_id):
    with pytest.raises(LabelError, match="row 0: .*control characters"):
        load_text(tmp_path, json.dumps([{**GOOD_ROW, "image_id": image_id}]))


def test_harmless_odd_ids_accepted(tmp_path):
    ids = ["..hidden-ish", "a..b", "with space", "ünïcödé", "-dash", "x" * 255]
    samples = load_text(tmp_path, json.dumps([{**GOOD_ROW, "image_id": i} for i in ids]))
    assert [s.image_id for s in samples] == ids


def test_not_utf8_and_bom(tmp_path):
    with pytest.raises(LabelError, match=r"not UTF-8 text \(byte 18 is 0xe9\)"):
        load_text(tmp_path, b'[{"image_id": "caf\xe9", "label": [1,1,1,1,1,1,1,1,1,1]}]')
    # a byte-order mark (Windows editors) is fine
    samples = load_text(tmp_path, b"\xef\xbb\xbf" + json.dumps([GOOD_ROW]).encode())
    assert samples[0].image_id == "a" and math.isclose(samples[0].label.sum(), 1.0)


def test_missing_directory_fifo_and_huge_files(tmp_path):
    import os

    with pytest.raises(LabelError, match="samples file not found"):
        labels.load_samples(tmp_path / "nope.json")
    with pytest.raises(LabelError, match="not a regular file"):
        labels.load_samples(tmp_path)
    os.mkfifo(tmp_path / "fifo.json")  # reading it would block forever
    with pytest.raises(LabelError, match="not a regular file"):
        labels.load_samples(tmp_path / "fifo.json")
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:  # sparse: costs no disk, and must not be read
        f.truncate(labels.MAX_FILE_BYTES + 1)
    with pytest.raises(LabelError, match="more than the limit"):
        labels.load_samples(huge)
    with pytest.raises(ConfigError, match="more than the limit"):
        Config.load(huge)


def test_large_label_file_error_names_the_row(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"image_id": str(i), "label": [int(v) for v in rng.integers(0, 50, 10)]}
            for i in range(30_000)]
    rows[-1]["label"] = [0] * 10
    with pytest.raises(LabelError, match="row 29999 .*positive sum"):
        load_text(tmp_path, json.dumps(rows))


# --- config files ----------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"learning_rate_dens": 1e-3}, "unknown key 'learning_rate_dens'"),
    ({"batch_size": "8"}, "key 'batch_size' must be an integer, got \"8\""),
    ({"batch_size": 8.0}, "key 'batch_size' must be an integer"),
    ({"batch_size": 0}, "between 1 and 65536"),
    ({"random_crop": 1}, "must be true or false"),
    ({"dropout_rate": float("nan")}, "must be finite"),
    ({"learning_rate_dense": -1}, "must be in (0, 10]"),
    ({"epochs_train_dense": 0, "epochs_train_all": 0}, "at least 1"),
    ({"epochs_train_all": 10**12}, "between 0 and 100000"),
    ({"seed": -1}, "between 0 and 2**31 - 1"),
    ({"input_size": 16}, "between 32 and 2048"),
    ({"resize_size": 32, "input_size": 64}, "at least input_size"),
    ({"base_model_args": {"weights": "imagenet"}}, "must not set 'weights'"),
    ({"task": "beauty"}, "one of aesthetic, technical"),
])
def test_bad_config(tmp_path, change, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config(**change)))
    with pytest.raises(ConfigError) as e:
        Config.load(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_config_file_errors(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "base_model_name": "MobileNet",\n  "batch_size": 8,,\n}')
    with pytest.raises(ConfigError, match="invalid JSON at line 3 column 19"):
        Config.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object, got list"):
        Config.load(path)
    path.write_text('{"batch_size": 8}')
    with pytest.raises(ConfigError, match="missing required key 'base_model_name'"):
        Config.load(path)


def test_config_save_is_atomic_and_round_trips(tmp_path):
    cfg = Config.from_dict(tiny_config())
    cfg.save(tmp_path / "c.json")
    assert Config.load(tmp_path / "c.json") == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temp file left behind


# --- fuzzing ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=12), inner,
                                                                  max_size=6),
    max_leaves=40)
numbers = st.integers(-5, 10**20) | st.floats(allow_nan=True, allow_infinity=True)
near_rows = st.fixed_dictionaries(
    {"image_id": st.one_of(st.text(max_size=12), st.sampled_from(["..", "a/b", "ok"]),
                           json_values),
     "label": st.one_of(st.lists(numbers, min_size=9, max_size=11), json_values)})


@FUZZ
@given(st.one_of(json_values, st.lists(st.one_of(near_rows, json_values), max_size=5)))
def test_fuzz_parse_samples(data):
    try:
        samples = labels.parse_samples(data)
    except LabelError as e:
        assert str(e) and "\n" not in str(e)
        return
    for s in samples:  # whatever passes is usable: a finite distribution and a safe name
        assert np.isfinite(s.label).all() and math.isclose(s.label.sum(), 1.0)
        assert labels.validate_image_id(s.image_id) is None


config_keys = st.sampled_from(sorted(tiny_config()) + ["task", "emd_r", "distribution",
                                                       "mixed_precision", "decay_dense",
                                                       "max_missing_fraction", "typo"])


@FUZZ
@given(st.dictionaries(config_keys, json_values | numbers, max_size=6), st.booleans())
def test_fuzz_config_from_dict(changes, on_top_of_valid):
    data = {**tiny_config(), **changes} if on_top_of_valid else changes
    try:
        cfg = Config.from_dict(data)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert Config.from_dict(cfg.to_dict()) == cfg


def _mutations(seed_bytes: bytes):
    """Byte strings near a valid file: truncated, bytes flipped, pieces inserted."""
    n = len(seed_bytes)
    return st.one_of(
        st.binary(max_size=300),
        st.integers(0, n).map(lambda k: seed_bytes[:k]),
        st.tuples(st.integers(0, max(n - 1, 0)), st.binary(min_size=1, max_size=8)).map(
            lambda t: seed_bytes[:t[0]] + t[1] + seed_bytes[t[0] + len(t[1]):]),
        st.tuples(st.integers(0, n), st.binary(max_size=8)).map(
            lambda t: seed_bytes[:t[0]] + t[1] + seed_bytes[t[0]:]),
    )


VALID_SAMPLES = json.dumps([GOOD_ROW, {**GOOD_ROW, "image_id": "b"}]).encode()
VALID_CONFIG = json.dumps(tiny_config()).encode()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=_mutations(VALID_SAMPLES))
def test_fuzz_load_samples_from_bytes(scratch, data):
    path = scratch / "samples.json"
    path.write_bytes(data)
    try:
        labels.load_samples(path)
    except LabelError as e:
        assert "\n" not in str(e)


@FUZZ
@given(data=_mutations(VALID_CONFIG))
def test_fuzz_config_load_from_bytes(scratch, data):
    path = scratch / "config.json"
    path.write_bytes(data)
    try:
        Config.load(path)
    except ConfigError as e:
        assert "\n" not in str(e)


def _image_bytes(fmt: str) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@FUZZ
@given(data=st.one_of(*[_mutations(_image_bytes(f)) for f in ("JPEG", "PNG", "GIF", "BMP",
                                                               "TIFF", "WEBP")]))
def test_fuzz_image_decoder(scratch, data):
    path = scratch / "fuzz.img"
    path.write_bytes(data)
    try:
        arr = images.load_image(path, 32)
    except ImageError as e:
        assert "\n" not in str(e)
        return
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
