"""A diverging fp32 run stops with one line on both sides and keeps its last good checkpoint."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("side", ["lightning", "flax"])
def test_non_finite_loss_stops_the_run(tmp_path, side):
    argv = ["--dataset", "digits", "--epochs", "3", "--limit-train-batches", "5", "--batch-size", "32",
            "--limit-val-batches", "1", "--log-every", "1", "--lr", "1e8", "--logdir", str(tmp_path)]
    out = subprocess.run([sys.executable, f"{side}_side/train.py", *argv], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training diverged" in errors[0] and "Traceback" not in out.stderr
    named = re.search(r"last good checkpoint is (\S+)", errors[0])
    if named:  # the checkpoint it names is there
        assert Path(named.group(1)).exists()
    else:
        assert "no checkpoint had been written yet" in errors[0]
