"""The comparison report: Lightning against Flax, per recipe, from both sides' TensorBoard files.

    python -m harness.compare logs/                      # every recipe run on both sides
    python -m harness.compare logs/ --run 'resnet20-digits*' --out report
    python -m harness.compare logs/ --lightning logs/lightning/a/version_0 --flax logs/flax/b/version_2

Runs are grouped by recipe: every flag equal but the seed (and where the files go). For a recipe
run with several seeds per side, each metric gets flax - lightning with a 95% interval, an
equivalence test against a margin, P(flax > lightning) and a verdict in words (harness/verdicts.py);
with one seed per side, a side-by-side table. Writes <out>.md and <out>.png, and prints the Markdown.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from harness.recipes import differences, recipe_flags
from harness.report_plots import plot_groups, plot_pair
from common.sides import SIDES
from harness.trials import METRICS, Trial, find_trials, read_version
from harness.verdicts import Scale, compare


class RunNotFound(ValueError):
    pass


def newest_version(logdir: Path, side: str, run: str | None) -> Path:
    """The newest version folder with event files of `run` (or of any run) of one side."""
    root = logdir / side
    candidates = [p for p in root.glob(f"{run or '*'}/version_*") if any(p.glob("events.out.tfevents.*"))]
    if not candidates:
        what = f"run {run!r}" if run else "any run"
        raise RunNotFound(f"no {side} event files for {what} under {root}; train with "
                          f"python {side}_side/train.py first, or pass --{side} VERSION_DIR")
    return max(candidates, key=lambda p: max(f.stat().st_mtime for f in p.glob("events.out.tfevents.*")))


def scales(acc_margin: float, ratio_margin: float) -> dict[str, Scale]:
    return {m: Scale("points", acc_margin) if "acc" in m else Scale("ratio", ratio_margin / 100)
            for m in METRICS}


def group_by_recipe(trials: list[Trial]) -> dict[str, dict[str, dict[int, Trial]]]:
    """recipe id -> side -> seed -> the newest finished trial of that seed."""
    groups: dict[str, dict[str, dict[int, Trial]]] = defaultdict(lambda: defaultdict(dict))
    for trial in sorted(trials, key=lambda t: t.versions[-1].first_event):
        groups[trial.recipe_id][trial.side][trial.seed] = trial  # newer replaces older
    return groups


# --- Markdown ------------------------------------------------------------------------------

def _fmt(metric: str, value: float) -> str:
    if math.isnan(value):
        return "–"
    if "acc" in metric or "loss" in metric:
        return f"{value:.4f}"
    if metric in ("epochs", "optimizer steps"):
        return f"{value:.0f}"
    return f"{value:,.1f}"


def pair_table(rows: dict[str, dict[str, float]], paths: dict[str, Path]) -> str:
    """One run per side, metric by metric, with the ratio flax / lightning."""
    metrics = list(next(iter(rows.values())))
    lines = ["| | " + " | ".join(rows) + " | flax / lightning |",
             "| --- | " + " | ".join("---:" for _ in rows) + " | ---: |"]
    for m in metrics:
        a, b = rows["lightning"][m], rows["flax"][m]
        cells = [_fmt(m, rows[side][m]) for side in rows]
        ratio = b / a if a and not math.isnan(a) and not math.isnan(b) else math.nan
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {'' if math.isnan(ratio) else f'{ratio:.2f}×'} |")
    lines.append("")
    lines += [f"- {side}: `{path}`" for side, path in paths.items()]
    return "\n".join(lines) + "\n"


def _mean_std(metric: str, values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return _fmt(metric, values[0])
    return f"{_fmt(metric, float(np.mean(values)))} ± {_fmt(metric, float(np.std(values, ddof=1)))}"


def _difference(verdict, scale: Scale) -> str:
    if math.isnan(verdict.difference):
        return "–"
    if scale.kind == "ratio":
        interval = "" if math.isnan(verdict.low) else f" [{verdict.low:.3f}, {verdict.high:.3f}]"
        return f"{verdict.difference:.3f}×{interval}"
    interval = "" if math.isnan(verdict.low) else f" [{verdict.low:+.2f}, {verdict.high:+.2f}]"
    return f"{verdict.difference:+.2f} pt{interval}"


def verdict_table(by_side: dict[str, list[Trial]], metric_scales: dict[str, Scale]) -> str:
    summaries = {side: [t.summary() for t in by_side[side]] for side in SIDES}
    n = {side: len(by_side[side]) for side in SIDES}
    lines = [f"| metric | lightning (n={n['lightning']}) | flax (n={n['flax']}) | "
             "flax − lightning [95% CI] | margin, TOST p | P(flax > lightning) | verdict |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for metric in METRICS:
        values = {side: [s[metric] for s in summaries[side]] for side in SIDES}
        scale = metric_scales[metric]
        verdict = compare(values["lightning"], values["flax"], scale)
        tost = "" if math.isnan(verdict.tost_p) else f", p = {verdict.tost_p:.3f}"
        p_higher = "–" if math.isnan(verdict.p_flax_higher) else f"{verdict.p_flax_higher:.2f}"
        lines.append(f"| {metric} | {_mean_std(metric, values['lightning'])} | "
                     f"{_mean_std(metric, values['flax'])} | {_difference(verdict, scale)} | "
                     f"{scale.margin_text()}{tost} | {p_higher} | {verdict.text} |")
    return "\n".join(lines) + "\n"


def seed_table(by_side: dict[str, list[Trial]]) -> str:
    seeds = sorted({t.seed for side in SIDES for t in by_side[side]})
    cells = {side: {t.seed: t.summary() for t in by_side[side]} for side in SIDES}
    lines = ["| seed | lightning test/acc | flax test/acc | lightning images/s | flax images/s |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for seed in seeds:
        row = [_fmt(m, cells[side][seed][m]) if seed in cells[side] else "–"
               for m in ("test/acc", "train images/s") for side in SIDES]
        lines.append(f"| {seed} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def group_report(trials: dict[str, dict[int, Trial]], metric_scales: dict[str, Scale]) -> str:
    by_side = {side: [trials[side][s] for s in sorted(trials[side])] for side in SIDES}
    any_trial = by_side["lightning"][0]
    recipe = any_trial.recipe
    flags = recipe_flags(recipe)
    n = {side: len(by_side[side]) for side in SIDES}
    head = [f"## {recipe['model']} on {recipe['dataset']}, recipe {any_trial.recipe_id}: "
            f"{n['lightning']} lightning and {n['flax']} flax seeds", "",
            f"Recipe: `{flags or '(every flag at its default)'}` (other flags at their defaults).", ""]
    runs = [f"- {side}: " + ", ".join(f"`{t.path}`" for t in by_side[side]) for side in SIDES]
    if min(n.values()) < 2:
        rows = {side: by_side[side][-1].summary() for side in SIDES}
        paths = {side: by_side[side][-1].path for side in SIDES}
        note = ("One seed per side gives no verdict: in float32, two seeds of one framework differ "
                "as much as the two frameworks may. Run several seeds per side with "
                "`python -m harness.sweep --seeds 5` and the same flags.")
        return "\n".join(head) + "\n" + pair_table(rows, paths) + "\n" + note + "\n"
    return ("\n".join(head) + "\n" + verdict_table(by_side, metric_scales) + "\n" + seed_table(by_side)
            + "\nRuns:\n\n" + "\n".join(runs) + "\n")


def report(trials: list[Trial], metric_scales: dict[str, Scale]) -> tuple[str, list[dict]]:
    """(Markdown, the PNG's groups) for every recipe run on both sides; RunNotFound if none was."""
    finished = [t for t in trials if t.finished]
    unfinished = [t for t in trials if not t.finished]
    groups = group_by_recipe(finished)
    both = {rid: g for rid, g in groups.items() if all(g.get(side) for side in SIDES)}
    if not both:
        raise RunNotFound(_nothing_to_compare(groups, unfinished))
    sections, plotted = [], []
    for rid, group in both.items():
        sections.append(group_report(group, metric_scales))
        recipe = next(iter(group["lightning"].values())).recipe
        plotted.append({"title": f"{recipe['model']}, {recipe['dataset']} ({rid})",
                        "trials": {side: [group[side][s] for s in sorted(group[side])] for side in SIDES}})
    notes = []
    for rid, group in groups.items():
        if rid not in both:
            side = next(s for s in SIDES if group.get(s))
            seeds = " ".join(str(s) for s in sorted(group[side]))
            notes.append(f"- recipe {rid} (`{recipe_flags(next(iter(group[side].values())).recipe)}`): "
                         f"only {side} runs (seeds {seeds}); nothing to compare it with")
    if unfinished:
        notes.append(f"- {len(unfinished)} unfinished run(s) without test/acc left out: "
                     + ", ".join(f"`{t.path}`" for t in unfinished))
    text = "\n".join(sections)
    if notes:
        text += "\nLeft out:\n\n" + "\n".join(notes) + "\n"
    return text, plotted


def _nothing_to_compare(groups, unfinished) -> str:
    newest = {}
    for group in groups.values():
        for side in SIDES:
            for trial in group.get(side, {}).values():
                if side not in newest or trial.versions[-1].first_event > newest[side].versions[-1].first_event:
                    newest[side] = trial
    if len(newest) == 2:
        keys = differences([newest[side].recipe for side in SIDES])
        what = ", ".join(f"{k} (lightning {newest['lightning'].recipe.get(k)}, flax "
                         f"{newest['flax'].recipe.get(k)})" for k in keys)
        return (f"no recipe was run on both sides: the newest runs differ in {what}; rerun one side "
                "with the other's flags, or compare them anyway with --lightning DIR --flax DIR")
    missing = [side for side in SIDES if side not in newest]
    hint = f" ({len(unfinished)} unfinished run(s) have no test/acc yet)" if unfinished else ""
    return (f"no finished {' or '.join(missing)} run under this logdir{hint}; train with "
            + " and ".join(f"python {side}_side/train.py" for side in missing) + " first")


def add_margin_flags(parser) -> None:
    """--acc-margin and --ratio-margin, which harness.sweep passes on."""
    parser.add_argument("--acc-margin", type=float, default=1.0, metavar="POINTS",
                        help="equivalence margin for accuracies, in points (default: 1)")
    parser.add_argument("--ratio-margin", type=float, default=5.0, metavar="PERCENT",
                        help="equivalence margin for throughput, memory, wall time and loss, as "
                             "a ratio flax/lightning within ±PERCENT (default: 5)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.compare", description=__doc__.split("\n\n")[0],
                                     epilog="How to read a verdict: see docs/comparing.md.")
    parser.add_argument("logdir", nargs="?", default="logs", help="the --logdir both sides wrote to")
    parser.add_argument("--run", help="only run names matching this glob, e.g. 'resnet20-digits*'")
    parser.add_argument("--lightning", type=Path, help="compare this Lightning version folder ...")
    parser.add_argument("--flax", type=Path, help="... with this Flax version folder (one run each)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output path without extension (default: LOGDIR/compare)")
    add_margin_flags(parser)
    args = parser.parse_args(argv)
    logdir = Path(args.logdir)
    out = args.out or logdir / "compare"
    try:
        if args.lightning or args.flax:
            text = _explicit_pair(args, logdir, out)
        else:
            text, plotted = report(find_trials(logdir, args.run), scales(args.acc_margin, args.ratio_margin))
            plot_groups(plotted, out.with_suffix(".png"))
    except RunNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return 0


def _explicit_pair(args, logdir: Path, out: Path) -> str:
    """Two given version folders (or the newest of a side not given), side by side."""
    paths = {side: getattr(args, side) or newest_version(logdir, side, args.run) for side in SIDES}
    versions = {side: read_version(path) for side, path in paths.items()}
    rows = {side: Trial(side, path.parent.name, [versions[side]]).summary() for side, path in paths.items()}
    plot_pair({side: v.scalars for side, v in versions.items()}, out.with_suffix(".png"))
    return pair_table(rows, paths)


if __name__ == "__main__":
    raise SystemExit(main())
