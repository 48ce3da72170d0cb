"""python -m harness.sweep: finished runs skipped, bad sweep flags, and the report at the end.
An interrupted sweep that continues: test_parity.py (the sweep end to end)."""

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


# The sweep end to end, Ctrl-C and continuing included, with its report:
# test_parity.py::test_fp32_whole_runs_are_not_found_different.
