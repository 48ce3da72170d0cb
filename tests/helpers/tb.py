"""Reading TensorBoard event files in tests."""

from harness.events import scalars

# docs/design.md's tag set; train/loss_scale is written under 16-mixed only.
DESIGN_TAGS = {"train/loss", "train/acc", "train/lr", "train/loss_epoch", "train/acc_epoch", "val/loss", "val/acc", "test/loss",
               "test/acc", "perf/train_images_per_sec", "perf/epoch_seconds", "epoch"}


def first_step(version_dir, tag: str = "train/loss") -> int:
    """The first step a version logged `tag` at: after --resume, the step after the checkpoint's
    last one (0 would mean the run started over)."""
    return min(step for step, _ in scalars(version_dir)[tag])
