"""The NNX side as the flax side's driver runs it (flax_side/api.py): its fresh state and its steps."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import optax
from flax import nnx

from common.config import TrainConfig
from flax_side.api import FlaxApi
from flax_side.compiler_options import init_compiler_options
from flax_side.precision import Precision
from nnx_side import SIDE, steps
from nnx_side.convert import linen_to_nnx
from nnx_side.models import create_model
from nnx_side.state import Split, create_train_state


def new_nnx_state(config: TrainConfig, num_classes: int, image_shape: tuple[int, int, int],
                  precision: Precision, schedule: optax.Schedule, rng: jax.Array,
                  variables: Mapping[str, Any] | None = None) -> Split:
    def build(rng, variables):
        model = create_model(config.model, num_classes, rngs=nnx.Rngs(rng), dtype=precision.compute_dtype,
                             param_dtype=precision.param_dtype, zero_init_residual=config.zero_init_residual)
        if variables is not None:  # the draws above are then dead code, which XLA drops
            linen_to_nnx(variables, model)
        return create_train_state(model, schedule=schedule, momentum=config.momentum,
                                  nesterov=config.nesterov, weight_decay=config.weight_decay,
                                  loss_scaling=precision.loss_scaling)

    # One compiled program, as linen's init, with its compiler options: built op by op, NNX's init
    # would compile every initialiser of every layer shape on its own (35 s for resnet20 on a CPU).
    return jax.jit(build, compiler_options=init_compiler_options(rng))(rng, variables)


NNX = FlaxApi(SIDE, new_nnx_state, steps.train_step, steps.eval_step)
