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


# --- Every row of a report, from fake runs whose figures are known -----------------------------

SEEDS = range(3)
FIRST_EPOCH = {"lightning": 40.0, "flax": 10.0}  # images/s of the first epoch: compilation, warm-up
SPEED = {"lightning": 400.0, "flax": 200.0}      # images/s after it: flax / lightning = 0.5


def _fake_report_runs(logdir):
    """3 seeds a side, 3 epochs of 3 steps; flax: half the speed after the first epoch, 1.5x the
    memory, 1.01x the test loss, 0.1 point more test accuracy, two seconds a step to one."""
    from tests.helpers.fake_runs import fake_run

    runs = {}
    for seed in SEEDS:
        for side in ("lightning", "flax"):
            speed = SPEED[side] * (1 + 0.02 * seed)
            runs[side, seed] = dict(test_acc=0.90 + 0.01 * seed + (0.001 if side == "flax" else 0.0),
                                    loss=(1.0 + 0.05 * seed) * (1.01 if side == "flax" else 1.0),
                                    images_per_sec=[FIRST_EPOCH[side], speed, speed],
                                    peak_memory_mb=1500.0 if side == "flax" else 1000.0,
                                    seconds_per_step=2.0 if side == "flax" else 1.0)
            fake_run(logdir, side, f"seed{seed}", steps=range(0, 9), seed=seed, **runs[side, seed])
    return runs


def _expected_row(lightning, flax, kind, margin, fmt):
    """The report's cells for one metric, worked out with scipy and statsmodels directly."""
    import math

    import numpy as np
    from statsmodels.stats.power import TTestIndPower

    l, f = (np.log(lightning), np.log(flax)) if kind == "ratio" else (np.array(lightning) * 100, np.array(flax) * 100)
    bound = math.log1p(margin) if kind == "ratio" else margin
    d = f.mean() - l.mean()
    if l.std() == 0 and f.std() == 0:
        lo = hi = d
        tost, welch = (0.0 if abs(d) < bound else 1.0), (1.0 if d == 0 else 0.0)
    else:
        test = stats.ttest_ind(f, l, equal_var=False)
        lo, hi = test.confidence_interval(0.95)
        welch = test.pvalue
        tost = max(stats.ttest_ind(f, l - bound, equal_var=False, alternative="greater").pvalue,
                   stats.ttest_ind(f, l + bound, equal_var=False, alternative="less").pvalue)
    shown = [math.exp(x) if kind == "ratio" else x for x in (d, lo, hi)]
    margin_text = f"±{margin * 100:g}%" if kind == "ratio" else f"±{margin:g} pt"
    if tost < 0.05:
        verdict = f"equivalent within {margin_text}"
    elif welch < 0.05:
        way = "higher" if d > 0 else "lower"
        a, b = sorted((abs(lo), abs(hi)))
        verdict = (f"different: flax {way}, {shown[0]:.2f}× [{shown[1]:.2f}×, {shown[2]:.2f}×]" if kind == "ratio"
                   else f"different: flax {way} by {abs(d):.2f} pt [{a:.2f}, {b:.2f}]")
    else:
        sd = math.sqrt((l.var(ddof=1) + f.var(ddof=1)) / 2)
        gap = bound - abs(d) if abs(d) < bound else abs(d)
        solved = TTestIndPower().solve_power(gap / sd, alpha=0.05, power=0.8,
                                             alternative="larger" if abs(d) < bound else "two-sided")
        verdict = (f"inconclusive: about {max(math.ceil(solved), 3)} seeds per side would decide it"
                   if solved <= 1000 else "inconclusive: more than 1000 seeds per side would be needed")
    difference = (f"{shown[0]:.3f}× [{shown[1]:.3f}, {shown[2]:.3f}]" if kind == "ratio"
                  else f"{d:+.2f} pt [{lo:+.2f}, {hi:+.2f}]")
    p_higher = stats.mannwhitneyu(flax, lightning).statistic / (len(flax) * len(lightning))
    return [f"{fmt(np.mean(lightning))} ± {fmt(np.std(lightning, ddof=1))}",
            f"{fmt(np.mean(flax))} ± {fmt(np.std(flax, ddof=1))}", difference,
            f"{margin_text}, p = {tost:.3f}", f"{p_higher:.2f}", verdict]


