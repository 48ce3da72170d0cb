"""Side-by-side report of a Lightning run and a Flax run, from their TensorBoard event files.

    python -m harness.compare logs/                      # newest run of each side
    python -m harness.compare logs/ --run resnet20-digits --out report
    python -m harness.compare logs/ --lightning logs/lightning/a/version_0 --flax logs/flax/b/version_2

Writes <out>.md (a Markdown table) and <out>.png (loss, accuracy and LR of both sides against the
optimizer step), and prints the table.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SIDES = ("lightning", "flax")


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


def read_run(version_dir: Path) -> tuple[dict[str, list[tuple[int, float, float]]], float]:
    """tag -> [(step, value, wall_time)], and the wall time of the run's first event."""
    acc = EventAccumulator(str(version_dir), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)]
               for tag in acc.Tags()["scalars"]}
    return scalars, acc.FirstEventTimestamp()


def summarise(scalars: dict, first_event: float) -> dict[str, float]:
    def values(tag):
        return [v for _, v, _ in scalars.get(tag, [])]

    def last_time():
        return max((t for series in scalars.values() for _, _, t in series), default=first_event)

    val_acc = values("val/acc")
    speeds = values("perf/train_images_per_sec")
    # The first epoch carries compilation (flax) and warm-up (both): report the rest when there is one.
    steady = speeds[1:] or speeds
    first_train = min((t for _, _, t in scalars.get("train/loss", [])), default=math.nan)
    return {
        "best val/acc": max(val_acc, default=math.nan),
        "final val/acc": val_acc[-1] if val_acc else math.nan,
        "test/acc": (values("test/acc") or [math.nan])[-1],
        "test/loss": (values("test/loss") or [math.nan])[-1],
        "epochs": float(len(val_acc)),
        "optimizer steps": float(max((s for s, _, _ in scalars.get("train/loss", [])), default=-1) + 1),
        "wall time (s)": last_time() - first_event,
        "train images/s": sum(steady) / len(steady) if steady else math.nan,
        "first train log after start (s)": first_train - first_event,
        "peak memory (MB)": max(values("perf/peak_memory_mb"), default=math.nan),
    }


def markdown_table(rows: dict[str, dict[str, float]], dirs: dict[str, Path]) -> str:
    metrics = list(next(iter(rows.values())))
    lines = ["| | " + " | ".join(rows) + " | flax / lightning |",
             "| --- | " + " | ".join("---:" for _ in rows) + " | ---: |"]
    for m in metrics:
        a, b = rows["lightning"][m], rows["flax"][m]
        cells = [_fmt(m, rows[side][m]) for side in rows]
        ratio = b / a if a and not math.isnan(a) and not math.isnan(b) else math.nan
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {'' if math.isnan(ratio) else f'{ratio:.2f}×'} |")
    lines.append("")
    lines += [f"- {side}: `{path}`" for side, path in dirs.items()]
    return "\n".join(lines) + "\n"


def _fmt(metric: str, value: float) -> str:
    if math.isnan(value):
        return "–"
    if "acc" in metric or "loss" in metric:
        return f"{value:.4f}"
    if metric in ("epochs", "optimizer steps"):
        return f"{value:.0f}"
    return f"{value:,.1f}"


def plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("train/loss", "train loss"), ("val/loss", "val loss"),
              ("train/acc", "train accuracy"), ("val/acc", "val accuracy"),
              ("train/lr", "learning rate"), ("perf/train_images_per_sec", "train images/s")]
    fig, axes = plt.subplots(3, 2, figsize=(11, 10), constrained_layout=True)
    for ax, (tag, title) in zip(axes.flat, panels):
        for side, style in zip(SIDES, ("-", "--")):
            series = runs[side].get(tag, [])
            if series:
                ax.plot([s for s, _, _ in series], [v for _, v, _ in series], style, label=side,
                        marker="o" if len(series) < 30 else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", nargs="?", default="logs", help="the --logdir both sides wrote to")
    parser.add_argument("--run", help="run name to compare (default: the newest run of each side)")
    parser.add_argument("--lightning", type=Path, help="a Lightning version folder, instead of the newest")
    parser.add_argument("--flax", type=Path, help="a Flax version folder, instead of the newest")
    parser.add_argument("--out", type=Path, default=None,
                        help="output path without extension (default: LOGDIR/compare)")
    args = parser.parse_args(argv)
    logdir = Path(args.logdir)
    try:
        dirs = {side: getattr(args, side) or newest_version(logdir, side, args.run) for side in SIDES}
    except RunNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runs, rows = {}, {}
    for side, path in dirs.items():
        runs[side], first = read_run(path)
        rows[side] = summarise(runs[side], first)
    out = args.out or logdir / "compare"
    table = markdown_table(rows, dirs)
    out.with_suffix(".md").write_text(table)
    plot(runs, out.with_suffix(".png"))
    print(table)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
