"""Train a CIFAR ResNet with the Lightning side of the harness.

    python lightning_side/train.py --dataset digits --epochs 10 --schedule cosine --warmup-epochs 1
    python lightning_side/train.py --resume last            # continue the newest version
    python lightning_side/train.py --help

The flags are shared with flax_side/train.py (common/config.py); runs land in
logs/lightning/<run-name>/version_N for `tensorboard --logdir logs`.
"""

from __future__ import annotations

import os
import sys
import warnings
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import MixedPrecision

from common.config import TrainConfig, parse_config
from common.data import create_datamodule
from common.errors import Interrupted, one_line, run_main
from common.runs import interrupted_message, summary_line, warn_testing_without_best
from datamodules import ImageDataModule
from lightning_side import SIDE
from lightning_side.callbacks import (BadImageCount, EpochThroughput, RunFolderGuard, SkippedSteps,
                                      StopBetweenSteps, StopOnNonFiniteLoss)
from lightning_side.checkpoint_callbacks import BestCheckpoint, LatestCheckpoints
from lightning_side.checkpoint_io import AtomicCheckpointIO
from lightning_side.module import ResNetModule
from lightning_side.resume import check_resumable, resume_checkpoint
from lightning_side.sync_batchnorm import GlobalBatchNormSync
from lightning_side.weights import WeightsError, load_model_state_dict

INITIAL_LOSS_SCALE = 2.0 ** 16  # GradScaler's default, which the flax side's DynamicScale starts at too
KEEP_LAST = 3  # epoch checkpoints kept besides the best one


def lightning_precision(precision: str, cuda_available: bool) -> str:
    """The harness's --precision as Lightning's `precision` argument."""
    if precision == "auto":
        return "16-mixed" if cuda_available else "32-true"
    return {"32": "32-true"}.get(precision, precision)


def precision_arguments(precision: str) -> dict:
    """Trainer arguments for a Lightning precision, keeping 16-mixed float16 on the CPU too.

    Given precision="16-mixed" on a CPU, Lightning switches to bf16-mixed with a warning; the
    flax side computes in float16 there, so the plugin is built by hand to stay the same experiment.
    """
    if precision == "16-mixed" and not torch.cuda.is_available():
        scaler = torch.amp.GradScaler("cpu", init_scale=INITIAL_LOSS_SCALE)
        return {"plugins": [MixedPrecision("16-mixed", device="cpu", scaler=scaler)]}
    return {"precision": precision}


def distributed_environment(config: TrainConfig) -> None:
    """--coordinator-address and --node-rank as the variables Lightning's cluster environment
    reads; without them, whatever launched the run (torchrun, SLURM, a shell) has set them."""
    if config.coordinator_address is not None:
        host, _, port = config.coordinator_address.rpartition(":")
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = host, port
    if config.node_rank is not None:
        os.environ["NODE_RANK"] = str(config.node_rank)


def create_module(config: TrainConfig, datamodule: ImageDataModule, resuming: bool) -> ResNetModule:
    """The LightningModule for the flags, with --init-from's weights unless a --resume checkpoint
    will overwrite them."""
    module = ResNetModule(
        model=config.model, num_classes=datamodule.num_classes, lr=config.lr,
        momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay,
        schedule=config.schedule, milestones=tuple(config.milestones),
        warmup_epochs=config.warmup_epochs, label_smoothing=config.label_smoothing,
        mean=datamodule.mean.tolist(), std=datamodule.std.tolist(),
        zero_init_residual=config.zero_init_residual)
    if config.precision == "64-true":
        # Lightning restores a --resume checkpoint into the module before its precision plugin
        # casts the module to float64, so float32 parameters would round the float64 weights
        # (by 1e-8, enough to break 64-true's lockstep): cast first.
        module = module.double()
    if config.init_from and not resuming:
        state_dict = load_model_state_dict(config.init_from)
        try:
            module.model.load_state_dict(state_dict)
        except RuntimeError as err:
            raise WeightsError(f"{config.init_from} does not fit {config.model} "
                               f"({one_line(err)})") from None
    return module


