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


def _expected_row(lightning, flax, kind, margin, fmt, name="flax"):
    """The report's cells for one metric, worked out with scipy and statsmodels directly: `flax`
    (the side called `name`) against `lightning` (its reference)."""
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
        verdict = (f"different: {name} {way}, {shown[0]:.2f}× [{shown[1]:.2f}×, {shown[2]:.2f}×]" if kind == "ratio"
                   else f"different: {name} {way} by {abs(d):.2f} pt [{a:.2f}, {b:.2f}]")
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


# --- Three sides: each against Lightning, and NNX against linen --------------------------------

THREE = ("lightning", "flax", "nnx")
# Per side: test/acc above Lightning's (points / 100), images/s after the first epoch, test/loss
# factor and peak memory. nnx: 3 points more accurate than Lightning, 2.9 more than flax.
FIGURES = {"lightning": dict(acc=0.0, speed=400.0, loss=1.00, memory=1000.0),
           "flax": dict(acc=0.001, speed=200.0, loss=1.01, memory=1500.0),
           "nnx": dict(acc=0.03, speed=300.0, loss=1.02, memory=1200.0)}


def _three_side_runs(logdir, sides=THREE, seeds=SEEDS, run="seed", **flags):
    """Runs of every side in `sides`, a seed each: a spread of 0.1 point between seeds."""
    from tests.helpers.fake_runs import fake_run

    runs = {}
    for seed in seeds:
        for side in sides:
            f, speed = FIGURES[side], FIGURES[side]["speed"] * (1 + 0.02 * seed)
            runs[side, seed] = dict(test_acc=0.90 + 0.001 * seed + f["acc"], loss=(1.0 + 0.05 * seed) * f["loss"],
                                    images_per_sec=[10.0, speed, speed], peak_memory_mb=f["memory"])
            fake_run(logdir, side, f"{run}{seed}", steps=range(0, 9), seed=seed, **runs[side, seed], **flags)
    return runs


def _pair_sections(section: str) -> dict[str, str]:
    """'nnx against flax' -> its verdict table, in the order of the report."""
    parts = section.split("\n### ")[1:]
    return {part.split("\n")[0]: part for part in parts}


def test_three_sides_judge_flax_and_nnx_against_lightning_and_nnx_against_flax(tmp_path):
    runs = _three_side_runs(tmp_path)
    assert main([str(tmp_path), "--sides", "lightning", "flax", "nnx"]) == 0
    (section,) = _sections((tmp_path / "compare.md").read_text()).values()
    assert section.split("\n")[0].endswith(": 3 lightning, 3 flax and 3 nnx seeds")
    pairs = _pair_sections(section)
    assert list(pairs) == ["flax against lightning", "nnx against lightning", "nnx against flax"]

    def values(side, key):
        return [runs[side, seed][key] for seed in SEEDS]

    accuracy, points = (lambda v: f"{v:.4f}"), (lambda v: f"{v:,.1f}")
    for ref, side in (("lightning", "flax"), ("lightning", "nnx"), ("flax", "nnx")):
        table = pairs[f"{side} against {ref}"]
        assert f"| metric | {ref} (n=3) | {side} (n=3) | {side} − {ref} [95% CI] | margin, TOST p | " \
               f"P({side} > {ref}) | verdict |" in table
        speed = {s: [v[1] for v in values(s, "images_per_sec")] for s in (ref, side)}
        expected = {
            "test/acc": _expected_row(values(ref, "test_acc"), values(side, "test_acc"), "points", 1.0,
                                      accuracy, side),
            "test/loss": _expected_row(values(ref, "loss"), values(side, "loss"), "ratio", 0.05, accuracy, side),
            "train images/s": _expected_row(speed[ref], speed[side], "ratio", 0.05, points, side),
            "peak memory (MB)": _expected_row(values(ref, "peak_memory_mb"), values(side, "peak_memory_mb"),
                                              "ratio", 0.05, points, side),
        }
        for metric, cells in expected.items():
            assert _row(table, metric)[1:] == cells, (ref, side, metric)
    # The figures in words: flax within 1 point of Lightning, nnx 3 points above it and 2.9 above
    # flax; the memory ratios 1.5, 1.2 and 0.8, each seed alike.
    flax_l, nnx_l, nnx_f = (pairs[p] for p in ("flax against lightning", "nnx against lightning", "nnx against flax"))
    assert _row(flax_l, "test/acc")[3].startswith("+0.10 pt [")
    assert _row(flax_l, "test/acc")[6] == "equivalent within ±1 pt"
    assert _row(nnx_l, "test/acc")[1:4] == ["0.9010 ± 0.0010", "0.9310 ± 0.0010", "+3.00 pt [+2.77, +3.23]"]
    assert _row(nnx_l, "test/acc")[6] == "different: nnx higher by 3.00 pt [2.77, 3.23]"
    assert _row(nnx_f, "test/acc")[1:4] == ["0.9020 ± 0.0010", "0.9310 ± 0.0010", "+2.90 pt [+2.67, +3.13]"]
    assert _row(nnx_f, "test/acc")[6] == "different: nnx higher by 2.90 pt [2.67, 3.13]"
    assert [_row(t, "peak memory (MB)")[6] for t in (flax_l, nnx_l, nnx_f)] == [
        "different: flax higher, 1.50× [1.50×, 1.50×]", "different: nnx higher, 1.20× [1.20×, 1.20×]",
        "different: nnx lower, 0.80× [0.80×, 0.80×]"]
    assert _row(nnx_f, "train images/s")[3].startswith("1.500× [")
    # Every seed's cells on every side, once; every side's runs.
    assert _row(section, "seed") == ["seed", "lightning test/acc", "flax test/acc", "nnx test/acc",
                                     "lightning images/s", "flax images/s", "nnx images/s"]
    assert [_row(section, str(seed)) for seed in SEEDS] == [
        [str(seed), *(accuracy(runs[s, seed]["test_acc"]) for s in THREE),
         *(points(runs[s, seed]["images_per_sec"][1]) for s in THREE)] for seed in SEEDS]
    for side in THREE:
        paths = [tmp_path / side / f"seed{seed}" / "version_0" for seed in SEEDS]
        assert f"- {side}: " + ", ".join(f"`{path}`" for path in paths) in section


