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

ROOT = Path(__file__).resolve().parents[1]
ARGV = ["--dataset", "digits", "--epochs", "3", "--limit-train-batches", "8", "--batch-size", "32",
        "--limit-val-batches", "1", "--log-every", "1"]


def first_checkpoint_written(side: str, version: Path) -> bool:
    if side == "lightning":
        return any((version / "checkpoints").glob("epoch000-*.ckpt"))
    return (version / "checkpoints" / "8" / "state").is_dir()  # Orbax renames it in when complete


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
@pytest.mark.parametrize("side", ["lightning", "flax"])
def test_stop_then_resume_matches_an_uninterrupted_run(tmp_path, side, how):
    script = [sys.executable, f"{side}_side/train.py", *ARGV, "--logdir", str(tmp_path)]
    straight = subprocess.run([*script, "--run-name", "straight"], cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

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
    a = final_weights(side, tmp_path / side / "straight" / "version_0")
    b = final_weights(side, tmp_path / side / "killed" / "version_1")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("side", ["lightning", "flax"])
def test_checkpoints_on_disk_stay_bounded(tmp_path, side):
    """Six epochs leave the last 3 epoch checkpoints and the best one, no more."""
    argv = ["--dataset", "digits", "--epochs", "6", "--limit-train-batches", "1", "--batch-size", "32",
            "--limit-val-batches", "1", "--logdir", str(tmp_path)]
    out = subprocess.run([sys.executable, f"{side}_side/train.py", *argv], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    version = tmp_path / side / "resnet20-digits" / "version_0"
    if side == "lightning":
        files = sorted(p.name for p in (version / "checkpoints").iterdir())
        epochs = [f for f in files if f.startswith("epoch")]
        best = [f for f in files if f.startswith("best")]
        assert epochs == ["epoch003-step4.ckpt", "epoch004-step5.ckpt", "epoch005-step6.ckpt"], files
        assert len(best) == 1 and "last.ckpt" in files and len(files) == 5, files
    else:
        steps = sorted(int(p.name) for p in (version / "checkpoints").iterdir() if p.name.isdigit())
        assert steps[-3:] == [4, 5, 6] and len(steps) <= 4, steps
        exports = sorted(int(p.stem) for p in (version / "torch_weights").glob("*.pt"))
        assert exports == steps
