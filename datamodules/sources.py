"""Data sources: which images, which labels, which class names, may they be mirrored.

`load` reads a whole dataset into memory as uint8 NHWC arrays at CIFAR's 32x32. `stream` gives
the same answers for images decoded later, per batch, at any size (datamodules/streamed.py): an
image folder as file names only, synthetic images made on demand, or the in-memory sources'
arrays served one image at a time.
"""

from __future__ import annotations

import http.client
import os
import tarfile
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torchvision

from .errors import DataError, one_line
from .names import DATASETS
from .streamed import ArrayImages, FileImages, RandomImages


SIZE = 32  # every source is served at CIFAR resolution, so the models never need to know the source


@dataclass(frozen=True, eq=False)  # eq=False: comparing by array contents would be ambiguous
class Source:
    train_images: np.ndarray  # uint8 (N, 32, 32, 3), C-contiguous
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    hflip: bool  # whether a mirrored image still belongs to its class

    def __post_init__(self) -> None:
        for images, labels in ((self.train_images, self.train_labels), (self.test_images, self.test_labels)):
            assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (SIZE, SIZE, 3), images.shape
            assert images.flags.c_contiguous
            assert labels.dtype == np.int64 and labels.shape == (len(images),), labels.shape


@dataclass(frozen=True, eq=False)
class StreamedSource:
    """A source whose images are decoded per batch: `*_images` are FileImages, ArrayImages or
    RandomImages (len(), .name(i), .open(i)). `in_memory` says whether the pixels are in RAM
    anyway (then the DataModule takes the channel statistics from them)."""
    train_images: object
    train_labels: np.ndarray
    test_images: object
    test_labels: np.ndarray
    classes: tuple[str, ...]
    hflip: bool
    in_memory: bool


def _source(train_images, train_labels, test_images, test_labels, classes, hflip) -> Source:
    return Source(
        np.ascontiguousarray(train_images, dtype=np.uint8),
        np.asarray(train_labels, dtype=np.int64),
        np.ascontiguousarray(test_images, dtype=np.uint8),
        np.asarray(test_labels, dtype=np.int64),
        tuple(str(c) for c in classes),
        bool(hflip),
    )


# --------------------------------------------------------------------------- CIFAR

# Class names, not class objects: looked up on torchvision.datasets at call time, so whatever
# torchvision (or a test that patches its url/md5 attributes) says is what gets used.
_CIFAR = {"cifar10": ("CIFAR10", "CIFAR-10"), "cifar100": ("CIFAR100", "CIFAR-100")}

# What a failed download raises: no route / refused / DNS / timeout (URLError and the socket
# errors under it), a broken HTTP exchange, redirect loops. Only these are "could not be downloaded".
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException,
                   RecursionError)
# What a downloaded archive that is not CIFAR raises: torchvision's "File not found or corrupted."
# after an md5 mismatch (RuntimeError), and a truncated or non-gzip archive.
_ARCHIVE_ERRORS = (RuntimeError, tarfile.TarError, EOFError)


def _cifar_class(name: str):
    return getattr(torchvision.datasets, _CIFAR[name][0])


def _what_to_do(name: str) -> str:
    cls = _cifar_class(name)
    return (
        f"put {cls.filename} or {cls.base_folder}/ under --data-dir, "
        f"or run offline with --dataset digits"
    )


def _archive_is_valid(cls, root: Path) -> bool:
    from torchvision.datasets.utils import check_integrity

    return check_integrity(os.fspath(root / cls.filename), cls.tgz_md5)


def _extracted_is_valid(cls, root: Path) -> bool:
    # The same per-file md5 check torchvision runs before loading, without loading anything.
    from torchvision.datasets.utils import check_integrity

    return all(
        check_integrity(os.fspath(root / cls.base_folder / f), md5) for f, md5 in cls.train_list + cls.test_list
    )


