"""What the flax side's driver (loop.py) needs from a Flax API, so that linen and NNX share one
driver, one epoch loop, one evaluation and one checkpoint layout, and differ only here.

An API gives its side's name (run folders logs/<side>/..., the summary line), a fresh training
state, and its two step functions (steps.py's signatures). Its state is a pytree with `.step`
(batches trained), `checkpoint_items()` and `with_checkpoint_items(items)`: linen's TrainState
(state.py) and NNX's Split (nnx_side/state.py). `LINEN` is linen's; nnx_side/api.py has NNX's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import optax

from common.config import TrainConfig
from flax_side import steps
from flax_side.models import create_model
from flax_side.precision import Precision
from flax_side.state import TrainState, create_train_state, initial_variables


@dataclasses.dataclass(frozen=True)
class FlaxApi:
    side: str
    # (config, num_classes, image_shape, precision, schedule, rng, variables=None) -> a step-0
    # state: fresh weights drawn from `rng`, or `variables` ({"params", "batch_stats"}, linen's layout)
    new_state: Callable[..., Any]
    train_step: Callable  # (state, batch, *, static arguments) -> (state, metrics)
    eval_step: Callable  # (state, batch, mask, *, static arguments) -> sums


def new_linen_state(config: TrainConfig, num_classes: int, image_shape: tuple[int, int, int],
                    precision: Precision, schedule: optax.Schedule, rng: jax.Array,
                    variables: Mapping[str, Any] | None = None) -> TrainState:
    model = create_model(config.model, num_classes, dtype=precision.compute_dtype,
                         param_dtype=precision.param_dtype, zero_init_residual=config.zero_init_residual)
    if variables is None:
        variables = initial_variables(model, rng, image_shape)
    return create_train_state(model, variables, schedule=schedule, momentum=config.momentum,
                              nesterov=config.nesterov, weight_decay=config.weight_decay,
                              loss_scaling=precision.loss_scaling)


LINEN = FlaxApi("flax", new_linen_state, steps.train_step, steps.eval_step)
