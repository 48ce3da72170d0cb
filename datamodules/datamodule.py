"""The one LightningDataModule both sides train from.

The torch side uses the standard hooks (`train_dataloader()` ...: uint8 NCHW tensors); the flax
side calls `numpy_dataloader(split)` (uint8 NHWC numpy). Both are the same loader over the same
`BatchDataset`, differing only in the final collate step, so both sides see bit-identical batches
in the same order for a given seed. Images stay uint8 until the device, where each side
normalises with `mean` / `std` (uploading uint8 moves a quarter of the bytes of float32).
"""

from __future__ import annotations

import logging
import os

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from . import sources
from .batches import (BatchDataset, EpochBatchSampler, ResumableDataLoader, position_after, to_numpy_nhwc,
                      to_torch_nchw)
from .errors import DataError
from .streamed import StreamedBatchDataset, SubsetImages
from .workers import ending_with_this_process, worker_context

log = logging.getLogger(__name__)

# Fixed seeds, deliberately not the run seed: changing --seed must change the shuffling and the
# augmentation, never which images are validation images or what the synthetic pixels are, or
# runs with different seeds would not be measured on the same data.
VAL_SPLIT_SEED = 0
SYNTHETIC_DATA_SEED = 0

CIFAR_VAL_SIZE = 5_000  # the paper's 45k/5k split
DEFAULT_VAL_FRACTION = 0.1

SPLITS = ("train", "val", "test")

# Streamed photos are normalised with ImageNet's statistics, as torchvision's recipes (and its
# pretrained weights) expect: measuring them would mean decoding the training set first.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255


