"""What a data source is: its images, labels and class names, whole in memory or decoded per batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def make_source(train_images, train_labels, test_images, test_labels, classes, hflip) -> Source:
    return Source(
        np.ascontiguousarray(train_images, dtype=np.uint8),
        np.asarray(train_labels, dtype=np.int64),
        np.ascontiguousarray(test_images, dtype=np.uint8),
        np.asarray(test_labels, dtype=np.int64),
        tuple(str(c) for c in classes),
        bool(hflip),
    )
