"""Kill a run mid-training (SIGKILL) or stop it (Ctrl-C), then --resume last: it ends where an
uninterrupted run ends, bit for bit."""

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.parity import final_weights
from tests.processes import finish, start_train
from tests.tb import first_step, scalars

# A real kill or Ctrl-C of a subprocess and a rerun, per side: the slow suite. Fast: the in-process
# Ctrl-C and resume tests of test_lightning_train.py and test_flax_train.py.
pytestmark = pytest.mark.slow

ARGV = ["--dataset", "digits", "--epochs", "3", "--limit-train-batches", "8", "--batch-size", "32",
        "--limit-val-batches", "1", "--limit-test-batches", "1", "--log-every", "1"]


def first_checkpoint_written(side: str, version: Path) -> bool:
    if side == "lightning":
        return any((version / "checkpoints").glob("epoch000-*.ckpt"))
    return (version / "checkpoints" / "8" / "state").is_dir()  # Orbax renames it in when complete


def checkpoint_step(side: str, version: Path) -> int:
    """The step of the newest complete checkpoint in a version folder: what --resume last takes."""
    if side == "lightning":
        import torch

        from lightning_side.train import _newest_first, check_resumable
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


SIDES, HOWS = ("lightning", "flax"), ("SIGKILL", "SIGINT")
CASES = [(side, how) for side in SIDES for how in HOWS]


def start(side: str, logdir: Path, *extra: str):
    return start_train(side, [*ARGV, "--logdir", str(logdir), *extra])


def case_logdir(logdir: Path, case: tuple[str, str]) -> Path:
    """Where a case's stopped run and its resume write (run name "killed")."""
    return logdir / "-".join(case)


def stopped_runs(logdir: Path, cases: list) -> dict:
    """case -> the CompletedProcess of a run stopped by the case's signal once its first epoch's
    checkpoint is written; the runs are started together."""
    started = {case: start(case[0], case_logdir(logdir, case), "--run-name", "killed") for case in cases}
    try:
        waiting, deadline = set(cases), time.monotonic() + 300
        while waiting:
            for side, how in list(waiting):
                process = started[side, how]
                assert process.poll() is None, f"the run ended before it was stopped: {process.communicate()[1][-3000:]}"
                assert time.monotonic() < deadline
                if first_checkpoint_written(side, case_logdir(logdir, (side, how)) / side / "killed" / "version_0"):
                    time.sleep(0.3)  # into the next epoch, most of the time
                    process.send_signal(getattr(signal, how))
                    waiting.discard((side, how))
            time.sleep(0.05)
    except BaseException:
        for process in started.values():
            os.killpg(process.pid, signal.SIGKILL)
        raise
    return finish(started)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Two processes at a time (more than the cores only slow each other down): side -> the
    version folder of an uninterrupted run; (side, how) -> (the stopped run's CompletedProcess,
    then its resume's, the run folder)."""
    logdir = tmp_path_factory.mktemp("runs")
    straight = finish({side: start(side, logdir) for side in SIDES})
    for side in SIDES:
        assert straight[side].returncode == 0, straight[side].stderr[-3000:]
    out = {side: logdir / side / "resnet20-digits" / "version_0" for side in SIDES}
    for side in SIDES:
        cases = [(side, how) for how in HOWS]
        stopped = stopped_runs(logdir, cases)
        resumed = finish({case: start(side, case_logdir(logdir, case), "--run-name", "killed", "--resume", "last")
                          for case in cases})
        for case in cases:
            out[case] = (stopped[case], resumed[case], case_logdir(logdir, case) / side / "killed")
    return out


@pytest.mark.parametrize("side, how", CASES)
def test_stop_then_resume_matches_an_uninterrupted_run(side, how, runs):
    stopped, resumed, run = runs[side, how]
    if how == "SIGKILL":
        assert stopped.returncode == -signal.SIGKILL
    else:  # a checkpoint at the step reached, and one line that says how to go on
        errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
        assert stopped.returncode == 130, stopped.stderr[-3000:]
        assert len(errors) == 1 and "--resume last" in errors[0] and "Traceback" not in stopped.stderr

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # It resumed rather than started over (which would end on the same weights): the new version
    # logs from the step after the checkpoint it resumed from, to the end.
    resumed_from = checkpoint_step(side, run / "version_0")
    assert resumed_from >= 8
    assert first_step(run / "version_1") == resumed_from
    assert [s for s, _ in scalars(run / "version_1")["train/loss"]] == list(range(resumed_from, 24))
    a = final_weights(side, runs[side])
    b = final_weights(side, run / "version_1")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
