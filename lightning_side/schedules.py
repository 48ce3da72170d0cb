"""Learning-rate schedules as `LambdaLR` factors, advanced every optimizer step.

The numbers are optax's (flax_side/schedules.py uses optax's own schedule functions); these are
the same formulas written for torch, and tests/test_optimizer.py compares the two at every step:

    T = epochs * steps_per_epoch, W = round(warmup_epochs * steps_per_epoch), s = optimizer step
    multistep  linear 0 -> 1 over W steps, then x0.1 at each step round(f * T) for f in milestones
    cosine     linear 0 -> 1 over W steps, then 0.5 * (1 + cos(pi * (s - W) / (T - W)))
    onecycle   cosine from 1/25 up to 1 over the first pct_start * T steps (pct_start = W / T, or
               0.3 without warm-up), then cosine down to 1/(25 * 1e4) at T (torch's OneCycleLR
               defaults, momentum not cycled)
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4
ONECYCLE_DEFAULT_PCT_START = 0.3


def _cosine_interpolate(start: float, end: float, fraction: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1.0)


def lr_factor_fn(schedule: str, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0,
                 milestones: Sequence[float] = (0.5, 0.75)) -> Callable[[int], float]:
    """step -> multiple of the peak LR used by the update at that (0-based) optimizer step."""
    total = epochs * steps_per_epoch
    warmup = round(warmup_epochs * steps_per_epoch)

    def warming_up(step: int) -> float | None:
        return step / warmup if step < warmup else None

    if schedule == "multistep":
        boundaries = [round(f * total) for f in milestones]

        def factor(step: int) -> float:
            ramp = warming_up(step)
            if ramp is not None:
                return ramp
            return 0.1 ** sum(step >= b for b in boundaries)

    elif schedule == "cosine":
        decay = max(total - warmup, 1)

        def factor(step: int) -> float:
            ramp = warming_up(step)
            if ramp is not None:
                return ramp
            return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, decay) / decay))

    elif schedule == "onecycle":
        pct_start = warmup / total if warmup > 0 else ONECYCLE_DEFAULT_PCT_START
        peak_step = int(pct_start * total)
        start, end = 1.0 / ONECYCLE_DIV, 1.0 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)

        def factor(step: int) -> float:
            if step < peak_step:
                return _cosine_interpolate(start, 1.0, step / peak_step)
            fraction = min((step - peak_step) / max(total - peak_step, 1), 1.0)
            return _cosine_interpolate(1.0, end, fraction)

    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose multistep, cosine or onecycle")
    return factor
