"""Where runs live: logs/<side>/<run-name>/version_N, the layout of Lightning's TensorBoardLogger."""

from __future__ import annotations

import re
import sys
from pathlib import Path

_VERSION = re.compile(r"^version_(\d+)$")


def run_root(logdir: str | Path, side: str, run_name: str) -> Path:
    return Path(logdir) / side / run_name


def versions(logdir: str | Path, side: str, run_name: str) -> list[Path]:
    """Existing version folders of a run, oldest first."""
    root = run_root(logdir, side, run_name)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _VERSION.match(p.name))]
    return [p for _, p in sorted(found)]


def summary_line(side: str, best_val_acc: float, test_acc: float, images_per_sec: float,
                 wall_seconds: float, version_dir: str | Path) -> str:
    """The one line both trainers print at the end, so the two sides read alike."""
    return (f"[{side}] best val/acc {best_val_acc:.4f} | test/acc {test_acc:.4f} | "
            f"{images_per_sec:,.0f} train images/s | wall {wall_seconds:.1f} s | {version_dir}")


def host_peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MB (the CPU's perf/peak_memory_mb)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# The sentences both trainers print about a run's checkpoints, alike on both sides.

def interrupted_message(step: int, checkpoint: object, run_name: str) -> str:
    """How a Ctrl-C ends a run: the step it stopped at, its checkpoint, how to go on."""
    return (f"interrupted at step {step}; the checkpoint is {checkpoint}; continue with "
            f"--resume last --run-name {run_name}")


def warn_passed_over(passed: list[str], resuming_from: object) -> None:
    """--resume last skipped damaged checkpoints (each named with its reason) for an older one."""
    print(f"warning: --resume last passed over {len(passed)} damaged checkpoint(s): "
          f"{'; '.join(passed)}; resuming from {resuming_from}", file=sys.stderr, flush=True)


def warn_testing_without_best(problem: str, instead: object) -> None:
    """The best checkpoint is missing or unreadable: which weights the test split sees instead."""
    print(f"warning: {problem}; the test split is evaluated with {instead}", file=sys.stderr, flush=True)