@pytest.mark.parametrize("sides,judged", [(["lightning", "nnx"], ("lightning", "nnx")),
                                          (["nnx", "flax"], ("flax", "nnx")),
                                          ([], ("lightning", "flax"))])
def test_two_sides_of_three_give_the_two_side_report_of_their_one_pair(tmp_path, sides, judged):
    """The runs of the side left out play no part, nor are they named; without --sides, that
    side is nnx."""
    from tests.helpers.fake_runs import fake_run

    _three_side_runs(tmp_path)
    ref, side = judged
    (left_out,) = set(THREE) - set(judged)
    fake_run(tmp_path, left_out, "other-recipe", test_acc=0.9, lr=0.2)
    fake_run(tmp_path, left_out, "unfinished", test_acc=None)
    assert main([str(tmp_path), *(["--sides", *sides] if sides else [])]) == 0
    report = (tmp_path / "compare.md").read_text()
    (section,) = _sections(report).values()
    assert "### " not in report and left_out not in report and "Left out" not in report
    assert f"| metric | {ref} (n=3) | {side} (n=3) | {side} − {ref} [95% CI] |" in section
    assert _row(section, "seed") == ["seed", f"{ref} test/acc", f"{side} test/acc", f"{ref} images/s",
                                     f"{side} images/s"]


def test_one_seed_per_side_of_three_gives_a_ratio_per_judged_pair(tmp_path):
    from tests.helpers.fake_runs import fake_run

    for side, acc in (("lightning", 0.5), ("flax", 0.6), ("nnx", 0.75)):
        fake_run(tmp_path, side, "one", test_acc=acc)
    assert main([str(tmp_path), "--sides", "lightning", "flax", "nnx"]) == 0
    report = (tmp_path / "compare.md").read_text()
    assert "| | lightning | flax | nnx | flax / lightning | nnx / lightning | nnx / flax |" in report
    assert "| test/acc | 0.5000 | 0.6000 | 0.7500 | 1.20× | 1.50× | 1.25× |" in report
    assert "One seed per side gives no verdict" in report


