"""Stop a run with Ctrl-C and --resume last; kill that resumed run (SIGKILL) and --resume last
again: it ends where an uninterrupted run ends, bit for bit."""

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from harness.lockstep import final_weights
from harness.processes import finish, start_train
from tests.helpers.tb import first_step, scalars
from common.sides import SIDES

# Real signals to train.py processes and reruns, per side: the slow suite. Fast: the in-process
# Ctrl-C and resume tests of test_lightning_train.py and test_flax_train.py.
pytestmark = pytest.mark.slow

EPOCH, EPOCHS = 10, 3  # steps an epoch; a stop lands a few steps into the epoch after a checkpoint
ARGV = ["--dataset", "digits", "--epochs", str(EPOCHS), "--limit-train-batches", str(EPOCH), "--batch-size", "32",
        "--limit-val-batches", "1", "--limit-test-batches", "1", "--log-every", "1"]


def epoch_checkpoint_written(side: str, version: Path, epoch: int) -> bool:
    """Whether the version folder holds the complete checkpoint of that epoch's end."""
    if side == "lightning":
        return any((version / "checkpoints").glob(f"epoch{epoch:03d}-*.ckpt"))
    return (version / "checkpoints" / str(EPOCH * (epoch + 1)) / "state").is_dir()  # Orbax renames it in when complete


def checkpoint_step(side: str, version: Path) -> int:
    """The step of the newest complete checkpoint in a version folder: what --resume last takes."""
    if side == "lightning":
        import torch

        from lightning_side.resume import _newest_first, check_resumable
        from lightning_side.weights import WeightsError

        for path in _newest_first(version / "checkpoints"):
            try:
                check_resumable(path)
            except WeightsError:
                continue
            return torch.load(path, map_location="cpu", weights_only=True)["global_step"]
        raise AssertionError(f"no complete checkpoint in {version}")
    return max(int(p.name) for p in (version / "checkpoints").iterdir()
               if p.name.isdigit() and (p / "state").is_dir())


def start_both(logdir: Path, *extra: str) -> dict:
    return {side: start_train(side, [*ARGV, "--logdir", str(logdir), *extra]) for side in SIDES}


def stop_both(started: dict, run: dict, how: str, epoch: dict) -> dict:
    """side -> the CompletedProcess of its started run, stopped by the signal `how` a moment
    after the version folder run[side] holds the checkpoint of the end of epoch[side]."""
    try:
        waiting, deadline = set(SIDES), time.monotonic() + 300
        while waiting:
            for side in list(waiting):
                process = started[side]
                assert process.poll() is None, f"the {side} run ended before the {how}: {process.communicate()[1][-3000:]}"
                assert time.monotonic() < deadline
                if epoch_checkpoint_written(side, run[side], epoch[side]):
                    time.sleep(0.1)  # a step or two into the next epoch, most of the time
                    process.send_signal(getattr(signal, how))
                    waiting.discard(side)
            time.sleep(0.05)
    except BaseException:
        for process in started.values():
            os.killpg(process.pid, signal.SIGKILL)
        raise
    return finish(started)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """side -> (the version folder of an uninterrupted run, the stopped run's folder, the
    CompletedProcesses of its three versions: stopped by Ctrl-C after the first epoch's
    checkpoint, resumed and killed after the next epoch's, resumed to the end). The two sides
    run together, two processes at a time (more than the cores only slow each other down)."""
    logdir = tmp_path_factory.mktemp("runs")
    straight = finish(start_both(logdir))
    for side in SIDES:
        assert straight[side].returncode == 0, straight[side].stderr[-3000:]
    folder = {side: logdir / side / "stopped" for side in SIDES}
    interrupted = stop_both(start_both(logdir, "--run-name", "stopped"),
                            {side: folder[side] / "version_0" for side in SIDES}, "SIGINT",
                            epoch={side: 0 for side in SIDES})
    # Killed after the checkpoint of the epoch it resumed in, which must not be the last.
    reached = {side: checkpoint_step(side, folder[side] / "version_0") for side in SIDES}
    assert max(reached.values()) < (EPOCHS - 1) * EPOCH, f"Ctrl-C landed too late to kill the resumed run: {reached}"
    killed = stop_both(start_both(logdir, "--run-name", "stopped", "--resume", "last"),
                       {side: folder[side] / "version_1" for side in SIDES}, "SIGKILL",
                       epoch={side: reached[side] // EPOCH for side in SIDES})
    resumed = finish(start_both(logdir, "--run-name", "stopped", "--resume", "last"))
    return {side: (logdir / side / "resnet20-digits" / "version_0", folder[side],
                   (interrupted[side], killed[side], resumed[side])) for side in SIDES}


@pytest.mark.parametrize("side", SIDES)
def test_ctrl_c_saves_the_step_reached_and_says_how_to_go_on(side, runs):
    _, run, (interrupted, killed, _) = runs[side]
    errors = [line for line in interrupted.stderr.splitlines() if line.startswith("error:")]
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    assert len(errors) == 1 and "--resume last" in errors[0] and "Traceback" not in interrupted.stderr
    # The checkpoint of the step reached, after the first epoch's: the resumed (then killed)
    # version logs from the step after it, where one that started over would log from 0.
    reached = checkpoint_step(side, run / "version_0")
    assert reached >= EPOCH
    assert killed.returncode == -signal.SIGKILL
    assert first_step(run / "version_1") == reached


@pytest.mark.parametrize("side", SIDES)
def test_a_run_resumed_after_ctrl_c_and_sigkill_ends_like_an_uninterrupted_one(side, runs):
    uninterrupted, run, (_, _, resumed) = runs[side]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # It went on from the killed version's newest complete checkpoint (an epoch's end after
    # the Ctrl-C's step) to the end.
    resumed_from = checkpoint_step(side, run / "version_1")
    assert resumed_from > checkpoint_step(side, run / "version_0") and resumed_from % EPOCH == 0
    assert [s for s, _ in scalars(run / "version_2")["train/loss"]] == list(range(resumed_from, EPOCHS * EPOCH))
    a = final_weights(side, uninterrupted)
    b = final_weights(side, run / "version_2")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
