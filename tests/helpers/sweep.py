"""A sweep stopped by Ctrl-C and continued (tests/conftest.py's digits_sweep), and its verdict."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common.sides import SIDES

ROOT = Path(__file__).resolve().parents[2]
# A short recipe: the README's digits sweep, but 2 epochs at batch 32 instead of 10 at 128.
RECIPE = ["--dataset", "digits", "--epochs", "2", "--batch-size", "32", "--schedule", "cosine",
          "--warmup-epochs", "1"]


@dataclass(frozen=True)
class StoppedSweep:
    logdir: Path
    command: list[str]
    stopped: subprocess.CompletedProcess  # the sweep, Ctrl-C in its first run's second epoch
    first_run_finished_when_stopped: bool
    continued: subprocess.CompletedProcess  # the same command again, to the end


def stop_then_continue(logdir: Path, seeds: int = 3) -> StoppedSweep:
    """`python -m harness.sweep --seeds 3` of RECIPE, stopped by Ctrl-C once its first run has
    saved its first epoch, then the same command again."""
    from harness.trials import run_trials

    command = [sys.executable, "-m", "harness.sweep", "--seeds", str(seeds), *RECIPE, "--logdir", str(logdir)]
    # The sweep gets SIGINT at its default, as a terminal's foreground job has it: a suite started
    # in the background by a script has it ignored (POSIX), and a child inherits that, but not a
    # handler. (preexec_fn would fork this multithreaded process.)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sweep = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, inherited)
    try:
        deadline = time.monotonic() + 600
        while not list(logdir.glob("lightning/*-seed0/version_0/checkpoints/*.ckpt")):  # epoch 0 saved
            assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
            time.sleep(0.1)
        os.kill(sweep.pid, signal.SIGINT)  # the sweep alone, as a terminal's Ctrl-C reaches it
        out, err = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    stopped = subprocess.CompletedProcess(command, sweep.returncode, out, err)
    (first_run,) = logdir.glob("lightning/*-seed0")
    (trial,) = run_trials(first_run, "lightning")
    continued = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    return StoppedSweep(logdir, command, stopped, trial.finished, continued)


def verdict_on_test_acc(logdir: Path):
    """(test/acc of each side's runs, the verdict on their difference), as the report gives it."""
    from harness.compare import scales
    from harness.trials import find_trials
    from harness.verdicts import compare

    acc = {side: [t.summary()["test/acc"] for t in find_trials(logdir) if t.side == side]
           for side in SIDES}
    return acc, compare(acc["lightning"], acc["flax"], scales(1.0, 5.0)["test/acc"])
