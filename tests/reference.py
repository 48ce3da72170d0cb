"""The reference run: one short run of each train.py that tests share (tests/conftest.py starts it).

Two short epochs with every train step logged, a cosine schedule with warm-up (so the LR moves
every step), two loader workers, two test batches. Tests that need a finished run read it (tag
set, checkpoints, --init-from, the report) or continue a copy of it (--resume); their own runs
with these flags find its flax steps in the session's compilation cache.
"""

import os
import shutil
import signal
import subprocess
import sys
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


ROOT = Path(__file__).resolve().parents[1]
SIDES = ("lightning", "flax")


@dataclass
class StartedReference:
    """Both sides' reference runs under way; result() waits for them."""

    folder: Path
    started: dict[str, subprocess.Popen]

    @property
    def logdir(self) -> Path:
        return self.folder / "logs"

    def result(self) -> dict[str, ReferenceRun]:
        runs = {}
        try:
            for side, process in self.started.items():
                process.wait(timeout=600)
                stderr = (self.folder / f"{side}.stderr").read_text()
                if process.returncode != 0:
                    raise RuntimeError(f"the {side} reference run failed: {stderr[-3000:]}")
                runs[side] = ReferenceRun(side, self.logdir, (self.folder / f"{side}.stdout").read_text())
        finally:
            self.stop()
        return runs

    def stop(self) -> None:
        for process in self.started.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # with its loader workers


def start_reference_runs(folder: Path) -> StartedReference:
    """Starts both train.py together (each mostly waits on its imports); returns at once. Their
    output goes to files beside the logdir, so no pipe fills up."""
    started = {}
    for side in SIDES:
        with open(folder / f"{side}.stdout", "w") as stdout, open(folder / f"{side}.stderr", "w") as stderr:
            started[side] = subprocess.Popen(
                [sys.executable, f"{side}_side/train.py", *REFERENCE_ARGV, "--logdir", str(folder / "logs")],
                cwd=ROOT, stdout=stdout, stderr=stderr, start_new_session=True)
    return StartedReference(folder, started)
