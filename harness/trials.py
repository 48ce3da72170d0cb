"""Finished runs read back from a logdir: one Trial per training from step 0 to its test.

A run folder (LOGDIR/<side>/<run-name>) can hold several trials: every version started without
--resume begins a new one, and a version started with --resume continues the trial before it
(a resumed run gets a new version folder on both sides). The scalars of a trial are those of its
versions, a later version's value winning for a step logged twice (a resume repeats the steps
after its checkpoint).
"""

from __future__ import annotations

import fnmatch
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from harness.recipes import recipe_id, recipe_of
from common.runs import versions
from common.sides import SIDES

# Per trial, as compare.py reports them; "acc"/"loss" in a name makes it an accuracy or a loss.
METRICS = ("best val/acc", "test/acc", "test/loss", "train images/s", "wall time (s)", "peak memory (MB)")

Series = list[tuple[int, float, float]]  # (step, value, wall_time)


@dataclass
class Version:
    path: Path
    hparams: dict[str, Any]
    scalars: dict[str, Series]
    first_event: float


@dataclass
class Trial:
    side: str
    run_name: str
    versions: list[Version] = field(default_factory=list)

    @property
    def hparams(self) -> dict[str, Any]:
        return self.versions[0].hparams

    @property
    def seed(self) -> int:
        return int(self.hparams.get("seed", 0))

    @property
    def recipe(self) -> dict[str, Any]:
        return recipe_of(self.hparams)

    @property
    def recipe_id(self) -> str:
        return recipe_id(self.hparams)

    @property
    def path(self) -> Path:
        return self.versions[-1].path

    @property
    def finished(self) -> bool:
        return bool(self.scalars.get("test/acc"))

    @functools.cached_property  # read once the trial's versions are all there (run_trials)
    def scalars(self) -> dict[str, Series]:
        merged: dict[str, dict[int, tuple[int, float, float]]] = {}
        for version in self.versions:
            for tag, series in version.scalars.items():
                merged.setdefault(tag, {}).update({step: (step, v, t) for step, v, t in series})
        return {tag: [by_step[s] for s in sorted(by_step)] for tag, by_step in merged.items()}

    def summary(self) -> dict[str, float]:
        """The compared metrics, plus the single-run report's extra rows."""
        scalars = self.scalars

        def values(tag):
            return [v for _, v, _ in scalars.get(tag, [])]

        # The first epoch of each version carries compilation (flax) and warm-up (both); an
        # epoch that trained no image (a resume entered at its end) logs NaN.
        speeds = []
        for version in self.versions:
            per_epoch = [v for _, v, _ in version.scalars.get("perf/train_images_per_sec", []) if math.isfinite(v)]
            speeds += per_epoch[1:] or per_epoch
        val_acc = values("val/acc")
        first = self.versions[0]
        first_train = min((t for _, _, t in first.scalars.get("train/loss", [])), default=math.nan)
        return {
            "best val/acc": max(val_acc, default=math.nan),
            "final val/acc": val_acc[-1] if val_acc else math.nan,
            "test/acc": (values("test/acc") or [math.nan])[-1],
            "test/loss": (values("test/loss") or [math.nan])[-1],
            "epochs": float(len(val_acc)),
            "optimizer steps": float(max((s for s, _, _ in scalars.get("train/loss", [])), default=-1) + 1),
            "wall time (s)": sum(_duration(v) for v in self.versions),
            "train images/s": sum(speeds) / len(speeds) if speeds else math.nan,
            "first train log after start (s)": first_train - first.first_event,
            "peak memory (MB)": max(values("perf/peak_memory_mb"), default=math.nan),
        }


def _duration(version: Version) -> float:
    last = max((t for series in version.scalars.values() for _, _, t in series), default=version.first_event)
    return last - version.first_event


def read_version(path: Path) -> Version:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)]
               for tag in acc.Tags()["scalars"]}
    try:
        first = acc.FirstEventTimestamp()
    except ValueError:  # no event at all yet
        first = math.nan
    hparams_file = path / "hparams.yaml"
    hparams = (yaml.safe_load(hparams_file.read_text()) or {}) if hparams_file.is_file() else {}
    return Version(path, hparams, scalars, first)


def run_trials(run_dir: Path, side: str) -> list[Trial]:
    """The trials of one run folder, oldest first. Versions without hparams.yaml (a run that
    stopped before writing anything useful) belong to no trial."""
    trials: list[Trial] = []
    for path in versions(run_dir.parent.parent, side, run_dir.name):
        version = read_version(path)
        if not version.hparams:
            continue
        if version.hparams.get("resume") and trials:
            trials[-1].versions.append(version)
        else:
            trials.append(Trial(side, run_dir.name, [version]))
    return trials


def find_trials(logdir: str | Path, run: str | None = None) -> list[Trial]:
    """Every trial under LOGDIR/<side>/<run-name>, for run names matching the glob `run`."""
    found = []
    for side in SIDES:
        root = Path(logdir) / side
        if not root.is_dir():
            continue
        for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            if run is None or fnmatch.fnmatchcase(run_dir.name, run):
                found += run_trials(run_dir, side)
    return found