def prepare(name: str, data_dir: str | os.PathLike) -> None:
    """Download `name` into `data_dir` if it is not there yet (what `prepare_data()` runs).

    Only the CIFAR sources download anything; for the others this only checks the name.
    torchvision verifies the archive's md5 and every extracted file's md5.
    """
    _check_name(name)
    if name not in _CIFAR:
        return
    cls = _cifar_class(name)
    root = Path(data_dir).expanduser()
    try:
        # train=False: the smaller split is enough to trigger download + full integrity check.
        cls(root=os.fspath(root), train=False, download=True)
    except _NETWORK_ERRORS as e:
        raise DataError(
            f"{_CIFAR[name][1]} is not in {root} and could not be downloaded ({one_line(e)}); {_what_to_do(name)}"
        ) from e
    except _ARCHIVE_ERRORS as e:
        archive = root / cls.filename
        if archive.is_file() and not _archive_is_valid(cls, root):
            reason = f"{archive} failed its md5 check: a partial download or a different file"
        else:
            reason = f"the downloaded archive is damaged: {one_line(e)}"
        raise DataError(f"{_CIFAR[name][1]} could not be prepared in {root} ({reason}); {_what_to_do(name)}") from e
    except OSError as e:  # not the network: writing the archive or its files under --data-dir
        raise DataError(f"cannot write {e.filename or root} while downloading {_CIFAR[name][1]} "
                        f"({e.strerror or one_line(e)}); give --data-dir a writable folder with room, "
                        f"or {_what_to_do(name)}") from e


def _load_cifar(name: str, data_dir: str | os.PathLike) -> Source:
    cls = _cifar_class(name)
    root = Path(data_dir).expanduser()
    # Hashing only happens when an archive is lying there, so the common case pays nothing extra.
    archive = root / cls.filename
    if archive.is_file() and not _extracted_is_valid(cls, root) and _archive_is_valid(cls, root):
        # A user-supplied archive counts as "already here": extracting it needs no network.
        from torchvision.datasets.utils import extract_archive

        try:
            extract_archive(os.fspath(archive), os.fspath(root))
        except (OSError, tarfile.TarError, EOFError) as e:
            raise DataError(
                f"{archive} could not be extracted ({one_line(e)}); {_what_to_do(name)}"
            ) from e
    try:
        train = cls(root=os.fspath(root), train=True, download=False)
        test = cls(root=os.fspath(root), train=False, download=False)
    except (RuntimeError, OSError, EOFError) as e:
        # torchvision's own message suggests download=True, which means nothing to a CLI user.
        folder = root / cls.base_folder
        if not folder.is_dir():
            reason = f"no {cls.base_folder}/ and no valid {cls.filename} there"
        elif not _extracted_is_valid(cls, root):
            reason = f"a file in {folder} is missing or fails its md5 check"
        else:
            reason = one_line(e)
        raise DataError(f"{_CIFAR[name][1]} is missing or corrupted in {root} ({reason}); {_what_to_do(name)}") from e
    # torchvision already turned the (N, 3072) rows into (N, 32, 32, 3); _source makes it contiguous.
    return _source(train.data, train.targets, test.data, test.targets, train.classes, hflip=True)


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
    return _source(train_images, train_labels, test_images, test_labels, classes, hflip=True)


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
    return _source(
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
    return _source(train_images, train_labels, test_images, test_labels, [str(c) for c in range(num_classes)], hflip=True)


# --------------------------------------------------------------------------- entry point

_LOADERS: dict[str, Callable[..., Source]] = {
    "cifar10": lambda data_dir: _load_cifar("cifar10", data_dir),
    "cifar100": lambda data_dir: _load_cifar("cifar100", data_dir),
    "imagefolder": _load_imagefolder,
    "digits": _load_digits,
    "synthetic": _load_synthetic,
}
assert tuple(_LOADERS) == DATASETS


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose --dataset from {', '.join(DATASETS)}")


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
