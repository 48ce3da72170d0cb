"""Batches of photos decoded on demand, in the loader's workers: nothing is held but file names.

`StreamedBatchDataset` keeps BatchDataset's contract (batch i of epoch e depends only on
(seed, e, i), whatever the worker count; both sides get the same uint8 batches) for images of any
size: each image is read, cropped and resized to S x S by datamodules/transforms.py with a
generator seeded by (seed, epoch, batch, position in the global batch). A process of a
multi-process run decodes only its own rows.

Memory is bounded by batch size x prefetch depth x workers, never by the dataset's size.

A file that fails to decode mid-run (the folder is only scanned at start: decoding ImageNet's
1.28M files up front would take an hour) does not end the run: it is replaced by the next image
of the split that decodes, with that image's label, and the batch names it, so the trainers can
count it in `data/bad_images` and name it once.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from .batches import BatchDataset
from .transforms import eval_transform, train_transform

# Everything PIL raises for a file it cannot decode: truncated or corrupt data (OSError,
# UnidentifiedImageError), a bad header (SyntaxError, ValueError), a decompression bomb.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
MAX_REPLACEMENTS = 10  # a split with ten undecodable files in a row is broken, not unlucky


class FileImages:
    """Images read from files on demand."""

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        self.paths = [os.fspath(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return self.paths[index]

    def open(self, index: int) -> Image.Image:
        return Image.open(self.paths[index])


class ArrayImages:
    """Images already in memory as uint8 NHWC (CIFAR, digits), served as PIL images."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return f"image {index}"

    def open(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])


class RandomImages:
    """Random pixels, made from (seed, index) when asked for: synthetic data at any size."""

    def __init__(self, count: int, side: int, seed: int) -> None:
        self.count, self.side, self.seed = int(count), int(side), int(seed)

    def __len__(self) -> int:
        return self.count

    def name(self, index: int) -> str:
        return f"synthetic image {index}"

    def open(self, index: int) -> Image.Image:
        rng = np.random.default_rng([self.seed, index])
        return Image.fromarray(rng.integers(0, 256, (self.side, self.side, 3), dtype=np.uint8))


class SubsetImages:
    """Some of another reader's images (a train/validation split), in the order of `indices`."""

    def __init__(self, base, indices: np.ndarray) -> None:
        self.base, self.indices = base, np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def name(self, index: int) -> str:
        return self.base.name(int(self.indices[index]))

    def open(self, index: int) -> Image.Image:
        return self.base.open(int(self.indices[index]))


class StreamedBatchDataset(BatchDataset):
    """BatchDataset over images decoded per batch: items are (uint8 (b, S, S, 3), int64 (b,),
    names of the files that failed to decode and were replaced)."""

    def __init__(self, images, labels: np.ndarray, batch_size: int, *, image_size: int,
                 train: bool, seed: int = 0, flip: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(images, labels, batch_size, train=train, seed=seed, flip=flip,
                         rank=rank, world_size=world_size)
        self.image_size = int(image_size)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        epoch, i = int(key[0]), int(key[1])
        indices = self.batch_indices(epoch, i)
        lo, hi = self.rank_rows(len(indices))
        out = np.empty((hi - lo, self.image_size, self.image_size, 3), dtype=np.uint8)
        labels = np.empty(hi - lo, dtype=np.int64)
        bad: list[str] = []
        for row, position in enumerate(range(lo, hi)):
            # Seeded by the place in the global batch, so every rank draws what a 1-process run draws.
            rng = np.random.default_rng([self.seed, epoch, i, position]) if self.train else None
            out[row], labels[row] = self._sample(int(indices[position]), rng, bad)
        return out, labels, tuple(bad)

    def _sample(self, index: int, rng: np.random.Generator | None, bad: list[str]):
        n = len(self.images)
        for k in range(MAX_REPLACEMENTS + 1):
            j = (index + k) % n
            try:
                with self.images.open(j) as image:
                    if rng is None:
                        return eval_transform(image, self.image_size), self.labels[j]
                    # The crop is drawn afresh for a replacement, from a copy of the same generator.
                    return train_transform(image, self.image_size, _copy(rng), self.flip), self.labels[j]
            except DECODE_ERRORS as err:
                bad.append(f"{self.images.name(j)} ({type(err).__name__}: {' '.join(str(err).split())[:120]})")
        raise OSError(f"{MAX_REPLACEMENTS + 1} images in a row from {self.images.name(index)} on "
                      f"cannot be decoded; check the image folder")


def _copy(rng: np.random.Generator) -> np.random.Generator:
    copy = np.random.default_rng()
    copy.bit_generator.state = rng.bit_generator.state
    return copy

