"""Data sources: which images, which labels, which class names, may they be mirrored.

`load` reads a whole dataset into memory as uint8 NHWC arrays at CIFAR's 32x32. `stream` gives
the same answers for images decoded later, per batch, at any size (datamodules/streamed.py): an
image folder as file names only, synthetic images made on demand, or the in-memory sources'
arrays served one image at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from . import cifar
from .errors import DataError, one_line
from .names import DATASETS
from .source import SIZE, Source, StreamedSource, make_source
from .streamed import ArrayImages, FileImages, RandomImages


# --------------------------------------------------------------------------- image folder

def _image_extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def _scan(split_dir: Path, require_every_class: bool) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted folder names) and (file, label) pairs of one split folder."""
    if not split_dir.is_dir():
        raise DataError(f"image folder {split_dir} does not exist; point --data-dir at a folder with train/<class>/ and test/<class>/ (or val/<class>/)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {split_dir} has no class subfolders; put images under {split_dir}/<class>/ (--data-dir)")
    extensions = _image_extensions()
    samples: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        files = sorted(
            p for p in (split_dir / cls).rglob("*") if p.is_file() and p.name.lower().endswith(extensions)
        )
        # A class with no training images cannot be learned; in test/ an empty class is merely untested.
        if not files and require_every_class:
            raise DataError(f"class folder {split_dir / cls} has no images ({', '.join(extensions)}); add images or remove the folder (--data-dir)")
        samples.extend((f, label) for f in files)
    if not samples:
        raise DataError(f"image folder {split_dir} contains no images; add images under {split_dir}/<class>/ (--data-dir)")
    return classes, samples