def test_a_recipe_without_runs_of_every_chosen_side_is_named(tmp_path, capsys):
    """--sides lightning flax nnx: a recipe run on lightning and flax only is not compared, and
    the report says which sides it lacks and how to compare the ones it has."""
    from tests.helpers.fake_runs import fake_run

    _three_side_runs(tmp_path, sides=("lightning", "flax"), seeds=range(2), run="two", lr=0.05)
    fake_run(tmp_path, "nnx", "other", test_acc=0.9, lr=0.2)
    argv = [str(tmp_path), "--sides", "lightning", "flax", "nnx"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: no recipe was run on all of lightning, flax and nnx: the newest runs differ in lr "
                   "(lightning 0.05, flax 0.05, nnx 0.2); rerun the sides that differ with the same flags, or "
                   "compare them anyway with --sides lightning flax nnx --lightning DIR --flax DIR --nnx DIR"]
    _three_side_runs(tmp_path, seeds=range(2), run="all")  # every side, at the default lr
    assert main(argv) == 0
    report = (tmp_path / "compare.md").read_text()
    assert "2 lightning, 2 flax and 2 nnx seeds" in report
    assert ("`--dataset digits --lr 0.05`): runs of lightning (seeds 0 1) and flax (seeds 0 1) but none of "
            "nnx; `--sides lightning flax` compares them") in report
    assert "`--dataset digits --lr 0.2`): only nnx runs (seeds 0); nothing to compare it with" in report


@pytest.mark.parametrize("flags, message", [
    (["--sides", "lightning", "jax"], "argument --sides: invalid choice: 'jax' (choose from "),
    (["--sides", "nnx"], "--sides: choose two or more sides to compare, got nnx alone (e.g. --sides lightning nnx)"),
    (["--sides", "lightning", "lightning"], "--sides: name each side once, got lightning lightning"),
    (["--nnx", "logs/nnx/a/version_0"], "--nnx names a run of nnx, which --sides (lightning flax) leaves out; "
                                        "add it: --sides lightning flax nnx"),
])
def test_bad_sides_are_one_error_line_after_argparse_usage(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path), *flags])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: python -m harness.compare")
    (line,) = [line for line in err if "error" in line]
    assert line.startswith(f"python -m harness.compare: error: {message}")  # argparse words the choices
    assert not (tmp_path / "compare.md").exists()


def _drawn(monkeypatch, call):
    """The figure `call` saves, captured as it is saved."""
    import matplotlib.figure

    figures = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *args, **kwargs: figures.append(fig) or real_savefig(fig, *args, **kwargs))
    call()
    (figure,) = figures
    return figure


def test_the_plots_draw_every_side_in_its_colour_and_line_style(tmp_path, monkeypatch):
    from matplotlib.collections import PathCollection
    from matplotlib.colors import to_hex

    from harness.report_plots import COLOURS, STYLES

    _three_side_runs(tmp_path)
    sides = ["--sides", "lightning", "flax", "nnx"]
    assert len({*COLOURS.values()}) == len({*STYLES.values()}) == 3
    # The seeds pooled: a mean curve with its band per side, and a column of dots per side.
    figure = _drawn(monkeypatch, lambda: main([str(tmp_path), *sides]))
    val_acc = next(ax for ax in figure.axes if "val accuracy" in ax.get_title())
    assert [(line.get_label(), to_hex(line.get_color())) for line in val_acc.get_lines()] == [
        (f"{side} (mean of 3)", COLOURS[side]) for side in THREE]
    assert len(val_acc.collections) == 3  # the min-max bands
    dots = next(ax for ax in figure.axes if "per seed" in ax.get_title())
    assert [label.get_text() for label in dots.get_xticklabels()] == list(THREE)
    assert [(to_hex(c.get_facecolor()[0]), len(c.get_offsets())) for c in dots.collections
            if isinstance(c, PathCollection)] == [(COLOURS[side], 3) for side in THREE]  # a dot per seed
    # One run per side, given by its folder: every panel draws each side's curve.
    given = [flag for side in THREE for flag in (f"--{side}", str(tmp_path / side / "seed0" / "version_0"))]
    figure = _drawn(monkeypatch, lambda: main([str(tmp_path), *sides, *given]))
    drawn = {ax.get_title(): [(line.get_label(), to_hex(line.get_color()), line.get_linestyle())
                              for line in ax.get_lines()] for ax in figure.axes}
    for title in ("val accuracy", "train images/s"):  # the panels of the tags fake runs write
        assert drawn[title] == [(side, COLOURS[side], STYLES[side]) for side in THREE], title
