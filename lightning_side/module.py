"""The LightningModule: a ResNet with its loss, metrics, optimizer and LR schedule."""

from __future__ import annotations

from typing import Sequence

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from lightning_side.models import create_model
from lightning_side.schedules import lr_factor_fn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights only, never on BatchNorm parameters or biases."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)):
                decay.append(param)
            else:
                no_decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


class ResNetModule(L.LightningModule):
    def __init__(
        self,
        model: str = "resnet20",
        num_classes: int = 10,
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 1e-4,
        schedule: str = "multistep",
        milestones: Sequence[float] = (0.5, 0.75),
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
        mean: Sequence[float] = (127.5, 127.5, 127.5),
        std: Sequence[float] = (64.0, 64.0, 64.0),
        channels_last: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        # The trainer logs the full run configuration itself, the same dict as the flax side.
        self.save_hyperparameters(logger=False)
        self.model = create_model(model, num_classes, zero_init_residual)
        if channels_last:  # the loader already serves channels_last views; CPU and GPU convs prefer it
            self.model = self.model.to(memory_format=torch.channels_last)
        # uint8 images are normalised here, on the device, in 0..255 units (the DataModule's stats).
        # Kept in float64 and cast to the parameters' dtype on use, as the flax side does: rounded
        # to float32 first, they would put a 1e-7 difference into every 64-true step.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1))
        # train/* are values of the global batch under DDP too, as on the flax side: the accuracy
        # syncs its counts on each step and the loss is logged with sync_dist.
        self.train_acc = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro",
                                                                        dist_sync_on_step=True)
        # The epoch's accuracy over every batch it trained: train/acc_epoch.
        self.train_epoch_acc = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro")
        self.eval_acc = nn.ModuleDict({stage: torchmetrics.classification.MulticlassAccuracy(
            num_classes, average="micro") for stage in ("val", "test")})
        self.eval_loss = nn.ModuleDict({stage: torchmetrics.MeanMetric() for stage in ("val", "test")})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.model.fc.weight.dtype  # float32, or float64 under 64-true
        x = (images.to(dtype) - self.mean.to(dtype)) / self.std.to(dtype)
        return self.model(x)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16)
                               else logits, labels, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch, batch_idx):
        images, labels, _ = batch  # the third item names replaced images (callbacks.BadImageCount)
        logits = self(images)
        loss = self.loss(logits, labels)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, on_step=True, prog_bar=True, sync_dist=self.trainer.world_size > 1)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=False)
        # The epoch's means, a point per epoch whatever --log-every is (Lightning's on_epoch=True;
        # its own names for them, as on_step=True, on_epoch=True would write).
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=labels.shape[0],
                 sync_dist=self.trainer.world_size > 1)
        self.train_epoch_acc.update(logits, labels)
        self.log("train/acc_epoch", self.train_epoch_acc, on_step=False, on_epoch=True)
        # The LR this step's update uses (the scheduler steps after the optimizer).
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], on_step=True)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            self.log("train/loss_scale", float(scaler.get_scale()), on_step=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self._common_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._common_step(batch, "test")

    def _common_step(self, batch, stage: str) -> None:
        images, labels, _ = batch
        logits = self(images)
        loss = self.loss(logits, labels)
        # Exact dataset means: the loss weighted by batch size (the last batch may be partial).
        self.eval_loss[stage].update(loss.detach(), weight=labels.shape[0])
        self.eval_acc[stage].update(logits, labels)
        self.log(f"{stage}/loss", self.eval_loss[stage], on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", self.eval_acc[stage], on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.SGD(parameter_groups(self.model, hp.weight_decay), lr=hp.lr,
                                    momentum=hp.momentum, nesterov=hp.nesterov)
        # Not trainer.estimated_stepping_batches: it builds the train iterator as a side effect,
        # before a resumed run's progress is restored, so that iterator would serve epoch 0 again.
        steps_per_epoch = self.trainer.datamodule.epoch_steps(self.trainer.limit_train_batches)
        factor = lr_factor_fn(hp.schedule, self.trainer.max_epochs, steps_per_epoch,
                              hp.warmup_epochs, hp.milestones)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
