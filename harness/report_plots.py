"""The PNGs of harness/compare.py: one run per side curve by curve, or seeds pooled into bands.
Either draws any number of sides, in the order given, each in its colour (and line style)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

# Lightning's purple, a teal for flax (linen), an orange for NNX; a line style each, for the curves
# of one run per side that overlap (plot_pair).
COLOURS = {"lightning": "#792ee5", "flax": "#2a9d8f", "nnx": "#e76f51"}
STYLES = {"lightning": "-", "flax": "--", "nnx": ":"}
# The training curves are the epochs' means (train/*_epoch), a point per epoch whatever --log-every
# is: a short run logs few per-step points, or none.
TRAIN_LOSS = ("train/loss_epoch", "train loss (epoch mean)")
TRAIN_ACC = ("train/acc_epoch", "train accuracy (epoch mean)")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pair(runs: Mapping[str, Mapping[str, list]], path: Path) -> None:
    """Loss, accuracy, LR and speed of one run per side ({side: its scalars}) against the optimizer step."""
    plt = _pyplot()
    panels = [TRAIN_LOSS, ("val/loss", "val loss"), TRAIN_ACC, ("val/acc", "val accuracy"),
              ("train/lr", "learning rate"), ("perf/train_images_per_sec", "train images/s")]
    fig, axes = plt.subplots(3, 2, figsize=(11, 10), constrained_layout=True)
    for ax, (tag, title) in zip(axes.flat, panels):
        for side in runs:
            series = runs[side].get(tag, [])
            if series:
                ax.plot([s for s, _, _ in series], [v for _, v, _ in series], STYLES[side], label=side,
                        color=COLOURS[side], marker="o" if len(series) < 30 else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def band(series_per_seed: Sequence[list]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over the seeds, at the steps every seed logged."""
    by_seed = [{step: value for step, value, _ in series} for series in series_per_seed if series]
    if not by_seed:
        return (np.empty(0),) * 4
    steps = sorted(set.intersection(*(set(s) for s in by_seed)))
    values = np.array([[seed[step] for step in steps] for seed in by_seed])
    return np.array(steps), values.mean(0), values.min(0), values.max(0)


def plot_groups(groups: Sequence[dict], path: Path) -> None:
    """A row per recipe: train loss and val accuracy (mean over seeds, min-max band) against the
    step, and each seed's test accuracy as a dot per side.

    Each group is {"title": str, "trials": {side: [Trial, ...]}}, the sides in the order drawn."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(groups), 3, figsize=(15, 4.2 * len(groups)), squeeze=False,
                             constrained_layout=True, gridspec_kw={"width_ratios": [2, 2, 1]})
    for row, group in zip(axes, groups):
        for ax, (tag, title) in zip(row[:2], (TRAIN_LOSS, ("val/acc", "val accuracy"))):
            for side in group["trials"]:
                trials = group["trials"][side]
                steps, mean, low, high = band([t.scalars.get(tag, []) for t in trials])
                if len(steps) == 0:
                    continue
                ax.plot(steps, mean, color=COLOURS[side], label=f"{side} (mean of {len(trials)})",
                        marker="o" if len(steps) < 30 else None, markersize=3)
                ax.fill_between(steps, low, high, color=COLOURS[side], alpha=0.2, linewidth=0)
            ax.set_title(f"{group['title']}: {title}, band = min-max over seeds", fontsize=10)
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            ax.legend()
        dots = row[2]
        rng = np.random.default_rng(0)  # the jitter only spreads the dots; it carries no meaning
        sides = list(group["trials"])
        for x, side in enumerate(sides):
            trials = group["trials"][side]
            acc = [t.summary()["test/acc"] for t in trials]
            jitter = rng.uniform(-0.12, 0.12, len(acc))
            dots.scatter(x + jitter, acc, color=COLOURS[side], zorder=3)
            for xi, yi, trial in zip(x + jitter, acc, trials):
                dots.annotate(f"s{trial.seed}", (xi, yi), xytext=(5, 0), textcoords="offset points",
                              fontsize=7, va="center")
            if acc:
                dots.hlines(np.mean(acc), x - 0.25, x + 0.25, color=COLOURS[side], linewidth=2)
        dots.set_xticks(range(len(sides)), sides)
        dots.set_xlim(-0.6, len(sides) - 0.4)
        dots.set_title("test accuracy per seed (bar = mean)", fontsize=10)
        dots.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=110)
    plt.close(fig)
