"""The train and eval steps as train.py runs them: static arguments bound, jitted with their
shardings, donation and compiler options, and compiled for one global batch shape.

The one place that compiles them: the driver (loop.py) compiles them before the clock starts, so
no epoch's clock counts compiling, and harness/benchmark times the very step it compiles.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from flax_side.compiler_options import step_compiler_options
from flax_side.devices import batch_sharding, replicated
from flax_side.state import TrainState
from flax_side.steps import eval_step, train_step


@dataclasses.dataclass(frozen=True, eq=False)
class StepSpec:
    """What the steps are compiled for besides the state: the model (for its compiler options),
    the global batch, and the static arguments of steps.py."""

    model: str
    batch_size: int  # the global batch, split along the mesh
    image_shape: tuple[int, int, int]  # (H, W, C)
    mean: np.ndarray  # normalisation, in 0..255 units
    std: np.ndarray
    input_dtype: Any = jnp.float32
    label_smoothing: float = 0.0

    def static_arguments(self) -> dict[str, Any]:
        return dict(mean=self.mean, std=self.std, input_dtype=self.input_dtype,
                    label_smoothing=self.label_smoothing)


def batch_specs(spec: StepSpec, mesh: Mesh) -> tuple[jax.ShapeDtypeStruct, ...]:
    """(images, labels, mask) of one global batch, sharded along the mesh."""
    sharding = batch_sharding(mesh)
    return (jax.ShapeDtypeStruct((spec.batch_size, *spec.image_shape), jnp.uint8, sharding=sharding),
            jax.ShapeDtypeStruct((spec.batch_size,), jnp.int32, sharding=sharding),
            jax.ShapeDtypeStruct((spec.batch_size,), jnp.bool_, sharding=sharding))


def compile_train_step(state: TrainState, schedule: optax.Schedule, spec: StepSpec, mesh: Mesh,
                       compiler_options: dict[str, str] | None = None, *,
                       step: Callable = train_step) -> jax.stages.Compiled:
    """(state, (images, labels)) -> (state, metrics), the state donated. `compiler_options`:
    None for train.py's (compiler_options.py), {} for XLA's defaults. `step`: steps.py's, or the
    NNX side's twin (nnx_side/steps.py), which takes and returns its own state."""
    if compiler_options is None:  # CPU, CIFAR ResNets: no fusion pass (compiler_options.py)
        compiler_options = step_compiler_options(spec.model)
    images, labels, _ = batch_specs(spec, mesh)
    return jax.jit(functools.partial(step, schedule=schedule, **spec.static_arguments()),
                   donate_argnums=0, out_shardings=replicated(mesh), compiler_options=compiler_options
                   ).lower(state, (images, labels)).compile()


def compile_eval_step(state: TrainState, spec: StepSpec, mesh: Mesh,
                      compiler_options: dict[str, str] | None = None, *,
                      step: Callable = eval_step) -> jax.stages.Compiled:
    """(state, (images, labels), mask) -> sums over the masked-in examples (steps.eval_step)."""
    if compiler_options is None:
        compiler_options = step_compiler_options(spec.model)
    images, labels, mask = batch_specs(spec, mesh)
    return jax.jit(functools.partial(step, **spec.static_arguments()), out_shardings=replicated(mesh),
                   compiler_options=compiler_options).lower(state, (images, labels), mask).compile()
