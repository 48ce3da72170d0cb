"""python -m harness.sweep: finished runs skipped, bad sweep flags, the report at the end, and a
sweep stopped by Ctrl-C that the same command continues; --sides, with train.py's processes
replaced by runs written at once (tests/helpers/sweep.py's FakeTraining)."""

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
    (["--seeds", "2", "--sides", "lightning", "jax"], "argument --sides: invalid choice: 'jax'"),
    (["--seeds", "2", "--sides", "nnx"], "--sides: choose two or more sides to compare, got nnx alone"),
    (["--seeds", "2", "--sides", "flax", "nnx", "flax"], "--sides: name each side once"),
])
def test_bad_sweep_flags_are_one_error_line_after_argparse_usage(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        main([*flags, "--logdir", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: python -m harness.sweep") and message in err[-1]
    assert not (tmp_path / "lightning").exists()


def _train_argv(logdir, seed: int, *resume: str) -> list[str]:
    """The arguments the sweep gives train.py for the flags of the tests below."""
    return ["--dataset", "digits", "--epochs", "2", "--logdir", str(logdir), "--seed", str(seed),
            "--run-name", f"{_prefix(epochs=2)}-seed{seed}", *resume]


def test_a_sweep_of_lightning_and_nnx_starts_those_sides_train_py_for_each_seed(tmp_path, capsys, monkeypatch):
    import harness.sweep
    from tests.helpers.sweep import FakeTraining

    fake = FakeTraining(lambda side, seed: 0.90 + seed / 100 + (0.02 if side == "nnx" else 0.0))
    monkeypatch.setattr(harness.sweep, "subprocess", fake.module())
    assert main(["--seeds", "2", "--sides", "nnx", "lightning", "--dataset", "digits", "--epochs", "2",
                 "--logdir", str(tmp_path)]) == 0
    # Each seed on both sides, Lightning first whatever the order given; flax is never started.
    assert fake.started == [(side, _train_argv(tmp_path, seed)) for seed in (0, 1) for side in ("lightning", "nnx")]
    out = capsys.readouterr().out
    assert "sweep: 2 seeds x 2 sides (lightning, nnx) of recipe" in out
    assert [line.split(" done in ")[0] for line in out.splitlines() if line.startswith("[")] == [
        f"[{i}/4] {side:<9} seed {seed}: training ..." for i, (seed, side) in
        enumerate(((0, "lightning"), (0, "nnx"), (1, "lightning"), (1, "nnx")), 1)]
    report = (tmp_path / "compare.md").read_text()
    assert "| metric | lightning (n=2) | nnx (n=2) | nnx − lightning [95% CI] |" in report
    assert "flax" not in report and not (tmp_path / "flax").exists()
    assert "| test/acc | 0.9050 ± 0.0071 | 0.9250 ± 0.0071 | +2.00 pt [" in report
    # Adding flax later trains flax only: the run folders do not depend on --sides.
    fake.started.clear()
    assert main(["--seeds", "2", "--sides", "lightning", "flax", "nnx", "--dataset", "digits", "--epochs", "2",
                 "--logdir", str(tmp_path)]) == 0
    assert fake.started == [("flax", _train_argv(tmp_path, seed)) for seed in (0, 1)]
    assert "2 lightning, 2 flax and 2 nnx seeds" in (tmp_path / "compare.md").read_text()


def test_a_three_side_sweep_stopped_in_an_nnx_run_is_continued_by_the_same_command(tmp_path, capsys, monkeypatch):
    """Ctrl-C in nnx's seed 1 (exit 130, a checkpoint) stops the sweep; the same command again
    skips the five finished runs, resumes that one with --resume last, and runs seed 2's three."""
    import harness.sweep
    from harness.trials import run_trials
    from tests.helpers.sweep import FakeTraining

    fake = FakeTraining(lambda side, seed: 0.90 + seed / 100, stop={("nnx", 1)})
    monkeypatch.setattr(harness.sweep, "subprocess", fake.module())
    argv = ["--seeds", "3", "--sides", "lightning", "flax", "nnx", "--dataset", "digits", "--epochs", "2",
            "--logdir", str(tmp_path)]
    order = [(seed, side) for seed in range(3) for side in ("lightning", "flax", "nnx")]
    assert main(argv) == 130
    assert fake.started == [(side, _train_argv(tmp_path, seed)) for seed, side in order[:6]]
    assert "stopped after" in capsys.readouterr().out

    fake.started.clear()
    assert main(argv) == 0
    assert fake.started == [("nnx", _train_argv(tmp_path, 1, "--resume", "last"))] + [
        (side, _train_argv(tmp_path, seed)) for seed, side in order[6:]]
    out = capsys.readouterr().out
    assert [line.split(" (test/acc")[0].split(" ... ")[0] for line in out.splitlines() if line.startswith("[")] == [
        f"[{i}/9] {side:<9} seed {seed}: " + ("finished before, skipped" if i <= 5 else "training")
        for i, (seed, side) in enumerate(order, 1)]
    (resumed,) = run_trials(tmp_path / "nnx" / f"{_prefix(epochs=2)}-seed1", "nnx")
    assert resumed.finished and [v.path.name for v in resumed.versions] == ["version_0", "version_1"]
    report = (tmp_path / "compare.md").read_text()
    assert "3 lightning, 3 flax and 3 nnx seeds" in report
    assert [line for line in report.splitlines() if line.startswith("### ")] == [
        "### flax against lightning", "### nnx against lightning", "### nnx against flax"]


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