def create_logger(config: TrainConfig) -> TensorBoardLogger:
    """TensorBoard under <logdir>/lightning/<run-name>/version_N."""
    return TensorBoardLogger(save_dir=str(Path(config.logdir) / SIDE), name=config.run_name,
                             default_hp_metric=False)


class Callbacks(NamedTuple):
    """The run's callbacks, and by name the three that train() reads after fit."""

    best: BestCheckpoint  # by val/acc: the checkpoint the test split is evaluated with
    latest: LatestCheckpoints  # last.ckpt and the newest epochs, for --resume and Ctrl-C
    throughput: EpochThroughput  # images/s for the summary line
    all: list[L.Callback]  # the three above and the rest, in the Trainer's order


def create_callbacks(config: TrainConfig, extra: Sequence[L.Callback]) -> Callbacks:
    """The run's callbacks, with `extra` just before StopBetweenSteps, which comes last."""
    best = BestCheckpoint(monitor="val/acc", mode="max", save_top_k=1,
                          filename="best-epoch{epoch:03d}-step{step}", auto_insert_metric_name=False)
    latest = LatestCheckpoints(monitor="step", mode="max", save_top_k=KEEP_LAST, save_last="link",
                               filename="epoch{epoch:03d}-step{step}", auto_insert_metric_name=False)
    throughput = EpochThroughput()
    return Callbacks(best, latest, throughput, [
        best, latest, throughput, BadImageCount(), RunFolderGuard(), StopOnNonFiniteLoss(config.log_every),
        SkippedSteps(config.log_every), *extra, StopBetweenSteps(config.log_every)])


def build_trainer(config: TrainConfig, logger: TensorBoardLogger, callbacks: list[L.Callback]) -> L.Trainer:
    """The Trainer for the flags: precision, devices and strategy, checkpoints written atomically."""
    cuda = torch.cuda.is_available()
    arguments = precision_arguments(lightning_precision(config.precision, cuda))
    distributed = config.devices * config.num_nodes > 1
    arguments["plugins"] = [*arguments.get("plugins", []), AtomicCheckpointIO()]
    if distributed and not cuda:
        # BatchNorm statistics over the global batch, as on the flax side: torch's SyncBatchNorm
        # on GPUs (sync_batchnorm), GlobalBatchNorm2d where torch has no SyncBatchNorm kernels.
        arguments["plugins"] = [*arguments.get("plugins", []), GlobalBatchNormSync()]
    return L.Trainer(
        max_epochs=config.epochs,
        accelerator="auto",
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy="ddp" if distributed else "auto",
        sync_batchnorm=distributed and cuda,
        **arguments,
        logger=logger,
        callbacks=callbacks,
        log_every_n_steps=config.log_every,
        # None where not given: Lightning's default, all batches, without a line saying so.
        limit_train_batches=config.limit_train_batches,
        limit_val_batches=config.limit_val_batches,
        limit_test_batches=config.limit_test_batches,
        # The DataModule's sampler already fixes the global batch sequence for every rank, and
        # hands each rank its slice.
        use_distributed_sampler=False,
    )


def fit(trainer: L.Trainer, module: L.LightningModule, datamodule: ImageDataModule, ckpt_path: str | None,
        latest: LatestCheckpoints, run_name: str) -> None:
    """trainer.fit, from `ckpt_path` if given; Ctrl-C, once its checkpoint is written, becomes Interrupted."""
    try:
        with warnings.catch_warnings():
            # Lightning's alarm that an epoch has fewer batches than --log-every: each epoch still
            # gets its point, train/loss_epoch and train/acc_epoch (module.py).
            warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging interval")
            # weights_only: a checkpoint is data, never code to run.
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:  # Lightning's own ending after Ctrl-C, once its callbacks have run
        if not trainer.interrupted:
            raise
        raise Interrupted(interrupted_message(trainer.global_step, latest.last_model_path or "not written",
                                              run_name)) from None


