"""Data sources: digits, synthetic, image folders, name checks, and the package's import boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import datamodules
from datamodules import DATASETS, DataError, ImageDataModule
from datamodules import sources


def _check_layout(images, labels):
    assert images.dtype == np.uint8
    assert images.shape[1:] == (32, 32, 3)
    assert images.flags.c_contiguous
    assert labels.dtype == np.int64
    assert labels.shape == (len(images),)


# ----------------------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def digits():
    return sources.load("digits", "/nonexistent")  # needs no data_dir: it ships with scikit-learn


def test_digits_shapes_classes_and_no_flip(digits):
    _check_layout(digits.train_images, digits.train_labels)
    _check_layout(digits.test_images, digits.test_labels)
    assert len(digits.train_images) == 1437 and len(digits.test_images) == 360  # 20% of 1797 held out
    assert digits.classes == tuple(str(d) for d in range(10))
    assert digits.hflip is False
    assert set(np.unique(digits.train_labels)) == set(range(10))


def test_digits_split_is_stratified_and_fixed(digits):
    all_counts = np.bincount(load_digits().target, minlength=10)
    test_counts = np.bincount(digits.test_labels, minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1)
    again = sources.load("digits", ".")
    np.testing.assert_array_equal(again.train_images, digits.train_images)
    np.testing.assert_array_equal(again.test_labels, digits.test_labels)


def test_digits_upscaled_by_pixel_repetition(digits):
    images = np.concatenate([digits.train_images, digits.test_images])
    labels = np.concatenate([digits.train_labels, digits.test_labels])
    blocks = images.reshape(-1, 8, 4, 8, 4, 3)
    # Every 4x4 block is one constant value, the same in all three channels.
    np.testing.assert_array_equal(blocks, np.broadcast_to(blocks[:, :, :1, :, :1, :1], blocks.shape))
    small = blocks[:, :, 0, :, 0, 0]
    ref = load_digits()
    expected = np.rint(ref.images * 255 / 16).astype(np.uint8)
    assert expected.max() == 255 and small.max() == 255
    # Train + test is exactly the scikit-learn set, each image with its own label.
    assert len(small) == len(expected) == 1797
    reference = {(img.tobytes(), int(y)) for img, y in zip(expected, ref.target)}
    assert all((img.tobytes(), int(y)) in reference for img, y in zip(small, labels))
    assert sorted(small.reshape(1797, -1).tolist()) == sorted(expected.reshape(1797, -1).tolist())


def test_digits_datamodule_val_split_is_ten_percent():
    dm = ImageDataModule("digits", batch_size=32)
    dm.prepare_data()  # nothing to download; must not fail offline
    dm.setup()
    assert len(dm.val_images) == round(0.1 * 1437) == 144
    assert dm.num_train == 1437 - 144
    assert len(dm.test_images) == 360
    assert dm.num_classes == 10 and dm.hflip is False
    assert dm.steps_per_epoch == (1437 - 144) // 32


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_sizes_and_determinism():
    s = sources.load("synthetic", ".", seed=3, train_size=50, test_size=20, num_classes=7)
    _check_layout(s.train_images, s.train_labels)
    _check_layout(s.test_images, s.test_labels)
    assert (len(s.train_images), len(s.test_images)) == (50, 20)
    assert s.classes == tuple(str(c) for c in range(7)) and s.hflip is True
    assert s.train_labels.min() >= 0 and s.train_labels.max() < 7
    again = sources.load("synthetic", ".", seed=3, train_size=50, test_size=20, num_classes=7)
    np.testing.assert_array_equal(again.train_images, s.train_images)
    other = sources.load("synthetic", ".", seed=4, train_size=50, test_size=20, num_classes=7)
    assert not np.array_equal(other.train_images, s.train_images)


def test_synthetic_defaults_and_datamodule_sizes():
    s = sources.load("synthetic", ".")
    assert (len(s.train_images), len(s.test_images), len(s.classes)) == (10_000, 2_000, 10)
    dm = ImageDataModule("synthetic", batch_size=16, synthetic_train_size=200, synthetic_test_size=30)
    dm.setup()
    assert (dm.num_train, len(dm.val_images), len(dm.test_images)) == (180, 20, 30)


# ----------------------------------------------------------------------------- image folder

def _png(path: Path, array: np.ndarray, mode: str | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return array


def _rgb(rng, h=32, w=32):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_imagefolder_loads_resizes_and_converts(tmp_path):
    rng = np.random.default_rng(0)
    cat0 = _png(tmp_path / "train/cat/0.png", _rgb(rng))
    big = _png(tmp_path / "train/cat/1.png", _rgb(rng, 48, 64))  # 64 wide, 48 high: gets resized
    grey = _png(tmp_path / "train/dog/0.png", rng.integers(0, 256, size=(32, 32), dtype=np.uint8))
    (tmp_path / "train/dog/notes.txt").write_text("not an image")  # ignored
    test_dog = _png(tmp_path / "test/dog/0.png", _rgb(rng))
    _png(tmp_path / "test/cat/0.png", _rgb(rng))

    s = sources.load("imagefolder", tmp_path)
    _check_layout(s.train_images, s.train_labels)
    assert s.classes == ("cat", "dog") and s.hflip is True
    np.testing.assert_array_equal(s.train_labels, [0, 0, 1])
    np.testing.assert_array_equal(s.train_images[0], cat0)  # 32x32 stays bit-exact
    resized = np.asarray(Image.fromarray(big).resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(s.train_images[1], resized)
    assert not np.array_equal(s.train_images[1], big[:32, :32])
    np.testing.assert_array_equal(s.train_images[2], np.repeat(grey[..., None], 3, axis=-1))
    np.testing.assert_array_equal(s.test_labels, [0, 1])
    np.testing.assert_array_equal(s.test_images[1], test_dog)


def test_imagefolder_falls_back_to_val(tmp_path):
    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        _png(tmp_path / f"train/{cls}/0.png", _rgb(rng))
    val_b = _png(tmp_path / "val/b/x.png", _rgb(rng))
    (tmp_path / "val/a").mkdir()  # a class may be empty in val/ (untested), but must exist
    s = sources.load("imagefolder", tmp_path)
    assert s.classes == ("a", "b")
    np.testing.assert_array_equal(s.test_labels, [1])
    np.testing.assert_array_equal(s.test_images[0], val_b)


def test_imagefolder_mismatched_classes(tmp_path):
    rng = np.random.default_rng(2)
    for cls in ("a", "b"):
        _png(tmp_path / f"train/{cls}/0.png", _rgb(rng))
    for cls in ("a", "c"):
        _png(tmp_path / f"test/{cls}/0.png", _rgb(rng))
    with pytest.raises(DataError, match="differ") as err:
        sources.load("imagefolder", tmp_path)
    assert "'b'" in str(err.value) and "'c'" in str(err.value) and "--data-dir" in str(err.value)


def test_imagefolder_empty_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match="train") as err:  # nothing at all
        sources.load("imagefolder", tmp_path)
    assert "--data-dir" in str(err.value)

    (tmp_path / "train/a").mkdir(parents=True)
    with pytest.raises(DataError, match=str(tmp_path / "train" / "a")):  # empty class folder, named
        sources.load("imagefolder", tmp_path)

    rng = np.random.default_rng(3)
    _png(tmp_path / "train/a/0.png", _rgb(rng))
    with pytest.raises(DataError, match="neither test/ nor val/"):
        sources.load("imagefolder", tmp_path)

    (tmp_path / "test/a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images") as err:  # test/ exists but holds nothing
        sources.load("imagefolder", tmp_path)
    assert str(tmp_path / "test") in str(err.value)


def test_imagefolder_unreadable_image(tmp_path):
    rng = np.random.default_rng(4)
    _png(tmp_path / "train/a/0.png", _rgb(rng))
    _png(tmp_path / "test/a/0.png", _rgb(rng))
    (tmp_path / "train/a/broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        sources.load("imagefolder", tmp_path)


# ----------------------------------------------------------------------------- names, errors, imports

def test_unknown_dataset_lists_valid_names():
    assert DATASETS == ("cifar10", "cifar100", "imagefolder", "digits", "synthetic")
    for make in (lambda: sources.load("mnist", "."), lambda: ImageDataModule("mnist"), lambda: sources.prepare("mnist", ".")):
        with pytest.raises(DataError) as err:
            make()
        msg = str(err.value)
        assert "mnist" in msg and "--dataset" in msg and "\n" not in msg
        assert all(name in msg for name in DATASETS)


def test_data_error_is_one_line():
    assert str(DataError("first line\nsecond line")) == "first line second line"


def test_datamodule_size_errors():
    dm = ImageDataModule("digits", batch_size=5000)
    with pytest.raises(DataError, match="--batch-size"):
        dm.setup()
    dm = ImageDataModule("digits", val_size=1437)
    with pytest.raises(DataError, match="validation split of"):
        dm.setup()
    with pytest.raises(RuntimeError, match="setup"):
        ImageDataModule("digits").num_classes


def test_package_exports_and_import_boundary():
    assert {"ImageDataModule", "DataError", "DATASETS", "random_crop_flip"} <= set(datamodules.__all__)
    forbidden = {"jax", "jaxlib", "flax", "optax", "orbax", "lightning_side", "flax_side"}
    package = Path(datamodules.__file__).parent
    files = sorted(package.glob("*.py"))
    assert len(files) >= 6
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & forbidden, (path, names)