def in_memory_budget() -> int:
    """Bytes an image folder may take in RAM at 32x32 before it is streamed: a quarter of RAM."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of a uint8 NHWC array, float64, in 0..255 units.

    Counts a 256-bin histogram per channel in chunks, then takes the moments from it: exact,
    and without ever holding a float64 copy of all of CIFAR's pixels (over 1 GB).
    """
    hist = np.zeros((images.shape[-1], 256), dtype=np.int64)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk]
        for c in range(images.shape[-1]):
            hist[c] += np.bincount(block[..., c].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64)
    count = hist.sum(axis=1)
    mean = (hist * values).sum(axis=1) / count
    var = (hist * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / count
    return mean, np.sqrt(var)


class ImageDataModule(L.LightningDataModule):
    def __init__(
        self,
        dataset: str = "cifar10",
        data_dir: str = "./data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        val_size: int | None = None,
        synthetic_train_size: int = 10_000,
        synthetic_test_size: int = 2_000,
        download: bool = True,
        image_size: int = sources.SIZE,
    ) -> None:
        super().__init__()
        # Cheap checks only: __init__ never touches the disk or the network (Lightning may build
        # this object on every rank; only prepare_data() on one rank per node may download).
        if dataset not in sources.DATASETS:
            raise DataError(f"unknown dataset {dataset!r}; choose --dataset from {', '.join(sources.DATASETS)}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise DataError(f"batch sizes must be positive (got {batch_size}, {eval_batch_size}); fix --batch-size")
        if num_workers < 0:
            raise DataError(f"num_workers must be >= 0, got {num_workers}; fix --num-workers")
        self.save_hyperparameters(logger=False)  # the trainers log the whole run config themselves
        self.dataset = dataset
        self.data_dir = data_dir
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size if eval_batch_size is not None else batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.streamed = self.image_size != sources.SIZE  # also when an image folder is too large
        self.rank, self.world_size = 0, 1
        self._source: sources.Source | None = None

    # ------------------------------------------------------------------ Lightning hooks

    def prepare_data(self) -> None:
        if self.hparams.download:
            sources.prepare(self.dataset, self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        # Under a multi-process Trainer (DDP) each rank serves its slice of every global batch.
        if self.trainer is not None and self.trainer.world_size > 1:
            self.shard(self.trainer.global_rank, self.trainer.world_size)
        if self._source is not None:  # Lightning calls setup for fit, then again for test
            return
        kw = {}
        if self.dataset == "synthetic":
            kw = dict(seed=SYNTHETIC_DATA_SEED, train_size=self.hparams.synthetic_train_size,
                      test_size=self.hparams.synthetic_test_size)
        if (self.dataset == "imagefolder" and not self.streamed
                and sources.imagefolder_bytes_at_32(self.data_dir) > in_memory_budget()):
            self.streamed = True
        if self.streamed:
            source = sources.stream(self.dataset, self.data_dir, image_size=self.image_size, **kw)
        else:
            source = sources.load(self.dataset, self.data_dir, **kw)

        n = len(source.train_images)
        val_size = self.hparams.val_size
        if val_size is None:
            val_size = CIFAR_VAL_SIZE if self.dataset in ("cifar10", "cifar100") else int(round(DEFAULT_VAL_FRACTION * n))
        if not 0 <= val_size < n:
            raise DataError(f"a validation split of {val_size} does not fit {self.dataset}'s {n} training images; use a dataset with more than {val_size} training images")
        order = np.random.default_rng(VAL_SPLIT_SEED).permutation(n)
        # Sorted, so each split keeps the source's order; only membership comes from the seed.
        self.val_indices = np.sort(order[:val_size])
        self.train_indices = np.sort(order[val_size:])

        self.train_labels = source.train_labels[self.train_indices]
        self.val_labels = source.train_labels[self.val_indices]
        self.test_images, self.test_labels = source.test_images, source.test_labels
        if self.streamed:
            self.train_images = SubsetImages(source.train_images, self.train_indices)
            self.val_images = SubsetImages(source.train_images, self.val_indices)
            if source.in_memory:
                self.mean, self.std = channel_stats(source.train_images.images[self.train_indices])
            else:
                self.mean, self.std = IMAGENET_MEAN.copy(), IMAGENET_STD.copy()
        else:
            self.train_images = source.train_images[self.train_indices]
            self.val_images = source.train_images[self.val_indices]
            # From the training split only: the validation images must not leak into preprocessing.
            self.mean, self.std = channel_stats(self.train_images)
        self.bad_images: dict[str, None] = {}  # named once each, in the order first met

        if len(self.train_images) < self.batch_size:
            raise DataError(f"--batch-size {self.batch_size} is larger than the {len(self.train_images)} training images of {self.dataset}; lower --batch-size")
        self._source = source

    # ------------------------------------------------------------------ what the models need

    def _loaded(self) -> sources.Source:
        if self._source is None:
            raise RuntimeError("ImageDataModule: call prepare_data() and setup() before asking about the data")
        return self._source

    @property
    def classes(self) -> tuple[str, ...]:
        return self._loaded().classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def hflip(self) -> bool:
        return self._loaded().hflip

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images in every batch."""
        return (self.image_size, self.image_size, 3)

    @property
    def num_train(self) -> int:
        self._loaded()
        return len(self.train_images)

    @property
    def steps_per_epoch(self) -> int:
        # The last partial training batch is dropped, so this is a floor.
        return self.num_train // self.batch_size

    # ------------------------------------------------------------------ sharding hook

    def shard(self, rank: int, world_size: int) -> None:
        """Serve rank `rank`'s contiguous slice of every global batch (see BatchDataset).

        `batch_size` stays the GLOBAL batch size, so the optimisation is the same on any number
        of devices. A Lightning DDP run must also pass `use_distributed_sampler=False`.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if self.batch_size % world_size:
            raise DataError(f"--batch-size {self.batch_size} does not split evenly over {world_size} devices; choose a multiple of {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)

    # ------------------------------------------------------------------ loaders

    def _loader(self, split: str, collate_fn, pin_memory: bool, start_method: str | None = None) -> DataLoader:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self._loaded()
        train = split == "train"
        # Lightning's training loader is resumable: Lightning saves where training has reached
        # (from the trainer's step count) in its checkpoints and restores it through load_state_dict.
        resumable = train and collate_fn is to_torch_nchw and self.trainer is not None
        images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
        batch_size = self.batch_size if train else self.eval_batch_size
        common = dict(train=train, seed=self.seed, flip=train and self.hflip, rank=self.rank,
                      world_size=self.world_size)
        if self.streamed:
            dataset = StreamedBatchDataset(images, labels, batch_size, image_size=self.image_size, **common)
        else:
            dataset = BatchDataset(images, labels, batch_size, **common)
        return (ResumableDataLoader if resumable else DataLoader)(
            dataset,
            batch_size=None,  # the dataset's items already are batches
            sampler=EpochBatchSampler(len(dataset), trained=self._trained if resumable else None),
            collate_fn=collate_fn,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=pin_memory,
            **(dict(multiprocessing_context=worker_context(start_method), worker_init_fn=ending_with_this_process())
               if start_method and self.num_workers > 0 else {}),
        )

    def epoch_steps(self, limit_train_batches: int | float | None = None) -> int:
        """Training steps per epoch under a Lightning-style limit (an int cap or a fraction)."""
        steps = self.steps_per_epoch
        if isinstance(limit_train_batches, int):
            steps = min(steps, limit_train_batches)
        elif limit_train_batches is not None and limit_train_batches < 1.0:
            steps = int(steps * limit_train_batches)
        return max(steps, 1)

    def _trained(self) -> dict[str, int]:
        """Where the Trainer's training has reached: the epoch and batch it trains next."""
        return position_after(self.trainer.global_step, self.epoch_steps(self.trainer.limit_train_batches))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", to_torch_nchw, torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", to_torch_nchw, torch.cuda.is_available())

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", to_torch_nchw, torch.cuda.is_available())

    def note_bad_images(self, bad: tuple[str, ...]) -> None:
        """Record the images a batch replaced (streamed data: files that failed to decode), and
        name each one once. Both trainers call this with every batch's third item; the count,
        len(bad_images), is their data/bad_images scalar."""
        for name in bad:
            if name not in self.bad_images:
                self.bad_images[name] = None
                log.warning(f"warning: cannot decode {name}; replaced by the next image of its "
                            f"split (counted in data/bad_images)")

    def numpy_dataloader(self, split: str, start_method: str = "forkserver") -> DataLoader:
        """The same batches as the torch loaders, as NHWC uint8 / int32 numpy (never pinned).

        The caller calls `loader.sampler.set_epoch(epoch)` before each epoch, as Lightning does,
        and resuming, `loader.sampler.load_state_dict(position_after(step, steps_per_epoch))`.
        Workers start from a fork server, never by forking the caller (workers.py): the flax side
        runs JAX, whose threads a forked child would inherit stopped, perhaps holding a lock.
        """
        return self._loader(split, to_numpy_nhwc, pin_memory=False, start_method=start_method)
