"""Whole runs in fp32, several seeds per side: the means must agree, not the trajectories.

    python -m tests.statistical                 # digits, 10 epochs, cosine, seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from tests.tb import scalars

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ["--dataset", "digits", "--epochs", "10", "--schedule", "cosine", "--warmup-epochs", "1"]


def seed_runs(logdir: Path, seeds=(0, 1, 2)) -> dict[str, dict[str, list[float]]]:
    """side -> {"test/acc": [...], "val/acc": [best per seed], "images/s": [...]}"""
    results = {}
    for side in ("lightning", "flax"):
        found = {"test/acc": [], "val/acc": [], "images/s": []}
        for seed in seeds:
            name = f"seed{seed}"
            out = subprocess.run([sys.executable, f"{side}_side/train.py", *RECIPE, "--seed", str(seed),
                                  "--logdir", str(logdir), "--run-name", name],
                                 cwd=ROOT, capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                raise RuntimeError(f"{side} seed {seed} failed:\n{out.stderr[-3000:]}")
            logged = scalars(logdir / side / name / "version_0")
            found["test/acc"].append(logged["test/acc"][-1][1])
            found["val/acc"].append(max(v for _, v in logged["val/acc"]))
            speeds = [v for _, v in logged["perf/train_images_per_sec"]][1:]
            found["images/s"].append(statistics.mean(speeds))
        results[side] = found
    return results


def table(results: dict) -> str:
    lines = ["| side | test/acc per seed | mean test/acc | mean best val/acc | train images/s |",
             "| --- | --- | ---: | ---: | ---: |"]
    for side, r in results.items():
        lines.append(f"| {side} | {', '.join(f'{a:.4f}' for a in r['test/acc'])} | "
                     f"{statistics.mean(r['test/acc']):.4f} | {statistics.mean(r['val/acc']):.4f} | "
                     f"{statistics.mean(r['images/s']):,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", type=Path, default=Path("logs/statistical"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print(table(seed_runs(args.logdir, args.seeds)))


if __name__ == "__main__":
    main()
