"""The side-by-side report: a Markdown table and a PNG from both sides' event files."""

import pytest
from scipy import stats

from harness.compare import main


def test_report_from_two_real_runs(tmp_path, reference_runs):
    logdir = reference_runs["lightning"].logdir  # both sides' reference runs, 2 epochs of 3 steps
    assert main([str(logdir), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows[""] == ["lightning", "flax", "flax / lightning"]
    assert rows["epochs"][:2] == ["2", "2"] and rows["optimizer steps"][:2] == ["6", "6"]
    for metric in ("best val/acc", "test/acc", "train images/s", "peak memory (MB)", "wall time (s)"):
        lightning, flax, ratio = rows[metric]
        assert lightning != "–" and flax != "–" and ratio.endswith("×"), metric
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lightning/reference/version_0" in table and "flax/reference/version_0" in table


def test_missing_runs_are_a_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "python lightning_side/train.py" in err[0]


# --- Several seeds per side: runs written without training (tests/helpers/fake_runs.py) -------------

def _sections(markdown: str) -> dict[str, str]:
    """recipe id -> its section of the report."""
    parts = markdown.split("\n## ")[0:]
    return {part.split("recipe ")[1].split(":")[0]: part for part in parts if "recipe " in part.split("\n")[0]}


def _row(section: str, metric: str) -> list[str]:
    line = next(line for line in section.splitlines() if line.startswith(f"| {metric} |"))
    return [cell.strip() for cell in line.split("|")[1:-1]]


def test_runs_of_two_recipes_are_never_pooled(tmp_path, capsys):
    from harness.recipes import recipe_id
    from common.config import TrainConfig
    from tests.helpers.fake_runs import fake_run

    accuracy = {2: 0.90, 3: 0.50}  # recipe by --epochs: far apart, so pooling would show
    for epochs, acc in accuracy.items():
        for seed in range(3):
            for side, shift in (("lightning", 0.0), ("flax", 0.001)):
                fake_run(tmp_path, side, f"e{epochs}-seed{seed}", test_acc=acc + seed / 100 + shift,
                         epochs=epochs, seed=seed)
    assert main([str(tmp_path)]) == 0
    sections = _sections((tmp_path / "compare.md").read_text())
    ids = {epochs: recipe_id(TrainConfig(dataset="digits", epochs=epochs).to_dict()) for epochs in accuracy}
    assert set(sections) == set(ids.values())
    for epochs, acc in accuracy.items():
        row = _row(sections[ids[epochs]], "test/acc")
        assert row[1] == f"{acc + 0.01:.4f} ± 0.0100" and row[2] == f"{acc + 0.011:.4f} ± 0.0100"
        points = [100 * acc + seed for seed in range(3)]
        interval = stats.ttest_ind([p + 0.1 for p in points], points, equal_var=False).confidence_interval()
        assert row[3] == f"+0.10 pt [{interval.low:+.2f}, {interval.high:+.2f}]"
        assert f"--epochs {epochs}" in sections[ids[epochs]]
        assert "lightning (n=3)" in sections[ids[epochs]]
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_resumed_run_is_one_trial_and_a_rerun_of_a_seed_replaces_it(tmp_path):
    from harness.trials import find_trials
    from tests.helpers.fake_runs import fake_run

    fake_run(tmp_path, "flax", "r", 0, test_acc=None, steps=range(0, 6), loss=1.0)
    fake_run(tmp_path, "flax", "r", 1, test_acc=0.8, steps=range(3, 9), loss=2.0, resume="last")
    (trial,) = find_trials(tmp_path)
    assert trial.finished and [v.path.name for v in trial.versions] == ["version_0", "version_1"]
    loss = dict((s, v) for s, v, _ in trial.scalars["train/loss"])
    assert sorted(loss) == list(range(9))
    assert loss[2] == pytest.approx(1.0 / 3) and loss[4] == pytest.approx(2.0 / 5)  # the resume's value wins
    assert trial.summary()["optimizer steps"] == 9 and trial.summary()["test/acc"] == pytest.approx(0.8)
    fake_run(tmp_path, "flax", "r", 2, test_acc=0.7)  # started over without --resume: a new trial
    trials = find_trials(tmp_path)
    assert [t.summary()["test/acc"] for t in trials] == pytest.approx([0.8, 0.7])

    from harness.compare import group_by_recipe

    (group,) = group_by_recipe(trials).values()
    assert group["flax"][0].summary()["test/acc"] == pytest.approx(0.7)  # the newest of seed 0


def test_one_seed_per_side_gives_the_side_by_side_table_and_no_verdict(tmp_path):
    from tests.helpers.fake_runs import fake_run

    for side in ("lightning", "flax"):
        fake_run(tmp_path, side, "one", test_acc=0.9)
    assert main([str(tmp_path)]) == 0
    report = (tmp_path / "compare.md").read_text()
    assert "| test/acc | 0.9000 | 0.9000 | 1.00× |" in report
    assert "One seed per side gives no verdict" in report and "python -m harness.sweep" in report


def test_a_recipe_run_on_one_side_only_is_named_and_not_compared(tmp_path, capsys):
    from tests.helpers.fake_runs import fake_run

    for seed in range(2):
        fake_run(tmp_path, "lightning", f"a{seed}", test_acc=0.9, seed=seed, lr=0.05)
        fake_run(tmp_path, "flax", f"b{seed}", test_acc=0.9, seed=seed, lr=0.2)
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no recipe was run on both sides" in err[0]
    assert "lr (lightning 0.05, flax 0.2)" in err[0] and "--lightning DIR --flax DIR" in err[0]
    for seed in range(2):
        fake_run(tmp_path, "flax", f"c{seed}", test_acc=0.9, seed=seed, lr=0.05)
    assert main([str(tmp_path)]) == 0
    report = (tmp_path / "compare.md").read_text()
    assert "lightning (n=2)" in report and "flax (n=2)" in report
    assert "`--dataset digits --lr 0.2`): only flax runs (seeds 0 1); nothing to compare it with" in report
