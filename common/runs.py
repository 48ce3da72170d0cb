"""Where runs live: logs/<side>/<run-name>/version_N, the layout of Lightning's TensorBoardLogger."""

from __future__ import annotations

import re
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
