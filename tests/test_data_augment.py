"""Batched pad-4 crop + flip: every output is an exact crop of the zero-padded input."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules import random_crop_flip


def _batch(n=200, h=32, w=32, seed=0):
    # Values 1..255: no image pixel can be mistaken for the zero padding, so the crop is identifiable.
    return np.random.default_rng(seed).integers(1, 256, size=(n, h, w, 3), dtype=np.uint8)


def _recover(images, out, pad=4):
    """For each output image, the (dy, dx, flipped) whose crop of the padded input it equals exactly."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    found = np.full((n, 3), -1)
    hits = np.zeros(n, dtype=int)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            for flipped, candidate in ((0, crop), (1, crop[:, :, ::-1])):
                match = (candidate == out).all(axis=(1, 2, 3))
                found[match] = (dy, dx, flipped)
                hits += match
    return found, hits


def test_every_output_is_one_exact_crop_and_half_are_flipped():
    images = _batch()
    before = images.copy()
    out = random_crop_flip(images, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == images.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(images, before)  # input untouched
    found, hits = _recover(images, out)
    assert np.all(hits == 1), "each output must equal exactly one of the 81 x 2 crops"
    dy, dx, flipped = found.T
    # Offsets span the whole inclusive range [0, 2*pad]: crops flush against either edge occur.
    assert dy.min() == 0 and dy.max() == 8 and dx.min() == 0 and dx.max() == 8
    assert len(np.unique(dy)) == 9 and len(np.unique(dx)) == 9
    assert 70 <= flipped.sum() <= 130  # p = 0.5 over 200 samples
    assert np.any((dy != 4) | (dx != 4))


def test_no_flips_when_flip_is_false():
    images = _batch(seed=1)
    out = random_crop_flip(images, np.random.default_rng(1), flip=False)
    found, hits = _recover(images, out)
    assert np.all(hits == 1)
    assert found[:, 2].sum() == 0


def test_documented_draw_order():
    # The contract both sides rely on: offsets first, then the flip coins.
    images = _batch(n=50, seed=2)
    rng = np.random.default_rng(7)
    expected_offsets = rng.integers(0, 9, size=(50, 2))
    expected_flips = rng.random(50) < 0.5
    found, _ = _recover(images, random_crop_flip(images, np.random.default_rng(7)))
    np.testing.assert_array_equal(found[:, :2], expected_offsets)
    np.testing.assert_array_equal(found[:, 2].astype(bool), expected_flips)


def test_deterministic_for_a_seed():
    images = _batch(n=64, seed=3)
    a = random_crop_flip(images, np.random.default_rng(42))
    b = random_crop_flip(images, np.random.default_rng(42))
    c = random_crop_flip(images, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_pad_zero_without_flip_is_identity_and_other_pads_work():
    images = _batch(n=8, seed=4)
    np.testing.assert_array_equal(random_crop_flip(images, np.random.default_rng(0), pad=0, flip=False), images)
    out = random_crop_flip(images, np.random.default_rng(0), pad=2)
    found, hits = _recover(images, out, pad=2)
    assert np.all(hits == 1) and found[:, :2].max() <= 4


def test_non_square_and_rejects_non_batches():
    images = _batch(n=10, h=16, w=24, seed=5)
    out = random_crop_flip(images, np.random.default_rng(0))
    assert out.shape == (10, 16, 24, 3)
    found, hits = _recover(images, out)
    assert np.all(hits == 1)
    with pytest.raises(ValueError):
        random_crop_flip(images[0], np.random.default_rng(0))
