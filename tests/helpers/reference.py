"""The reference run: one short run of each train.py that tests share (tests/conftest.py starts it).

Two short epochs with every train step logged, a cosine schedule with warm-up (so the LR moves
every step), two loader workers, two test batches. Tests that need a finished run read it (tag
set, checkpoints, --init-from, the report) or continue a copy of it (--resume); their own runs
with these flags find its flax steps in the session's compilation cache.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

REFERENCE_ARGV = ["--dataset", "digits", "--batch-size", "32", "--limit-train-batches", "3",
                  "--limit-val-batches", "2", "--limit-test-batches", "2", "--log-every", "1",
                  "--epochs", "2", "--schedule", "cosine", "--warmup-epochs", "1", "--num-workers", "2",
                  "--run-name", "reference"]


@dataclass(frozen=True)
class ReferenceRun:
    """One side's finished reference run, under its own logdir."""

    side: str
    logdir: Path
    stdout: str

    @property
    def argv(self) -> list[str]:
        """The run's flags, its --logdir included."""
        return [*REFERENCE_ARGV, "--logdir", str(self.logdir)]

    @property
    def version(self) -> Path:
        return self.logdir / self.side / "reference" / "version_0"

    def copy_to(self, logdir: Path) -> Path:
        """A copy of the run under another logdir, for a test that writes (a resume, damage);
        returns the copy's version folder."""
        shutil.copytree(self.logdir / self.side, logdir / self.side, symlinks=True)  # last.ckpt links relatively
        return logdir / self.side / "reference" / "version_0"
