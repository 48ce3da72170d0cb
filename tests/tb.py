"""Reading TensorBoard event files in tests."""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# DESIGN.md's tag set; train/loss_scale is written under 16-mixed only.
DESIGN_TAGS = {"train/loss", "train/acc", "train/lr", "val/loss", "val/acc", "test/loss",
               "test/acc", "perf/train_images_per_sec", "perf/epoch_seconds", "epoch"}


def scalars(version_dir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every event file in a run's version folder."""
    acc = EventAccumulator(str(Path(version_dir)), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def first_step(version_dir, tag: str = "train/loss") -> int:
    """The first step a version logged `tag` at: after --resume, the step after the checkpoint's
    last one (0 would mean the run started over)."""
    return min(step for step, _ in scalars(version_dir)[tag])
