"""Kill a run mid-training (SIGKILL) or stop it (Ctrl-C), then --resume last: it ends where an
uninterrupted run ends, bit for bit."""

import signal
import subprocess
import sys
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

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, Path]:
    """side -> the version folder of an uninterrupted run (both sides started together), which
    the SIGKILL and the Ctrl-C case each end on."""
    logdir = tmp_path_factory.mktemp("uninterrupted")
    done = finish({side: start_train(side, [*ARGV, "--logdir", str(logdir)]) for side in ("lightning", "flax")})
    for side, run in done.items():
        assert run.returncode == 0, run.stderr[-3000:]
    return {side: logdir / side / "resnet20-digits" / "version_0" for side in done}


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
@pytest.mark.parametrize("side", ["lightning", "flax"])
def test_stop_then_resume_matches_an_uninterrupted_run(tmp_path, side, how, uninterrupted):
    script = [sys.executable, f"{side}_side/train.py", *ARGV, "--logdir", str(tmp_path)]

    killed = subprocess.Popen([*script, "--run-name", "killed"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = tmp_path / side / "killed" / "version_0"
    deadline = time.monotonic() + 300
    while not first_checkpoint_written(side, first):
        assert killed.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch, most of the time
    killed.send_signal(getattr(signal, how))
    _, stderr = killed.communicate(timeout=120)
    if how == "SIGKILL":
        assert killed.returncode == -signal.SIGKILL
    else:  # a checkpoint at the step reached, and one line that says how to go on
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert killed.returncode == 130, stderr[-3000:]
        assert len(errors) == 1 and "--resume last" in errors[0] and "Traceback" not in stderr

    resumed = subprocess.run([*script, "--run-name", "killed", "--resume", "last"], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # It resumed rather than started over (which would end on the same weights): the new version
    # logs from the step after the checkpoint it resumed from, to the end.
    resumed_from = checkpoint_step(side, first)
    assert resumed_from >= 8
    second = tmp_path / side / "killed" / "version_1"
    assert first_step(second) == resumed_from
    assert [s for s, _ in scalars(second)["train/loss"]] == list(range(resumed_from, 24))
    a = final_weights(side, uninterrupted[side])
    b = final_weights(side, tmp_path / side / "killed" / "version_1")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
