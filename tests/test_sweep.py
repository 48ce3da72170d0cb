"""python -m harness.sweep: finished runs skipped, bad sweep flags, the report at the end, and a
sweep stopped by Ctrl-C that the same command continues."""

import pytest

from common.config import TrainConfig
from harness.recipes import recipe_id
from harness.sweep import main
from tests.helpers.fake_runs import fake_run


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


@pytest.mark.slow  # six short runs, one of them twice (tests/conftest.py's digits_sweep)
def test_ctrl_c_stops_a_sweep_and_the_same_command_continues_it_to_the_report(digits_sweep):
    """Ctrl-C in its first run's second epoch stops the sweep with a checkpoint; the same command
    again resumes that run (exactly: test_resume.py) and runs the others, a progress line each,
    then writes the report with its verdicts and plot. Its verdict on test/acc: test_lockstep.py."""
    from harness.trials import find_trials, run_trials
    from tests.helpers.sweep import verdict_on_test_acc
    from tests.helpers.tb import first_step

    logdir, stopped = digits_sweep.logdir, digits_sweep.stopped
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert "stopped after" in stopped.stdout and "run the same command again" in stopped.stdout
    assert not digits_sweep.first_run_finished_when_stopped

    out = digits_sweep.continued
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    progress = [line for line in out.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 6 and all(" done in " in line for line in progress), progress
    (first_run,) = logdir.glob("lightning/*-seed0")
    (resumed,) = run_trials(first_run, "lightning")
    assert resumed.finished and [v.path.name for v in resumed.versions] == ["version_0", "version_1"]
    assert "--resume last" in (first_run / "sweep.log").read_text()
    # It continued: the new version's first epoch end comes after the stopped one's (a run that
    # started over would log its first val/acc at the same step).
    assert first_step(resumed.versions[1].path, "val/acc") > first_step(resumed.versions[0].path, "val/acc")
    assert len({t.summary()["optimizer steps"] for t in find_trials(logdir)}) == 1  # all 2 epochs long

    _, verdict = verdict_on_test_acc(logdir)
    report = (logdir / "compare.md").read_text()
    assert "lightning (n=3)" in report and "flax (n=3)" in report
    row = next(line for line in report.splitlines() if line.startswith("| test/acc |"))
    difference, said = row.split("|")[4].strip(), row.split("|")[7].strip()
    assert " pt [" in difference, row  # the difference with its 95% interval
    assert said.split(":")[0].split(" within")[0] == verdict.word, (row, verdict)
    assert (logdir / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
