"""Run folders written without training: event files and hparams.yaml as both trainers write them,
for tests of what reads them back (harness/compare.py, harness/sweep.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import yaml
from torch.utils.tensorboard import SummaryWriter

from common.config import TrainConfig


def fake_run(logdir: Path, side: str, run_name: str, version: int = 0, *, test_acc: float | None,
             steps: range = range(0, 6), images_per_sec: float | Sequence[float] = 500.0, loss: float = 1.0,
             start: float | None = None, peak_memory_mb: float = 1000.0, seconds_per_step: float = 1.0,
             **flags) -> Path:
    """One version folder: train/loss at `steps`, one every `seconds_per_step`, val/acc and perf
    per epoch of 3 steps (`images_per_sec` one value, or one per epoch counted from step 0),
    test/* if `test_acc` is given, and hparams.yaml of TrainConfig(**flags)."""
    config = TrainConfig(dataset="digits", run_name=run_name, logdir=str(logdir), **flags)
    version_dir = Path(logdir) / side / run_name / f"version_{version}"
    version_dir.mkdir(parents=True)
    (version_dir / "hparams.yaml").write_text(yaml.safe_dump(config.to_dict()))
    writer = SummaryWriter(str(version_dir))
    t = time.time() if start is None else start
    for step in steps:
        t += seconds_per_step
        writer.add_scalar("train/loss", loss / (1 + step), step, walltime=t)
        if step % 3 == 2:
            speed = images_per_sec if isinstance(images_per_sec, (int, float)) else images_per_sec[step // 3]
            writer.add_scalar("val/acc", 0.5 + step / 100, step, walltime=t)
            writer.add_scalar("perf/train_images_per_sec", speed, step, walltime=t)
            writer.add_scalar("perf/peak_memory_mb", peak_memory_mb, step, walltime=t)
    if test_acc is not None:
        writer.add_scalar("test/acc", test_acc, steps[-1], walltime=t + seconds_per_step)
        writer.add_scalar("test/loss", loss, steps[-1], walltime=t + seconds_per_step)
    writer.close()
    return version_dir
