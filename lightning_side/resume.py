"""The checkpoint --resume names on the Lightning side, found and checked before the run starts."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from common.config import TrainConfig
from common.errors import one_line
from common.runs import run_root, versions, warn_passed_over
from common.sides import TORCH_WEIGHTS
from lightning_side import SIDE
from lightning_side.weights import WeightsError


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
                warn_passed_over(passed, candidate)
            return str(candidate)
    raise WeightsError(f"no complete checkpoint to resume under "
                       f"{run_root(config.logdir, SIDE, config.run_name)}; check --logdir and --run-name")


def _flax_run(path: Path) -> bool:
    """A flax version, checkpoints or step folder (the other side's run)."""
    return any(any(path.glob(pattern)) for pattern in (TORCH_WEIGHTS, "checkpoints/*/state", "*/state", "state"))


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
        raise WeightsError(f"{path} is not a readable checkpoint ({one_line(err)})") from None
    if not isinstance(checkpoint, dict) or "loops" not in checkpoint or "state_dict" not in checkpoint:
        raise WeightsError(f"{path} is not a Lightning training checkpoint (no loop state to resume); "
                           "use it with --init-from instead")
