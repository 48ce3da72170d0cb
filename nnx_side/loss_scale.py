"""A dynamic loss scale for 16-mixed in NNX, with torch GradScaler's constants.

Flax ships `DynamicScale` for linen (a struct the step replaces) and none for NNX, so this is its
NNX form: an object whose scale and count of finite steps are `nnx.Variable`s, updated in place
by each step, saved and restored with the rest of the training state. The arithmetic is
`flax.training.dynamic_scale.DynamicScale.value_and_grad`'s, line for line (the loss times the
scale, the gradients divided by it in float32, the scale doubled after `growth_interval` finite
steps in a row, halved after a non-finite one), so the linen and NNX sides scale alike; a test
runs the two on the same gradients, overflows included.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from flax_side import state as linen_state
from flax_side.state import GRADSCALER_GROWTH_INTERVAL, dynamic_scale_interval

GROWTH_FACTOR = 2.0  # GradScaler's
BACKOFF_FACTOR = 0.5


class LossScale(nnx.Variable):
    """The loss scale's state: neither a parameter nor a BatchNorm statistic."""


class DynamicLossScale(nnx.Pytree):
    def __init__(self, growth_interval: int = dynamic_scale_interval(GRADSCALER_GROWTH_INTERVAL),
                 scale: float | None = None):
        self.growth_interval = growth_interval
        # Read when built, not imported: the linen side's constant is the one source (tests patch it).
        scale = linen_state.INITIAL_LOSS_SCALE if scale is None else scale
        self.scale = LossScale(jnp.asarray(scale, jnp.float32))
        self.fin_steps = LossScale(jnp.zeros((), jnp.int32))

    def value_and_grad(self, loss_fn: Callable, *, has_aux: bool = False) -> Callable:
        """`nnx.value_and_grad(loss_fn, has_aux=...)` through the scale: called on the model,
        it returns (is_finite, value, grads), the value and gradients unscaled, and updates the
        scale for the next step."""

        def scaled(model):
            out = loss_fn(model)
            return (self.scale[...] * out[0], out[1]) if has_aux else self.scale[...] * out

        def value_and_grad(model):
            scale = self.scale[...]
            value, grads = nnx.value_and_grad(scaled, has_aux=has_aux)(model)
            value = (value[0] / scale, value[1]) if has_aux else value / scale
            grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32) / scale, grads)
            finite = jnp.array(True)
            for g in jax.tree.leaves(grads):
                finite &= jnp.all(jax.lax.is_finite(g))
            grow = self.fin_steps[...] == self.growth_interval
            grown = jnp.where(grow & finite, jnp.minimum(scale * GROWTH_FACTOR, jnp.finfo(jnp.float32).max),
                              scale)
            self.scale[...] = jnp.where(finite, grown, scale * BACKOFF_FACTOR)
            self.fin_steps[...] = jnp.where(grow | ~finite, 0, self.fin_steps[...] + 1)
            return finite, value, grads

        return value_and_grad
