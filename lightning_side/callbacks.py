"""Lightning callbacks that write the perf/* tags of DESIGN.md's tag set (and perf/peak_memory_mb)."""

from __future__ import annotations

import time

import lightning as L
import torch

from harness.runs import host_peak_memory_mb


def peak_memory_mb(trainer: L.Trainer) -> float:
    """Peak memory of the training device: CUDA's allocator on a GPU, the process's RSS on a CPU."""
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return host_peak_memory_mb()


class EpochThroughput(L.Callback):
    """perf/train_images_per_sec and perf/epoch_seconds: the training loop of each epoch alone.

    The clock stops when validation starts, so the figure is comparable with the flax side's,
    which times its training loop the same way.
    """

    def __init__(self) -> None:
        self.total_images = 0
        self.total_seconds = 0.0
        self._start: float | None = None
        self._images = 0
        self._seconds: float | None = None

    def _now(self, trainer: L.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._images, self._seconds = self._now(trainer), 0, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += batch[1].shape[0] * trainer.world_size

    def _stop(self, trainer) -> None:
        if self._start is not None and self._seconds is None:
            self._seconds = self._now(trainer) - self._start

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.training:
            self._stop(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop(trainer)
        if not self._images or not self._seconds:
            return
        self.total_images += self._images
        self.total_seconds += self._seconds
        if trainer.is_global_zero and trainer.logger is not None:
            # At the epoch's last step, where Lightning puts val/* too.
            trainer.logger.log_metrics({"perf/train_images_per_sec": self._images / self._seconds,
                                        "perf/epoch_seconds": self._seconds,
                                        "perf/peak_memory_mb": peak_memory_mb(trainer)},
                                       step=trainer.global_step - 1)

    @property
    def images_per_sec(self) -> float:
        return self.total_images / self.total_seconds if self.total_seconds else float("nan")
