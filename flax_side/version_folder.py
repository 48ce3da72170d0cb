"""The run's version folder: its TensorBoard logger, hparams.yaml and checkpoint manager.

A new version folder every run, resumed runs included: logs/<side>/<run-name>/version_N, numbered
as Lightning's TensorBoardLogger numbers them. A resumed run first gets a copy of the checkpoints
it resumed from (checkpoint.carry_over), so each version folder is complete on its own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from lightning.fabric.loggers import TensorBoardLogger
from lightning.fabric.utilities.rank_zero import rank_zero_only

from common import disk_faults
from common.config import TrainConfig, save_yaml
from flax_side import checkpoint


def lead_process() -> bool:
    """Whether this is process 0, the one process that writes TensorBoard, hparams.yaml and prints."""
    rank_zero_only.rank = jax.process_index()  # the logger's own switch: it writes on rank 0 only
    return jax.process_index() == 0


class CarryOver(NamedTuple):
    """The checkpoints folder a resumed run came from, the step it restored, and the steps there
    it found damaged (left behind)."""

    source: Path
    step: int
    damaged: set[int]


@dataclasses.dataclass(frozen=True)
class VersionFolder:
    """`with folder:` closes it however the run ends: the last save waited for, the torch copies
    of unfinished checkpoints dropped, the manager closed and the logger finalised."""

    path: Path
    logger: TensorBoardLogger
    manager: ocp.CheckpointManager
    run_folder: disk_faults.RunFolder | None  # process 0's watch on the folder

    def check_disk(self) -> None:
        if self.run_folder is not None:  # a vanished run folder: stop, rather than save into a new one
            self.run_folder.check()

    def __enter__(self) -> "VersionFolder":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            self.manager.wait_until_finished()  # raises here if the disk filled while it wrote
        finally:
            checkpoint.drop_unfinished_exports(self.manager)
            self.manager.close()
            self.logger.finalize("failed" if exc_type is not None else "success")


def create_logger(config: TrainConfig, side: str) -> TensorBoardLogger:
    """The next version of the run; with several processes, process 0 picks it and tells the others."""
    logger = TensorBoardLogger(root_dir=Path(config.logdir) / side, name=config.run_name,
                               default_hp_metric=False)
    if jax.process_count() > 1:
        lead = jax.process_index() == 0
        version = multihost_utils.broadcast_one_to_all(np.int32(logger.version if lead else 0))
        logger = TensorBoardLogger(root_dir=Path(config.logdir) / side, name=config.run_name,
                                   version=int(version), default_hp_metric=False)
    return logger


def open_version_folder(config: TrainConfig, side: str, carry_over: CarryOver | None) -> VersionFolder:
    """A new version folder with the run's hparams (and, resuming, the checkpoints it came from)."""
    logger = create_logger(config, side)
    path = Path(logger.log_dir)
    logger.log_hyperparams(config.to_dict())
    run_folder = None
    if jax.process_index() == 0:
        path.mkdir(parents=True, exist_ok=True)  # the logger makes it lazily
        save_yaml(config, path / "hparams.yaml")  # rerun it with --config
        run_folder = disk_faults.RunFolder(path)
    if carry_over is not None:
        checkpoint.carry_over(carry_over.source, carry_over.step, path / checkpoint.CHECKPOINTS,
                              carry_over.damaged)
    manager = checkpoint.create_manager(path / checkpoint.CHECKPOINTS)
    return VersionFolder(path, logger, manager, run_folder)