def evaluate_test_split(trainer: L.Trainer, module: L.LightningModule, datamodule: ImageDataModule,
                         best: BestCheckpoint, latest: LatestCheckpoints) -> dict[str, float]:
    """test/* of the best checkpoint, or of the last one, with a warning, where the best is
    missing or cannot be read."""
    path, problem = best.best_model_path or None, None
    if path is None or not Path(path).is_file():
        path, problem = None, f"the best checkpoint {path or '(none written)'} is missing"
    else:  # a resumed run's best may lie in an older version folder, damaged since
        try:
            check_resumable(Path(path))
        except WeightsError as err:
            path, problem = None, f"the best checkpoint cannot be read ({err})"
    if problem and trainer.is_global_zero:
        warn_testing_without_best(problem, latest.last_model_path)
    return trainer.test(module, datamodule=datamodule, ckpt_path=path or latest.last_model_path,
                        verbose=False, weights_only=True)[0]


def run_summary(run_callbacks: Callbacks, test: dict[str, float], wall_seconds: float) -> dict[str, float]:
    """What train() returns: the best val/acc, test/*, the mean training throughput, the wall time."""
    best_score = run_callbacks.best.best_model_score
    return {
        "best_val_acc": float(best_score) if best_score is not None else float("nan"),
        "test_acc": float(test["test/acc"]),
        "test_loss": float(test["test/loss"]),
        "images_per_sec": run_callbacks.throughput.images_per_sec,
        "wall_seconds": wall_seconds,
    }


def print_summary_line(trainer: L.Trainer, logger: TensorBoardLogger, summary: dict[str, float]) -> None:
    """The one-line result both sides print (common.runs.summary_line), from rank 0 only."""
    if trainer.is_global_zero:
        print(summary_line(SIDE, summary["best_val_acc"], summary["test_acc"], summary["images_per_sec"],
                           summary["wall_seconds"], logger.log_dir))


def train(config: TrainConfig, callbacks: Sequence[L.Callback] = ()) -> dict[str, float]:
    """Fit, test the best checkpoint, print the summary line; `callbacks` are added to the Trainer's.

    the distributed environment -> the --resume checkpoint -> the seed -> the DataModule -> the module
    (fresh, --init-from, float64) -> the logger -> the callbacks -> the Trainer -> its hparams -> fit
    (Ctrl-C: Interrupted) -> test the best checkpoint (or the last) -> the summary line.
    """
    start = time.perf_counter()
    distributed_environment(config)
    ckpt_path = resume_checkpoint(config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = create_datamodule(config)
    module = create_module(config, datamodule, resuming=ckpt_path is not None)
    logger = create_logger(config)
    run_callbacks = create_callbacks(config, callbacks)
    trainer = build_trainer(config, logger, run_callbacks.all)
    # After the Trainer exists: it tells the logger which process is rank 0, the one that writes.
    logger.log_hyperparams(config.to_dict())
    # Compiled as Lightning's docs show: the whole LightningModule, before fit (its *_step
    # methods compile with it); checkpoints keep the plain module's keys.
    module = torch.compile(module) if config.compile else module
    fit(trainer, module, datamodule, ckpt_path, run_callbacks.latest, config.run_name)
    test = evaluate_test_split(trainer, module, datamodule, run_callbacks.best, run_callbacks.latest)
    summary = run_summary(run_callbacks, test, wall_seconds=time.perf_counter() - start)
    print_summary_line(trainer, logger, summary)
    return summary


def main(argv=None) -> None:
    config = parse_config(SIDE, argv)
    run_main(lambda: train(config), config.logdir)


if __name__ == "__main__":
    main(sys.argv[1:])