def _read_images(samples: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    images = np.empty((len(samples), SIZE, SIZE, 3), dtype=np.uint8)
    for k, (path, _) in enumerate(samples):
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (SIZE, SIZE):  # resample only what needs it: 32x32 images stay bit-exact
                    img = img.resize((SIZE, SIZE), Image.BILINEAR)
                images[k] = np.asarray(img, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"cannot read image {path} ({one_line(e)}); remove or replace it (--data-dir)") from e
    labels = np.array([label for _, label in samples], dtype=np.int64)
    return images, labels


def scan_imagefolder(data_dir: str | os.PathLike):
    """(classes, train samples, test samples) of an image folder, from file names alone;
    every file must be readable by this process (one stat each)."""
    root = Path(data_dir).expanduser()
    classes, train_samples = _scan(root / "train", require_every_class=True)
    eval_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not eval_dir.is_dir():
        raise DataError(f"image folder {root} has train/ but neither test/ nor val/; add {root}/test/<class>/ (--data-dir)")
    eval_classes, test_samples = _scan(eval_dir, require_every_class=False)
    if eval_classes != classes:
        # Labels are folder indices, so differing folder sets would silently mislabel the test split.
        only_train = sorted(set(classes) - set(eval_classes))
        only_eval = sorted(set(eval_classes) - set(classes))
        raise DataError(
            f"class folders differ between {root / 'train'} and {eval_dir} "
            f"(only in train: {only_train}, only in {eval_dir.name}: {only_eval}); make them the same (--data-dir)"
        )
    for path, _ in (*train_samples, *test_samples):
        if not os.access(path, os.R_OK):
            raise DataError(f"cannot read image {path} (permission denied); fix its permissions or remove it (--data-dir)")
    return classes, train_samples, test_samples


def imagefolder_bytes_at_32(data_dir: str | os.PathLike) -> int:
    """What the folder would take in memory at 32x32 (the DataModule streams it when too much)."""
    _, train, test = scan_imagefolder(data_dir)
    return (len(train) + len(test)) * SIZE * SIZE * 3


def _load_imagefolder(data_dir: str | os.PathLike) -> Source:
    classes, train_samples, test_samples = scan_imagefolder(data_dir)
    train_images, train_labels = _read_images(train_samples)
    test_images, test_labels = _read_images(test_samples)
    return make_source(train_images, train_labels, test_images, test_labels, classes, hflip=True)


# --------------------------------------------------------------------------- digits

DIGITS_SPLIT_SEED = 0  # fixed, not the run seed: the test set must not move between runs


def _load_digits(data_dir: str | os.PathLike | None = None) -> Source:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()  # ships inside scikit-learn: the offline real dataset
    # 0..16 grey levels -> 0..255; np.rint rounds the one tie (8 -> 127.5) to even, like round().
    grey = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    # 8x8 -> 32x32 by repeating every pixel into a 4x4 block: no interpolation invents grey levels.
    scale = SIZE // grey.shape[1]
    grey = grey.repeat(scale, axis=1).repeat(scale, axis=2)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=DIGITS_SPLIT_SEED, stratify=labels
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return make_source(
        rgb[train_idx], labels[train_idx], rgb[test_idx], labels[test_idx],
        classes=[str(d) for d in range(10)],
        hflip=False,  # a mirrored digit is a different glyph (or none)
    )


# --------------------------------------------------------------------------- synthetic

def _check_synthetic_sizes(train_size: int, test_size: int, num_classes: int) -> None:
    if train_size < 1 or test_size < 1 or num_classes < 1:
        raise DataError(f"synthetic data needs positive sizes (train {train_size}, test {test_size}, classes {num_classes}); pass positive synthetic_train_size / synthetic_test_size to ImageDataModule")


def _load_synthetic(
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    train_size: int = 10_000,
    test_size: int = 2_000,
    num_classes: int = 10,
) -> Source:
    """Random pixels and labels: nothing to learn, only for measuring throughput."""
    _check_synthetic_sizes(train_size, test_size, num_classes)
    rng = np.random.default_rng(seed)
    train_images = rng.integers(0, 256, size=(train_size, SIZE, SIZE, 3), dtype=np.uint8)
    train_labels = rng.integers(0, num_classes, size=train_size, dtype=np.int64)
    test_images = rng.integers(0, 256, size=(test_size, SIZE, SIZE, 3), dtype=np.uint8)
    test_labels = rng.integers(0, num_classes, size=test_size, dtype=np.int64)
    return make_source(train_images, train_labels, test_images, test_labels, [str(c) for c in range(num_classes)], hflip=True)


# --------------------------------------------------------------------------- entry point

_LOADERS: dict[str, Callable[..., Source]] = {
    "cifar10": lambda data_dir: cifar.load_cifar("cifar10", data_dir),
    "cifar100": lambda data_dir: cifar.load_cifar("cifar100", data_dir),
    "imagefolder": _load_imagefolder,
    "digits": _load_digits,
    "synthetic": _load_synthetic,
}
assert tuple(_LOADERS) == DATASETS


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose --dataset from {', '.join(DATASETS)}")


def prepare(name: str, data_dir: str | os.PathLike) -> None:
    """Download `name` into `data_dir` if it is not there yet (what `prepare_data()` runs).

    Only the CIFAR sources download anything; for the others this only checks the name."""
    _check_name(name)
    if name in cifar.CIFAR_NAMES:
        cifar.download(name, data_dir)


def load(name: str, data_dir: str | os.PathLike = "./data", **kw) -> Source:
    """Load dataset `name` into memory. Never downloads (that is `prepare`'s job).

    `kw` goes to the source: synthetic takes seed, train_size, test_size, num_classes.
    """
    _check_name(name)
    return _LOADERS[name](data_dir, **kw)


def stream(name: str, data_dir: str | os.PathLike = "./data", *, image_size: int, seed: int = 0,
           train_size: int = 10_000, test_size: int = 2_000, num_classes: int = 10) -> StreamedSource:
    """Dataset `name` as images to decode per batch: an image folder's files; synthetic images
    of round(S * 256 / 224) pixels a side (the size of a photo resized for evaluation), made
    from (seed, index) when asked for; anything else in memory at 32x32, served one by one."""
    _check_name(name)
    if name == "imagefolder":
        classes, train, test = scan_imagefolder(data_dir)
        return StreamedSource(FileImages([p for p, _ in train]), np.array([c for _, c in train], dtype=np.int64),
                              FileImages([p for p, _ in test]), np.array([c for _, c in test], dtype=np.int64),
                              tuple(classes), hflip=True, in_memory=False)
    if name == "synthetic":
        _check_synthetic_sizes(train_size, test_size, num_classes)
        side = round(image_size * 256 / 224)
        rng = np.random.default_rng(seed)
        return StreamedSource(RandomImages(train_size, side, seed), rng.integers(0, num_classes, train_size),
                              RandomImages(test_size, side, seed + 1), rng.integers(0, num_classes, test_size),
                              tuple(str(c) for c in range(num_classes)), hflip=True, in_memory=False)
    source = load(name, data_dir)
    return StreamedSource(ArrayImages(source.train_images), source.train_labels,
                          ArrayImages(source.test_images), source.test_labels, source.classes,
                          source.hflip, in_memory=True)
