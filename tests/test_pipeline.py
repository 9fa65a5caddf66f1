"""tf.data input pipelines on images whose pixels say where they come from.

Pixel (y, x) of image i holds (6x, 6y, 25i), saved as lossless PNG: every training crop can
be traced back to its image, its offset and its orientation. So the tests see what training
really gets: each crop is a window of its own image, paired with its own label; crops move
and flips happen when configured (and only then); each epoch is a new order of every image.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nima import images
from nima.pipeline import eval_dataset, train_dataset

N, SIZE, INPUT = 10, 40, 32
EPOCHS = 20


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """(paths, one-hot labels: image i has all its votes in bin i, full pixel arrays)."""
    d = tmp_path_factory.mktemp("coded")
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    paths, pixels = [], []
    for i in range(N):
        arr = np.stack([6 * x, 6 * y, np.full_like(x, 25 * i)], axis=-1).astype(np.uint8)
        paths.append(d / f"coded{i}.png")
        Image.fromarray(arr).save(paths[-1])
        pixels.append(arr)
    return paths, np.eye(10), pixels


def trace(image: np.ndarray, label: np.ndarray, pixels: list[np.ndarray]) -> tuple:
    """(image index, oy, ox, flipped) of a training crop; asserts it is exactly that window."""
    i = int(np.argmax(label))
    assert (image[..., 2] == 25 * i).all(), "the crop comes from another image than its label"
    flipped = image[0, 0, 0] > image[0, -1, 0]
    oy = int(image[0, 0, 1]) // 6
    ox = int(image[0, -1 if flipped else 0, 0]) // 6
    window = pixels[i][oy:oy + INPUT, ox:ox + INPUT]
    np.testing.assert_array_equal(image, window[:, ::-1] if flipped else window)
    return i, oy, ox, flipped


def epochs(ds, n: int = EPOCHS):
    for _ in range(n):
        yield [(img, lab, w) for batch in ds.as_numpy_iterator() for img, lab, w in zip(*batch)]


def test_crops_flips_and_order_of_training_batches(coded):
    paths, labels, pixels = coded
    ds = train_dataset(paths, labels, input_size=INPUT, resize_size=SIZE, batch_size=4, seed=3)
    seen, orders = [], []
    for epoch in epochs(ds):
        traced = [trace(img, lab, pixels) for img, lab, _ in epoch]
        assert all(w == 1.0 for _, _, w in epoch)
        order = tuple(t[0] for t in traced)
        assert sorted(order) == list(range(N))  # every image once per epoch
        orders.append(order)
        seen += traced
    # Reshuffled every epoch: an image's place moves about as far as in independent random
    # orders (3.3 on average for 10 images), not just by the few places that parallel decoding
    # may swap in one fixed order.
    places = np.array([np.argsort(order) for order in orders])
    assert np.abs(np.diff(places, axis=0)).mean() > 2.0
    # Offsets span the whole 0..8 range on both axes, independently; about half are flipped.
    assert {t[1] for t in seen} == {t[2] for t in seen} == set(range(SIZE - INPUT + 1))
    assert len({(t[1], t[2]) for t in seen}) > 30
    assert 0.3 < np.mean([t[3] for t in seen]) < 0.7


def test_augmentations_are_off_when_configured(coded):
    paths, labels, pixels = coded
    no_flip = train_dataset(paths, labels, input_size=INPUT, resize_size=SIZE, batch_size=4,
                            horizontal_flip=False, seed=3)
    seen = [trace(img, lab, pixels) for epoch in epochs(no_flip, 5) for img, lab, _ in epoch]
    assert not any(t[3] for t in seen) and len({(t[1], t[2]) for t in seen}) > 5
    # No random crop: the whole image squashed to the input size, as prediction sees it.
    plain = train_dataset(paths, labels, input_size=INPUT, resize_size=SIZE, batch_size=4,
                          random_crop=False, horizontal_flip=False, seed=3)
    for img, lab, _ in next(epochs(plain, 1)):
        i = int(np.argmax(lab))
        np.testing.assert_array_equal(img, images.load_image(paths[i], INPUT))


def test_failed_images_weigh_nothing_and_eval_keeps_order(coded, tmp_path):
    paths, labels, pixels = coded
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    mixed = paths[:3] + [broken] + paths[3:]
    mixed_labels = np.concatenate([labels[:3], np.full((1, 10), 0.1), labels[3:]])
    ds = train_dataset(mixed, mixed_labels, input_size=INPUT, resize_size=SIZE, batch_size=4)
    for img, lab, w in next(epochs(ds, 1)):
        assert w == (0.0 if lab.max() < 0.5 else 1.0)
        if w:
            trace(img, lab, pixels)
    batches = list(eval_dataset(mixed, mixed_labels, input_size=INPUT, batch_size=3)
                   .as_numpy_iterator())
    got_images = np.concatenate([b[0] for b in batches])
    got_labels = np.concatenate([b[1] for b in batches])
    errors = np.concatenate([b[2] for b in batches])
    np.testing.assert_allclose(got_labels, mixed_labels, rtol=1e-6)
    assert [bool(e) for e in errors] == [False] * 3 + [True] + [False] * 7
    assert str(broken).encode() in errors[3]
    for k, path in enumerate(mixed):
        expected = 0 if path == broken else images.load_image(path, INPUT)
        np.testing.assert_array_equal(got_images[k], expected)
    weighted = list(eval_dataset(mixed, mixed_labels, input_size=INPUT, batch_size=7,
                                 weighted=True).as_numpy_iterator())
    assert weighted[0][2].tolist() == [1, 1, 1, 0, 1, 1, 1]
    assert weighted[1][2].tolist() == [1] * 4


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
def test_pipelines_resize_with_the_models_method(coded, method):
    """A model trained on NEAREST resizes (Keras 2 load_img) must get them in training and
    validation too: both pipelines resize each file exactly as images.load_image does."""
    paths, labels, _ = coded
    size = 24  # a downscale from 40, where the methods differ
    want = [images.load_image(p, size, method) for p in paths]
    assert method == "bilinear" or not np.array_equal(want[0], images.load_image(paths[0], size))
    got = [img for batch in eval_dataset(paths, labels, input_size=size, resize_method=method,
                                         batch_size=4).as_numpy_iterator() for img in batch[0]]
    np.testing.assert_array_equal(np.stack(got), np.stack(want))
    train = train_dataset(paths, labels, input_size=size, resize_size=None, resize_method=method,
                          batch_size=4, random_crop=False, horizontal_flip=False)
    for img, label, _ in zip(*next(iter(train.unbatch().batch(N).as_numpy_iterator()))):
        np.testing.assert_array_equal(img, want[int(np.argmax(label))])
