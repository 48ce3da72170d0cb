"""XLA options for what the Flax sides compile: on a CPU, the deep CIFAR ResNets' steps compile
without XLA's fusion pass, and the initialiser at XLA's backend optimisation level 1.

XLA:CPU's element-wise "fusion" pass duplicates the cheap forward chain relu(bn(conv) + residual)
into every backward fusion that reads a block's output, back to the start of the stage: the
compiled resnet56 step holds 463 ReLUs instead of 55, and the step's cost grows with the square
of the depth (harness/examples/xla_cpu_fusion_depth.py shows it in plain JAX). With the pass off,
each element-wise op runs as its own loop and reads stored activations, and resnet20..110 scale
with depth as Lightning does (docs/speed.md, "Cost against depth").

Only where it pays, by measurement (figures in docs/speed.md): He et al.'s option-A ResNets from
resnet32 on, whose stages are chains of 5 to 18 identity shortcuts. The unfused step stores more
intermediates, so resnet20, whose 3-block stages gain nothing, keeps XLA's defaults, as do
torchvision's ResNets (2 to 6 blocks a stage on much larger feature maps: without fusion,
resnet18 ran slower, each unfused op a pass over memory). GPUs keep XLA's defaults too: their
fusion is another pass.

Set per compilation rather than in XLA_FLAGS, so that it can depend on the backend and the
model. A user's own XLA_FLAGS win: if they name --xla_disable_hlo_passes at all
(`XLA_FLAGS=--xla_disable_hlo_passes=` restores XLA's defaults), nothing is set here.
"""

from __future__ import annotations

import os

import jax

from common.architectures import CIFAR_ARCHITECTURES

CPU_STEP_OPTIONS = {"xla_disable_hlo_passes": "fusion"}
MIN_BLOCKS_PER_STAGE = 5  # resnet32 and deeper


def step_compiler_options(model: str, backend: str | None = None) -> dict[str, str]:
    """`compiler_options` for `jax.jit` of `model`'s train and eval steps on `backend` (default:
    JAX's default backend)."""
    if (backend or jax.default_backend()) != "cpu":
        return {}
    if "xla_disable_hlo_passes" in os.environ.get("XLA_FLAGS", ""):
        return {}
    if model not in CIFAR_ARCHITECTURES:
        return {}
    _, blocks, shortcut = CIFAR_ARCHITECTURES[model]
    if shortcut != "A" or blocks < MIN_BLOCKS_PER_STAGE:
        return {}
    return dict(CPU_STEP_OPTIONS)


# The initialiser runs once, and at XLA's default backend level (3) most of its compilation goes
# to the threefry kernels of its random draws, one per parameter tensor: resnet20's took 7-9 s on
# a 2-core CPU, 3.7-4.6 s at level 1 (level 2 about the same), with the same weights bit for bit
# (level 0 changes the last bit of 4% of them).
# tests/test_precision_and_compile.py::test_the_initialisers_options_draw_xlas_default_weights
# holds it.
CPU_INIT_OPTIONS = {"xla_backend_optimization_level": 1}


def init_compiler_options(rng: jax.Array, backend: str | None = None) -> dict[str, int]:
    """`compiler_options` for `jax.jit` of a model's initialisation from `rng` on `backend`
    (default: JAX's default backend). A user's XLA_FLAGS naming the level win.

    None while `rng` is a tracer: the initialiser is then being traced inside another
    transformation (loop.create_state's `jax.eval_shape`, for --resume and --init-from), where
    nothing compiles and JAX refuses options on a nested jit."""
    if isinstance(rng, jax.core.Tracer):
        return {}
    if (backend or jax.default_backend()) != "cpu":
        return {}
    if "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_INIT_OPTIONS)
