"""The learning-rate schedules, as optax schedules of the optimizer step.

The same numbers as lightning_side/schedules.py (a test compares every step). With
T = epochs * steps_per_epoch optimizer steps and W = round(warmup_epochs * steps_per_epoch):

    multistep  linear warm-up 0 -> lr over W steps, then lr, divided by 10 at round(f * T) for
               every milestone fraction f (the paper: 32k and 48k of 64k; two milestones on one
               step divide by 100 there, as torch's MultiStepLR)
    cosine     linear warm-up 0 -> lr over W steps, then cosine decay to 0 at step T
    onecycle   optax's one-cycle: cosine up from lr/25 over pct_start * T steps (W/T, or 0.3
               without warm-up), then cosine down to lr/25/1e4

The update of optimizer step s (0-based) uses schedule(s).
"""

from __future__ import annotations

import collections
import math

import jax.numpy as jnp
import optax

from common.config import TrainConfig


def optimizer_steps_per_epoch(config: TrainConfig, batches_per_epoch: int) -> int:
    """Optimizer steps in one epoch: the loader's batches, capped by --limit-train-batches."""
    return min(batches_per_epoch, config.limit_train_batches or math.inf)


def create_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    schedule = _optax_schedule(config, steps_per_epoch)

    def at_step(count):
        # optax divides the int32 step count in float32 whatever the precision; a float count of
        # the default float width keeps 64-true in float64 (a 1e-7 LR error derails lockstep).
        return schedule(jnp.asarray(count, jnp.result_type(float)))

    return at_step


def _optax_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    lr = config.lr
    if config.schedule == "multistep":
        # Milestones that round to the same step divide once each (0.01), as torch's MultiStepLR
        # does; a plain {step: 0.1} dict would keep only one of them.
        milestones = collections.Counter(round(f * total) - warmup for f in config.milestones)
        decay = optax.piecewise_constant_schedule(lr, {b: 0.1 ** n for b, n in milestones.items()})
        if warmup > 0:
            return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])
        return decay
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=lr, warmup_steps=warmup,
                                                  decay_steps=total, end_value=0.0)
    if config.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(transition_steps=total, peak_value=lr,
                                              pct_start=warmup / total if warmup > 0 else 0.3,
                                              div_factor=25.0, final_div_factor=1e4)
    raise ValueError(f"unknown schedule {config.schedule!r}")
