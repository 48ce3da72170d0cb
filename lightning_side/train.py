"""Train a CIFAR ResNet with the Lightning side of the harness.

    python lightning_side/train.py --dataset digits --epochs 10 --schedule cosine --warmup-epochs 1
    python lightning_side/train.py --resume last            # continue the newest version
    python lightning_side/train.py --help

The flags are shared with flax_side/train.py (harness/config.py); runs land in
logs/lightning/<run-name>/version_N for `tensorboard --logdir logs`.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import MixedPrecision

from datamodules import DataError, ImageDataModule
from harness import disk_faults
from harness.config import TrainConfig, fail, parse_config
from harness.runs import run_root, summary_line, versions
from lightning_side.callbacks import (BadImages, EpochThroughput, LatestCheckpoints, RunFolderGuard,
                                      SkippedSteps, StopBetweenSteps, StopOnNonFiniteLoss, TrainingError)
from lightning_side.checkpoint_io import AtomicCheckpointIO
from lightning_side.module import ResNetModule
from lightning_side.sync_batchnorm import GlobalBatchNormSync
from lightning_side.weights import WeightsError, load_model_state_dict

SIDE = "lightning"
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


def resume_checkpoint(config: TrainConfig) -> str | None:
    """The checkpoint --resume names: a .ckpt path, or for 'last' the newest complete checkpoint
    of the newest version of --run-name that has one.

    Lightning writes a checkpoint in place, so a run killed while saving leaves a truncated
    file; 'last' passes over such files to the newest one that loads."""
    if config.resume is None:
        return None
    if config.resume != "last":
        path = Path(config.resume)
        if path.is_dir():
            flax = "; to start from a flax run's weights, give it to --init-from" if _flax_run(path) else ""
            raise WeightsError(f"{path} is a folder; --resume on the Lightning side takes a .ckpt "
                               f"file of a Lightning run, or 'last'{flax}")
        if not path.is_file():
            raise WeightsError(f"{path} does not exist; give --resume a .ckpt file or 'last'")
        check_resumable(path)
        return str(path)
    passed = []
    for version in reversed(versions(config.logdir, SIDE, config.run_name)):
        for candidate in _newest_first(version / "checkpoints"):
            try:
                check_resumable(candidate)
            except WeightsError as err:
                passed.append(str(err))
                continue
            if passed:
                print(f"warning: --resume last passed over {len(passed)} damaged checkpoint(s): "
                      f"{'; '.join(passed)}; resuming from {candidate}", file=sys.stderr, flush=True)
            return str(candidate)
    raise WeightsError(f"no complete checkpoint to resume under "
                       f"{run_root(config.logdir, SIDE, config.run_name)}; check --logdir and --run-name")


def _flax_run(path: Path) -> bool:
    """A flax version, checkpoints or step folder (the other side's run)."""
    return any(any(path.glob(pattern)) for pattern in ("torch_weights", "checkpoints/*/state", "*/state", "state"))


def _newest_first(directory: Path) -> list[Path]:
    """last.ckpt, then the epoch and best checkpoints by their global step, newest first."""
    def step(path: Path) -> int:
        found = re.search(r"step(\d+)", path.name)
        return int(found.group(1)) if found else -1

    others = sorted((p for p in directory.glob("*.ckpt") if p.name != "last.ckpt"), key=step, reverse=True)
    last = directory / "last.ckpt"
    return ([last] if last.is_file() else []) + others


def check_resumable(path: Path) -> None:
    """A one-line WeightsError unless `path` is a whole Lightning checkpoint."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise WeightsError(f"{path} is not a readable checkpoint ({reason[:200]})") from None
    if not isinstance(checkpoint, dict) or "loops" not in checkpoint or "state_dict" not in checkpoint:
        raise WeightsError(f"{path} is not a Lightning training checkpoint (no loop state to resume); "
                           "use it with --init-from instead")


def distributed_environment(config: TrainConfig) -> None:
    """--coordinator-address and --node-rank as the variables Lightning's cluster environment
    reads; without them, whatever launched the run (torchrun, SLURM, a shell) has set them."""
    if config.coordinator_address is not None:
        host, _, port = config.coordinator_address.rpartition(":")
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = host, port
    if config.node_rank is not None:
        os.environ["NODE_RANK"] = str(config.node_rank)


def build_trainer(config: TrainConfig, logger, callbacks) -> L.Trainer:
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
        limit_train_batches=config.limit_train_batches or 1.0,
        limit_val_batches=config.limit_val_batches or 1.0,
        limit_test_batches=config.limit_test_batches or 1.0,
        # The DataModule's sampler already fixes the global batch sequence for every rank, and
        # hands each rank its slice.
        use_distributed_sampler=False,
    )


def train(config: TrainConfig, callbacks: Sequence[L.Callback] = ()) -> dict[str, float]:
    """Fit, test the best checkpoint, print the summary line; `callbacks` are added to the Trainer's."""
    start = time.perf_counter()
    distributed_environment(config)
    ckpt_path = resume_checkpoint(config)
    L.seed_everything(config.seed, workers=True, verbose=False)

    datamodule = ImageDataModule(dataset=config.dataset, data_dir=config.data_dir,
                                 batch_size=config.batch_size, num_workers=config.num_workers,
                                 seed=config.seed, image_size=config.image_size)
    datamodule.prepare_data()
    datamodule.setup()
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
    if config.init_from and ckpt_path is None:
        state_dict = load_model_state_dict(config.init_from)
        try:
            module.model.load_state_dict(state_dict)
        except RuntimeError as err:
            raise WeightsError(f"{config.init_from} does not fit {config.model} "
                               f"({str(err).splitlines()[0]})") from None

    logger = TensorBoardLogger(save_dir=str(Path(config.logdir) / SIDE), name=config.run_name,
                               default_hp_metric=False)
    # Two callbacks: this Lightning refreshes save_last only when its own top-k saves, so a
    # monitor="val/acc" callback alone would leave last.ckpt behind after an epoch that didn't improve.
    checkpoint = ModelCheckpoint(monitor="val/acc", mode="max", save_top_k=1,
                                 filename="best-epoch{epoch:03d}-step{step}",
                                 auto_insert_metric_name=False)
    latest = LatestCheckpoints(monitor="step", mode="max", save_top_k=KEEP_LAST, save_last="link",
                               filename="epoch{epoch:03d}-step{step}", auto_insert_metric_name=False)
    throughput = EpochThroughput()
    trainer = build_trainer(config, logger, [checkpoint, latest, throughput, BadImages(), RunFolderGuard(),
                                             StopOnNonFiniteLoss(config.log_every),
                                             SkippedSteps(config.log_every), *callbacks,
                                             StopBetweenSteps(config.log_every)])  # last
    # After the Trainer exists: it tells the logger which process is rank 0, the one that writes.
    logger.log_hyperparams(config.to_dict())
    # weights_only: a checkpoint is data, never code to run.
    # Compiled as Lightning's docs show: the whole LightningModule, before fit (its *_step
    # methods compile with it); checkpoints keep the plain module's keys.
    fit_module = torch.compile(module) if config.compile else module
    try:
        trainer.fit(fit_module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:  # Lightning's own ending after Ctrl-C, once its callbacks have run
        if not trainer.interrupted:
            raise
        raise Interrupted(f"interrupted at step {trainer.global_step}; the checkpoint is "
                          f"{latest.last_model_path or 'not written'}; continue with --resume last "
                          f"--run-name {config.run_name}") from None

    best, problem = checkpoint.best_model_path or None, None
    if best is None or not Path(best).is_file():
        best, problem = None, f"the best checkpoint {best or '(none written)'} is missing"
    else:  # a resumed run's best may lie in an older version folder, damaged since
        try:
            check_resumable(Path(best))
        except WeightsError as err:
            best, problem = None, f"the best checkpoint cannot be read ({err})"
    if problem and trainer.is_global_zero:
        print(f"warning: {problem}; the test split is evaluated with {latest.last_model_path}",
              file=sys.stderr, flush=True)
    test = trainer.test(fit_module, datamodule=datamodule, ckpt_path=best or latest.last_model_path,
                        verbose=False, weights_only=True)[0]
    result = {
        "best_val_acc": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None
        else float("nan"),
        "test_acc": float(test["test/acc"]),
        "test_loss": float(test["test/loss"]),
        "images_per_sec": throughput.images_per_sec,
        "wall_seconds": time.perf_counter() - start,
    }
    if trainer.is_global_zero:
        print(summary_line(SIDE, result["best_val_acc"], result["test_acc"], result["images_per_sec"],
                           result["wall_seconds"], logger.log_dir))
    return result


class Interrupted(Exception):
    """Ctrl-C: the run stopped after writing a checkpoint; the message says how to go on."""


def main(argv=None) -> None:
    config = parse_config(SIDE, argv)
    disk_faults.quiet(config.logdir)
    try:
        train(config)
    except (DataError, WeightsError, TrainingError) as err:
        fail(str(err))
    except Interrupted as err:
        fail(str(err), code=130)  # the shell's code for a run ended by SIGINT
    except Exception as err:
        message = disk_faults.find(err, config.logdir)
        if message is None:
            raise
        fail(message, code=disk_faults.EXIT_CODE)


if __name__ == "__main__":
    main(sys.argv[1:])
