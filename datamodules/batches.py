"""Deterministic whole batches, the same for any number of DataLoader workers (and any world size).

The DataLoader runs with `batch_size=None`: the sampler yields one key per batch, `(epoch, i)`,
and the dataset builds batch `i` of that epoch from the key alone. Every random draw is seeded
by the key, so no state lives in a worker that could make two workers (or two runs, or the torch
and the flax side) disagree: the worker count changes only who computes a batch, never what it is.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .augment import random_crop_flip


class EpochBatchSampler(Sampler):
    """Yields the keys `(epoch, start) ... (epoch, len-1)` of one epoch (start is usually 0).

    Lightning calls `set_epoch` on `dataloader.sampler` before every epoch; the flax loop does
    the same by hand, with `start` > 0 when it resumes from a checkpoint written mid-epoch. The
    sampler runs in the main process, so this works with persistent workers.
    """

    def __init__(self, num_batches: int, epoch: int = 0, position_source=None) -> None:
        self.num_batches = int(num_batches)
        self.epoch = int(epoch)
        self.start = 0
        # When given, a callable returning (epoch, first batch) of the epoch about to be iterated;
        # it wins over set_epoch.
        self.position_source = position_source

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def __iter__(self):
        # A generator: the position is read when the first key is drawn, not when the iterator is
        # made (Lightning makes the first one before it restores a resumed run's progress).
        # It is read once, so set_epoch mid-iteration cannot change an epoch's keys.
        if self.position_source is not None:
            epoch, start = self.position_source()
        else:
            epoch, start = self.epoch, self.start
        for i in range(int(start), self.num_batches):
            yield (int(epoch), i)

    def __len__(self) -> int:
        return self.num_batches


class BatchDataset(Dataset):
    """Map-style dataset whose items are whole batches, addressed by `(epoch, batch_index)`.

    train=True: batch i of epoch e takes `perm[i*B:(i+1)*B]` of
    `perm = np.random.default_rng([seed, e]).permutation(n)`, drops the last partial batch (so
    every step has the same shape, as BatchNorm and jit prefer), and is augmented with
    `np.random.default_rng([seed, e, i])`. train=False: images in order, no augmentation, the
    final partial batch kept so every image is evaluated exactly once; the epoch is ignored.

    Sharding hook: with `world_size > 1` the GLOBAL batch is built exactly as above and rank r
    keeps its contiguous slice `[r*b//world_size : (r+1)*b//world_size]`, so the sequence of
    global batches (and every random draw) is identical whatever the world size. A Lightning DDP
    run using this must pass `use_distributed_sampler=False` to the Trainer, or Lightning would
    split the keys across ranks on top of this.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        flip: bool = True,
        pad: int = 4,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        assert len(images) == len(labels)
        self.images, self.labels = images, labels
        self.batch_size = int(batch_size)
        self.train, self.seed, self.flip, self.pad = bool(train), int(seed), bool(flip), int(pad)
        self.rank, self.world_size = int(rank), int(world_size)
        n = len(images)
        self.num_batches = n // self.batch_size if self.train else -(-n // self.batch_size)
        self._perm_epoch: int | None = None  # per-worker cache: one permutation per epoch, not per batch
        self._perm: np.ndarray | None = None

    def __len__(self) -> int:
        return self.num_batches

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))
            self._perm_epoch = epoch
        return self._perm

    def batch_indices(self, epoch: int, i: int) -> np.ndarray:
        """Indices into the split of the samples of global batch `i` of `epoch`."""
        if not 0 <= i < self.num_batches:
            raise IndexError(f"batch {i} out of range for {self.num_batches} batches")
        start, stop = i * self.batch_size, min((i + 1) * self.batch_size, len(self.images))
        if self.train:
            return self.permutation(epoch)[start:stop]
        return np.arange(start, stop)

    def rank_rows(self, batch_size: int) -> tuple[int, int]:
        """[lo, hi): this rank's contiguous rows of a global batch of `batch_size`."""
        return self.rank * batch_size // self.world_size, (self.rank + 1) * batch_size // self.world_size

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        epoch, i = int(key[0]), int(key[1])
        idx = self.batch_indices(epoch, i)
        if self.train:
            images = random_crop_flip(
                self.images[idx], np.random.default_rng([self.seed, epoch, i]), pad=self.pad, flip=self.flip
            )
            labels = self.labels[idx]
        else:
            # Copies, not views: a consumer writing into its batch must not corrupt the dataset.
            images, labels = self.images[idx[0] : idx[-1] + 1].copy(), self.labels[idx[0] : idx[-1] + 1].copy()
        if self.world_size > 1:
            lo, hi = self.rank_rows(len(images))
            images, labels = np.ascontiguousarray(images[lo:hi]), labels[lo:hi].copy()
        # The third item names images that failed to decode; in memory, none can.
        return images, labels.astype(np.int64, copy=False), ()


# Collate functions for DataLoader(batch_size=None, collate_fn=...): module-level so that they
# pickle into worker processes. They run in the worker, after the batch is built.

def to_torch_nchw(batch) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """uint8 (B, 3, H, W) tensor -- a zero-copy channels_last view of the NHWC batch -- int64
    labels, and the names of replaced images."""
    images, labels, bad = batch
    return (torch.from_numpy(images).permute(0, 3, 1, 2),
            torch.from_numpy(labels.astype(np.int64, copy=False)), bad)


def to_numpy_nhwc(batch) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """uint8 (B, H, W, 3), int32 labels and the names of replaced images, left as numpy for the
    flax side to put on its devices."""
    images, labels, bad = batch
    return np.ascontiguousarray(images), labels.astype(np.int32), bad
