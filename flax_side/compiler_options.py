"""XLA options for the jitted steps: on a CPU, XLA's element-wise "fusion" pass is switched off.

XLA:CPU's fusion pass duplicates the cheap forward chain relu(bn(conv) + residual) into every
backward fusion that reads a block's output, back to the start of the stage: the compiled
resnet56 step holds 463 ReLUs instead of 55, and the step's cost grows with the square of the
depth (harness/examples/xla_cpu_fusion_depth.py shows it in plain JAX). With the pass off, each
element-wise op runs as its own loop and reads stored activations: resnet20 runs as fast as
before, and deeper networks scale like Lightning's (README, "Cost against depth").

Set per compilation rather than in XLA_FLAGS, so that GPUs, whose fusion is a different pass,
keep XLA's defaults. A user's own XLA_FLAGS win: if they name --xla_disable_hlo_passes at all
(`XLA_FLAGS=--xla_disable_hlo_passes=` restores XLA's defaults), nothing is set here.
"""

from __future__ import annotations

import os

import jax

CPU_STEP_OPTIONS = {"xla_disable_hlo_passes": "fusion"}


def step_compiler_options(backend: str | None = None) -> dict[str, str]:
    """`compiler_options` for `jax.jit` of the train and eval steps on `backend` (default: JAX's)."""
    if (backend or jax.default_backend()) != "cpu":
        return {}
    if "xla_disable_hlo_passes" in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_STEP_OPTIONS)
