"""The comparison report: each side against Lightning, per recipe, from the sides' TensorBoard files.

    python -m harness.compare logs/                      # every recipe run on lightning and flax
    python -m harness.compare logs/ --sides lightning flax nnx   # ... and on nnx too
    python -m harness.compare logs/ --run 'resnet20-digits*' --out report
    python -m harness.compare logs/ --lightning logs/lightning/a/version_0 --flax logs/flax/b/version_2

Runs are grouped by recipe: every flag equal but the seed (and where the files go). For a recipe
run with several seeds on every side of --sides, each pair of sides harness/verdicts.py's
judged_pairs() names (flax against lightning, nnx against lightning, nnx against flax) gets, metric
by metric, the difference side - reference with a 95% interval, an equivalence test against a
margin, P(side > reference) and a verdict in words; with one seed per side, a side-by-side table.
Writes <out>.md and <out>.png, and prints the Markdown.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from common.sides import DEFAULT_SIDES, SIDES
from harness.recipes import differences, recipe_flags
from harness.report_plots import plot_groups, plot_pair
from harness.report_tables import pair_table, seed_table, verdict_table
from harness.trials import METRICS, Trial, find_trials, read_version
from harness.verdicts import Scale, judged_pairs


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


def _and(words: list[str]) -> str:
    return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " and " + words[-1]


def group_report(trials: dict[str, dict[int, Trial]], metric_scales: dict[str, Scale],
                 sides: tuple[str, ...] = DEFAULT_SIDES) -> str:
    by_side = {side: [trials[side][s] for s in sorted(trials[side])] for side in sides}
    any_trial = by_side[sides[0]][0]
    recipe = any_trial.recipe
    flags = recipe_flags(recipe)
    n = {side: len(by_side[side]) for side in sides}
    head = [f"## {recipe['model']} on {recipe['dataset']}, recipe {any_trial.recipe_id}: "
            f"{_and([f'{n[side]} {side}' for side in sides])} seeds", "",
            f"Recipe: `{flags or '(every flag at its default)'}` (other flags at their defaults).", ""]
    runs = [f"- {side}: " + ", ".join(f"`{t.path}`" for t in by_side[side]) for side in sides]
    if min(n.values()) < 2:
        rows = {side: by_side[side][-1].summary() for side in sides}
        paths = {side: by_side[side][-1].path for side in sides}
        note = ("One seed per side gives no verdict: in float32, two seeds of one framework differ "
                "as much as the two frameworks may. Run several seeds per side with "
                "`python -m harness.sweep --seeds 5` and the same flags.")
        return "\n".join(head) + "\n" + pair_table(rows, paths) + "\n" + note + "\n"
    pairs = judged_pairs(sides)
    if len(pairs) == 1:
        verdicts = verdict_table(by_side, metric_scales, pairs[0])
    else:
        verdicts = "\n".join(f"### {side} against {ref}\n\n" + verdict_table(by_side, metric_scales, (ref, side))
                              for ref, side in pairs)
    return ("\n".join(head) + "\n" + verdicts + "\n" + seed_table(by_side)
            + "\nRuns:\n\n" + "\n".join(runs) + "\n")


def report(trials: list[Trial], metric_scales: dict[str, Scale],
           sides: tuple[str, ...] = DEFAULT_SIDES) -> tuple[str, list[dict]]:
    """(Markdown, the PNG's groups) for every recipe run on all of `sides`; RunNotFound if none
    was. Trials of other sides are left out."""
    trials = [t for t in trials if t.side in sides]
    finished = [t for t in trials if t.finished]
    unfinished = [t for t in trials if not t.finished]
    groups = group_by_recipe(finished)
    complete = {rid: g for rid, g in groups.items() if all(g.get(side) for side in sides)}
    if not complete:
        raise RunNotFound(_nothing_to_compare(groups, unfinished, sides))
    sections, plotted = [], []
    for rid, group in complete.items():
        sections.append(group_report(group, metric_scales, sides))
        recipe = next(iter(group[sides[0]].values())).recipe
        plotted.append({"title": f"{recipe['model']}, {recipe['dataset']} ({rid})",
                        "trials": {side: [group[side][s] for s in sorted(group[side])] for side in sides}})
    notes = []
    for rid, group in groups.items():
        if rid not in complete:
            present = [s for s in sides if group.get(s)]
            flags = recipe_flags(next(iter(group[present[0]].values())).recipe)
            seeds = {side: " ".join(str(s) for s in sorted(group[side])) for side in present}
            if len(present) == 1:
                notes.append(f"- recipe {rid} (`{flags}`): only {present[0]} runs (seeds "
                             f"{seeds[present[0]]}); nothing to compare it with")
            else:
                missing = [s for s in sides if s not in present]
                notes.append(f"- recipe {rid} (`{flags}`): runs of "
                             + _and([f"{side} (seeds {seeds[side]})" for side in present])
                             + f" but none of {_and(missing)}; `--sides {' '.join(present)}` compares them")
    if unfinished:
        notes.append(f"- {len(unfinished)} unfinished run(s) without test/acc left out: "
                     + ", ".join(f"`{t.path}`" for t in unfinished))
    text = "\n".join(sections)
    if notes:
        text += "\nLeft out:\n\n" + "\n".join(notes) + "\n"
    return text, plotted


def _nothing_to_compare(groups, unfinished, sides: tuple[str, ...]) -> str:
    newest = {}
    for group in groups.values():
        for side in sides:
            for trial in group.get(side, {}).values():
                if side not in newest or trial.versions[-1].first_event > newest[side].versions[-1].first_event:
                    newest[side] = trial
    if len(newest) == len(sides):
        keys = differences([newest[side].recipe for side in sides])
        what = ", ".join(f"{k} (" + ", ".join(f"{side} {newest[side].recipe.get(k)}" for side in sides) + ")"
                         for k in keys)
        anyway = " ".join(f"--{side} DIR" for side in sides)
        if tuple(sides) == DEFAULT_SIDES:
            return (f"no recipe was run on both sides: the newest runs differ in {what}; rerun one side "
                    f"with the other's flags, or compare them anyway with {anyway}")
        return (f"no recipe was run on all of {_and(list(sides))}: the newest runs differ in {what}; "
                "rerun the sides that differ with the same flags, or compare them anyway with "
                f"--sides {' '.join(sides)} {anyway}")
    missing = [side for side in sides if side not in newest]
    hint = f" ({len(unfinished)} unfinished run(s) have no test/acc yet)" if unfinished else ""
    return (f"no finished {' or '.join(missing)} run under this logdir{hint}; train with "
            + " and ".join(f"python {side}_side/train.py" for side in missing) + " first")


def add_margin_flags(parser) -> None:
    """--acc-margin and --ratio-margin, which harness.sweep passes on."""
    parser.add_argument("--acc-margin", type=float, default=1.0, metavar="POINTS",
                        help="equivalence margin for accuracies, in points (default: 1)")
    parser.add_argument("--ratio-margin", type=float, default=5.0, metavar="PERCENT",
                        help="equivalence margin for throughput, memory, wall time and loss, as "
                             "a ratio side/reference (flax/lightning, ...) within ±PERCENT (default: 5)")


class _Sides(argparse.Action):
    """--sides: two or more distinct sides, kept in SIDES' order (the order of columns and runs)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(set(values)) < len(values):
            parser.error(f"--sides: name each side once, got {' '.join(values)}")
        if len(values) < 2:
            other = "nnx" if values[0] == "lightning" else "lightning"
            parser.error(f"--sides: choose two or more sides to compare, got {values[0]} alone "
                         f"(e.g. --sides {' '.join(s for s in SIDES if s in (values[0], other))})")
        sides = tuple(side for side in SIDES if side in values)
        if not judged_pairs(sides):
            parser.error(f"--sides: no side of {' '.join(sides)} is judged against another")
        setattr(namespace, self.dest, sides)


def add_sides_flag(parser, verb: str) -> None:
    """--sides, the sides harness.compare compares and harness.sweep runs (`verb`)."""
    parser.add_argument(
        "--sides", nargs="+", choices=SIDES, default=DEFAULT_SIDES, action=_Sides, metavar="SIDE",
        help=f"the sides to {verb}: two or more of {', '.join(SIDES)} (default: {' '.join(DEFAULT_SIDES)}). "
             "Lightning, when chosen, is the reference every other side is judged against, and NNX "
             "is also judged against linen (flax) when both are chosen: --sides lightning flax nnx "
             "judges flax and nnx against lightning and nnx against flax; --sides flax nnx judges "
             "nnx against flax alone")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.compare", description=__doc__.split("\n\n")[0],
                                     epilog="How to read a verdict: see docs/comparing.md.")
    parser.add_argument("logdir", nargs="?", default="logs", help="the --logdir the sides wrote to")
    parser.add_argument("--run", help="only run names matching this glob, e.g. 'resnet20-digits*'")
    add_sides_flag(parser, "compare")
    for side in SIDES:
        parser.add_argument(f"--{side}", type=Path, metavar="VERSION_DIR",
                            help=f"put this {side} version folder side by side with the other sides' "
                                 "(one run each; a side of --sides not given: its newest run)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output path without extension (default: LOGDIR/compare)")
    add_margin_flags(parser)
    args = parser.parse_args(argv)
    given = [side for side in SIDES if getattr(args, side)]
    outside = [side for side in given if side not in args.sides]
    if outside:
        parser.error(f"--{outside[0]} names a run of {outside[0]}, which --sides "
                     f"({' '.join(args.sides)}) leaves out; add it: --sides "
                     + " ".join(s for s in SIDES if s in args.sides or s in outside))
    logdir = Path(args.logdir)
    out = args.out or logdir / "compare"
    try:
        if given:
            text = _explicit_pair(args, logdir, out)
        else:
            text, plotted = report(find_trials(logdir, args.run),
                                   scales(args.acc_margin, args.ratio_margin), args.sides)
            plot_groups(plotted, out.with_suffix(".png"))
    except RunNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return 0


def _explicit_pair(args, logdir: Path, out: Path) -> str:
    """The given version folders (and the newest of each side of --sides not given), side by side."""
    paths = {side: getattr(args, side) or newest_version(logdir, side, args.run) for side in args.sides}
    versions = {side: read_version(path) for side, path in paths.items()}
    rows = {side: Trial(side, path.parent.name, [versions[side]]).summary() for side, path in paths.items()}
    plot_pair({side: v.scalars for side, v in versions.items()}, out.with_suffix(".png"))
    return pair_table(rows, paths)


if __name__ == "__main__":
    raise SystemExit(main())
