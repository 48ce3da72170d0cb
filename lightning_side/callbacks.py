"""Lightning callbacks that write the perf/* tags of docs/design.md's tag set (and perf/peak_memory_mb)."""

from __future__ import annotations

import math
import time

import lightning as L
import torch

from common import disk_faults
from common.errors import TrainingError
from common.interrupt import CtrlC
from common.runs import host_peak_memory_mb


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
        seconds = self._seconds or 0.0
        self.total_images += self._images
        self.total_seconds += seconds
        if trainer.is_global_zero and trainer.logger is not None:
            # At the epoch's last step, where Lightning puts val/* too; every epoch, as on the flax
            # side (an epoch a resume entered at its end trains 0 images).
            trainer.logger.log_metrics({"perf/train_images_per_sec": self._images / seconds if seconds
                                        else float("nan"),
                                        "perf/epoch_seconds": seconds,
                                        "perf/peak_memory_mb": peak_memory_mb(trainer)},
                                       step=trainer.global_step - 1)

    @property
    def images_per_sec(self) -> float:
        return self.total_images / self.total_seconds if self.total_seconds else float("nan")


class BadImageCount(L.Callback):
    """data/bad_images: how many images failed to decode so far and were replaced (streamed
    data; always 0 in memory), at the end of every epoch. The DataModule names each one once."""

    def _note(self, trainer, batch) -> None:
        trainer.datamodule.note_bad_images(batch[2])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._note(trainer, batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._note(trainer, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._note(trainer, batch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and trainer.logger is not None:
            trainer.logger.log_metrics({"data/bad_images": len(trainer.datamodule.bad_images)},
                                       step=trainer.global_step - 1)


class RunFolderGuard(L.Callback):
    """Stops the run when its version folder vanishes (common.disk_faults.RunFolder), checked
    before each epoch's checkpoints are written: Lightning orders checkpoint callbacks after every
    other one."""

    def __init__(self) -> None:
        self.folder: disk_faults.RunFolder | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and trainer.logger is not None:
            self.folder = disk_faults.RunFolder(trainer.logger.log_dir)  # made by log_hyperparams

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.folder is not None and not trainer.sanity_checking:
            self.folder.check()


class StopOnNonFiniteLoss(L.Callback):
    """Stops a diverged run at the first logging step whose loss is not finite.

    Checked on logging steps only, as the flax side does, so no other step waits for the device.
    Skipped under 16-mixed, where the loss scaler handles non-finite steps. The exception leaves
    the checkpoints alone: the last good one is what the message names.
    """

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step - 1  # this batch's step: the optimizer has stepped
        if (step + 1) % self.log_every or getattr(trainer.precision_plugin, "scaler", None):
            return
        # The mean over ranks, so that under DDP every rank sees the same value and stops together.
        loss = float(trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean"))
        if not math.isfinite(loss):
            raise TrainingError(f"train/loss is {loss} at step {step}: training diverged and stopped; "
                                f"{_last_good(trainer)} (try a lower --lr)")


def _last_good(trainer: L.Trainer) -> str:
    paths = [c.last_model_path or c.best_model_path for c in trainer.checkpoint_callbacks]
    paths = [p for p in paths if p]
    return f"the last good checkpoint is {paths[-1]}" if paths else "no checkpoint had been written yet"


class StopBetweenSteps(L.Callback):
    """Ctrl-C (common.interrupt.CtrlC) honoured between two training steps.

    From on_train_batch_end (this callback comes last) the step in flight has finished, LR
    scheduler included; the KeyboardInterrupt raised there hands over to Lightning's own
    interrupt handling: checkpoint_callbacks.LatestCheckpoints saves, the run ends. Under DDP the ranks agree on
    logging steps, as the flax side's processes do, so that all stop after the same step.
    """

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self.ctrl_c = CtrlC()

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.ctrl_c.install()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        requested = self.ctrl_c.requested
        if trainer.world_size > 1:
            if trainer.global_step % self.log_every:  # global_step - 1 is this batch's step
                return
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested:
            raise KeyboardInterrupt

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.ctrl_c.restore()


class SkippedSteps(L.Callback):
    """train/skipped_steps under 16-mixed: optimizer steps the GradScaler skipped on overflow.

    A skipped step lowers the scale; the comparison stays on the device (no sync per step) and
    is read on logging steps only. The count is part of the checkpoint, so it survives a resume.
    """

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self.skipped = 0
        self._device_count = None
        self._scale_before = None

    def _scaler(self, trainer):
        return getattr(trainer.precision_plugin, "scaler", None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        scaler = self._scaler(trainer)
        if scaler is not None:  # its scale tensor is made on the first step: the initial scale till then
            self._scale_before = (scaler._scale.detach().clone() if scaler._scale is not None
                                  else torch.tensor(scaler.get_scale()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        scaler = self._scaler(trainer)
        if scaler is None or self._scale_before is None:
            return
        lowered = (scaler._scale < self._scale_before.to(scaler._scale.device)).to(torch.int64)
        self._device_count = lowered if self._device_count is None else self._device_count + lowered
        step = trainer.global_step - 1
        if (step + 1) % self.log_every == 0 and trainer.logger is not None:
            skipped = self.skipped + int(self._device_count)
            pl_module.log("train/skipped_steps", float(skipped), on_step=True, on_epoch=False)

    def state_dict(self) -> dict:
        total = self.skipped + (int(self._device_count) if self._device_count is not None else 0)
        return {"skipped": total}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped, self._device_count = int(state_dict["skipped"]), None
