"""Deterministic whole batches, the same for any number of DataLoader workers (and any world size).

The DataLoader runs with `batch_size=None`: the sampler yields one key per batch, `(epoch, i)`,
and the dataset builds batch `i` of that epoch from the key alone. Every random draw is seeded
by the key, so no state lives in a worker that could make two workers (or two runs, or the torch
and the flax side) disagree: the worker count changes only who computes a batch, never what it is.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import random_crop_flip


def position_after(steps_done: int, steps_per_epoch: int) -> dict[str, int]:
    """The loader position after `steps_done` optimizer steps: the epoch and batch to train next
    (a run stopped at an epoch's end goes on with batch 0 of the next)."""
    epoch, batch = divmod(int(steps_done), int(steps_per_epoch))
    return {"epoch": epoch, "batch": batch}


class EpochBatchSampler(Sampler):
    """Yields the keys `(epoch, start) ... (epoch, len-1)` of one epoch; start is 0 but in the
    epoch a run resumed in. The position is read when the first key is drawn, from, in order:

    - a position given to `load_state_dict` ({"epoch", "batch"}: the next batch to train), once:
      Lightning restores it from a checkpoint written mid-epoch, the flax loop from its step;
    - `trained()`, where training has reached, when given (the Lightning DataModule gives the
      trainer's step count): Lightning makes the first iterator of a resumed run, whose workers
      draw keys at once, before its `set_epoch`;
    - `set_epoch`, which Lightning calls before every epoch and the flax loop by hand.

    `state_dict` saves `trained()`: the sampler cannot know it, since the loader and its workers
    draw keys ahead of the batches trained. It runs in the main process, so all this works with
    persistent workers.
    """

    def __init__(self, num_batches: int, trained: Callable[[], dict[str, int]] | None = None) -> None:
        self.num_batches = int(num_batches)
        self.epoch = 0
        self.trained = trained
        self._loaded: dict[str, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        if self.trained is None:
            raise RuntimeError("this sampler does not know how far training has gone; give it `trained`")
        return dict(self.trained())

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._loaded = {"epoch": int(state["epoch"]), "batch": int(state["batch"])}

    def _position(self) -> tuple[int, int]:
        if self._loaded is not None:
            loaded, self._loaded = self._loaded, None
            return loaded["epoch"], loaded["batch"]
        if self.trained is not None:
            trained = self.trained()
            return trained["epoch"], trained["batch"]
        return self.epoch, 0

    def __iter__(self):
        # A generator: the position is read when the first key is drawn, not when the iterator is
        # made, and read once, so that set_epoch mid-iteration cannot change an epoch's keys.
        epoch, start = self._position()
        for i in range(start, self.num_batches):
            yield (epoch, i)

    def __len__(self) -> int:
        return self.num_batches


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning saves and restores the position of, through its sampler's
    `state_dict`/`load_state_dict` (Lightning's stateful-loader protocol): a run resumed from a
    checkpoint written mid-epoch goes on with the batch after the last one trained."""

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


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
