"""python -m harness.sweep: both sides over several seeds, an interrupted sweep that continues,
and the report at the end."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.config import TrainConfig
from harness.recipes import recipe_id
from harness.sweep import main
from harness.trials import run_trials
from tests.fake_runs import fake_run

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--dataset", "digits", "--batch-size", "32", "--limit-val-batches", "2", "--log-every", "1"]


def _prefix(**flags) -> str:
    return f"resnet20-digits-{recipe_id(TrainConfig(dataset='digits', **flags).to_dict())}"


def test_finished_seeds_are_skipped_and_the_report_is_written(tmp_path, capsys):
    prefix = _prefix(epochs=2)
    for seed in range(2):
        for side in ("lightning", "flax"):
            fake_run(tmp_path, side, f"{prefix}-seed{seed}", test_acc=0.9 + seed / 100, epochs=2, seed=seed)
    assert main(["--seeds", "2", "--dataset", "digits", "--epochs", "2", "--logdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert lines == [f"[{i}/4] {side:<9} seed {seed}: finished before, skipped (test/acc {0.9 + seed / 100:.4f})"
                     for i, (seed, side) in enumerate(((0, "lightning"), (0, "flax"), (1, "lightning"),
                                                       (1, "flax")), 1)]
    report = (tmp_path / "compare.md").read_text()
    assert "lightning (n=2)" in report and "flax (n=2)" in report
    assert (tmp_path / "compare.png").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "2", "--seed", "1"], "--seed is not a sweep flag"),
    (["--seeds", "2", "--resume", "last"], "--resume is not a sweep flag"),
    (["--seeds", "0"], "--seeds: give a positive count"),
    (["--seeds", "1", "1"], "--seeds: give a positive count or distinct seeds"),
    (["--seeds", "2", "--epochs", "0"], "--epochs must be a positive integer"),
])
def test_bad_sweep_flags_are_one_error_line_after_argparse_usage(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        main([*flags, "--logdir", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: python -m harness.sweep") and message in err[-1]
    assert not (tmp_path / "lightning").exists()


def _first_train_step(version: Path) -> int:
    from tests.tb import scalars

    return min(step for step, _ in scalars(version)["train/loss"])


# The sweep end to end, with its report: test_parity.py::test_fp32_whole_runs_are_not_found_different.


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_and_the_same_command_continues_it(tmp_path):
    command = [sys.executable, "-m", "harness.sweep", "--seeds", "2", *SHORT, "--epochs", "6",
               "--limit-train-batches", "4", "--logdir", str(tmp_path)]
    prefix = _prefix(epochs=6, batch_size=32, limit_train_batches=4, limit_val_batches=2, log_every=1)
    first_run = tmp_path / "lightning" / f"{prefix}-seed0"
    sweep = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not list(first_run.glob("version_0/checkpoints/*.ckpt")):  # one epoch is saved
            assert sweep.poll() is None and time.time() < deadline, sweep.communicate()
            time.sleep(0.2)
        os.kill(sweep.pid, signal.SIGINT)  # the sweep alone, as a terminal's Ctrl-C reaches it
        out, err = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 130, out + err
    assert "stopped after" in out and "run the same command again" in out
    (stopped,) = run_trials(first_run, "lightning")
    assert not stopped.finished

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    (resumed,) = run_trials(first_run, "lightning")
    assert resumed.finished and [v.path.name for v in resumed.versions] == ["version_0", "version_1"]
    assert "--resume last" in (first_run / "sweep.log").read_text()
    # It continued: the new version's first logged step comes after the checkpoint's.
    assert _first_train_step(resumed.versions[1].path) > _first_train_step(resumed.versions[0].path)
    assert resumed.summary()["optimizer steps"] == 24
    assert "lightning (n=2)" in (tmp_path / "compare.md").read_text()
