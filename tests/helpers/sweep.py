"""A sweep stopped by Ctrl-C and continued (tests/conftest.py's digits_sweep), and its verdict;
FakeTraining, which lets harness.sweep run its plan without training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from common.sides import DEFAULT_SIDES

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
           for side in DEFAULT_SIDES}  # the sides the sweep ran: its default
    return acc, compare(acc["lightning"], acc["flax"], scales(1.0, 5.0)["test/acc"])


@dataclass
class FakeTraining:
    """Stands in for harness.sweep's subprocess module: each train.py command the sweep starts is
    recorded as (side, its arguments), and instead of training, the run it asks for is written at
    once (tests/helpers/fake_runs.py) in the next version folder of its run: finished, with
    test/acc test_acc(side, seed); or, for a (side, seed) of `stop` started without --resume,
    stopped as by Ctrl-C (exit 130) after its first epoch, with a checkpoint and no test/acc.
    Install it with monkeypatch.setattr(harness.sweep, "subprocess", fake.module())."""
    test_acc: Callable[[str, int], float]
    stop: set[tuple[str, int]] = field(default_factory=set)
    started: list[tuple[str, list[str]]] = field(default_factory=list)

    def module(self) -> SimpleNamespace:
        return SimpleNamespace(Popen=self.popen, STDOUT=subprocess.STDOUT)

    def popen(self, command: list[str], **kwargs) -> SimpleNamespace:
        from common.config import parse_config
        from common.runs import versions
        from common.sides import SIDES, train_script
        from tests.helpers.fake_runs import fake_run

        assert command[0] == sys.executable, command
        (side,) = [s for s in SIDES if Path(command[1]) == train_script(s)]
        argv = command[2:]
        self.started.append((side, argv))
        config = parse_config(side, argv).to_dict()
        assert config["dataset"] == "digits", "fake_run writes digits runs"
        logdir, name, seed = Path(config["logdir"]), config["run_name"], config["seed"]
        flags = {k: v for k, v in config.items() if k not in ("dataset", "run_name", "logdir")}
        version = len(versions(logdir, side, name))
        if (side, seed) in self.stop and config["resume"] is None:
            stopped = fake_run(logdir, side, name, version, test_acc=None, steps=range(0, 3), **flags)
            (stopped / "checkpoints" / "2").mkdir(parents=True)
            return SimpleNamespace(wait=lambda: 130, send_signal=lambda sig: None)
        fake_run(logdir, side, name, version, test_acc=self.test_acc(side, seed), **flags)
        return SimpleNamespace(wait=lambda: 0, send_signal=lambda sig: None)