@pytest.mark.parametrize("flags,acc_margin,ratio_margin", [([], 1.0, 0.05),
                                                           (["--acc-margin", "0.05", "--ratio-margin", "60"], 0.05, 0.6)])
def test_every_row_of_a_report_of_known_runs(tmp_path, flags, acc_margin, ratio_margin):
    runs = _fake_report_runs(tmp_path)
    assert main([str(tmp_path), *flags]) == 0
    (section,) = _sections((tmp_path / "compare.md").read_text()).values()

    def values(side, key):
        return [runs[side, seed][key] for seed in SEEDS]

    speed = {side: [v[1] for v in values(side, "images_per_sec")] for side in ("lightning", "flax")}  # not the first
    accuracy, points = (lambda v: f"{v:.4f}"), (lambda v: f"{v:,.1f}")
    expected = {
        "best val/acc": _expected_row([0.58] * 3, [0.58] * 3, "points", acc_margin, accuracy),
        "test/acc": _expected_row(values("lightning", "test_acc"), values("flax", "test_acc"), "points",
                                  acc_margin, accuracy),
        "test/loss": _expected_row(values("lightning", "loss"), values("flax", "loss"), "ratio", ratio_margin,
                                   accuracy),
        "train images/s": _expected_row(speed["lightning"], speed["flax"], "ratio", ratio_margin, points),
        "peak memory (MB)": _expected_row([1000.0] * 3, [1500.0] * 3, "ratio", ratio_margin, points),
    }
    for metric, cells in expected.items():
        assert _row(section, metric)[1:] == cells, metric
    # Wall time: from each run's first event (its event file's, written as the run starts) to its
    # last, 10 s and 20 s here, to within the moment the event file took to open.
    wall = _row(section, "wall time (s)")
    assert [float(wall[k].split(" ± ")[0]) for k in (1, 2)] == pytest.approx([10.0, 20.0], abs=0.3)
    assert float(wall[3].split("×")[0]) == pytest.approx(2.0, abs=0.05)
    assert wall[4].startswith(f"±{ratio_margin * 100:g}%, p = ") and wall[5] == "1.00"
    assert wall[6].startswith("different: flax higher, 2.0") or wall[6].startswith("different: flax higher, 1.9")
    assert [_row(section, str(seed)) for seed in SEEDS] == [
        [str(seed), f"{values('lightning', 'test_acc')[seed]:.4f}", f"{values('flax', 'test_acc')[seed]:.4f}",
         points(speed["lightning"][seed]), points(speed["flax"][seed])] for seed in SEEDS]
    assert [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")][:8] == [
        "metric", "---", "best val/acc", "test/acc", "test/loss", "train images/s", "wall time (s)",
        "peak memory (MB)"]


def test_the_reports_train_curves_have_a_point_per_epoch(tmp_path, reference_runs, monkeypatch):
    """The train loss and accuracy panels plot the epochs' means: a point at each epoch's last
    step, whatever --log-every left of the per-step curve."""
    import matplotlib.axes

    from harness.report_plots import plot_pair
    from harness.trials import find_trials

    plotted = []  # (axes, x) of every curve drawn
    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, x, *args, **kwargs: plotted.append((ax, list(x))) or real_plot(ax, x, *args, **kwargs))
    trials = {trial.side: trial for trial in find_trials(reference_runs["lightning"].logdir)}
    plot_pair({side: trials[side].scalars for side in ("lightning", "flax")}, tmp_path / "pair.png")
    by_title = {}
    for ax, x in plotted:
        by_title.setdefault(ax.get_title(), []).append(x)
    for title in ("train loss (epoch mean)", "train accuracy (epoch mean)"):
        assert by_title[title] == [[2, 5], [2, 5]], title  # both sides, 2 epochs of 3 steps
