"""The training state: flax's TrainState plus BatchNorm statistics, weight decay and loss scaling.

The optimizer is torch.optim.SGD's, written with optax: coupled L2 weight decay added to the
gradient of the conv and dense kernels (never BatchNorm scale/bias, never a bias), then
(Nesterov) momentum, then the learning rate of the step:

    optax.chain(optax.add_decayed_weights(wd, mask=decay_mask), optax.sgd(schedule, momentum, nesterov))

`weight_decay` has one source of truth: the argument of `create_train_state`, which builds the
optimizer from it and records it in the state. The field is static (not a pytree leaf, so not in
checkpoints: the config stored beside them holds it) and describes `tx`; replacing it on a state
would not change `tx` -- build a new state instead.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from flax.training import train_state
from flax.training.dynamic_scale import DynamicScale

from flax_side.compiler_options import init_compiler_options


class TrainState(train_state.TrainState):
    batch_stats: Any
    dynamic_scale: DynamicScale | None
    weight_decay: float = struct.field(pytree_node=False, default=0.0)

    def checkpoint_items(self) -> dict[str, Any]:
        """What a checkpoint holds (flax_side/checkpoint.py); nnx_side's state gives the same items."""
        return {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
                "opt_state": self.opt_state, "dynamic_scale": self.dynamic_scale}

    def with_checkpoint_items(self, items: dict[str, Any]) -> "TrainState":
        return self.replace(**{key: items[key] for key in self.checkpoint_items()})


def decay_mask(params: Any) -> Any:
    """True for the leaves weight decay applies to: conv and dense kernels, nothing else.

    The leaf's name is the last dict key of its path: in linen's params the path ends there, in
    an NNX state (the NNX side's optimizer) it goes on into the `nnx.Param` holding the array."""
    def is_kernel(path, _) -> bool:
        return [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1] == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def create_optimizer(schedule: optax.Schedule, *, momentum: float, nesterov: bool,
                     weight_decay: float) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
        optax.sgd(learning_rate=schedule, momentum=momentum, nesterov=nesterov),
    )


def initial_variables(model: nn.Module, rng: jax.Array, image_shape: tuple[int, ...]) -> dict:
    """Fresh {"params", "batch_stats"} for images of `image_shape` (H, W, C)."""
    init = jax.jit(lambda r: model.init(r, jnp.zeros((1, *image_shape), jnp.float32), train=False),
                   compiler_options=init_compiler_options(rng))
    variables = init(rng)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


GRADSCALER_GROWTH_INTERVAL = 2000  # torch.amp.GradScaler's default


INITIAL_LOSS_SCALE = 2.0 ** 16  # torch GradScaler's init_scale, which the Lightning side passes too


def dynamic_scale_interval(gradscaler_interval: int) -> int:
    """DynamicScale's growth_interval that grows the scale on the same step as GradScaler's.

    GradScaler doubles the scale on its `interval`-th finite step in a row; DynamicScale compares
    its count of earlier finite steps with the interval before counting the current one, so it
    would double one step later."""
    return gradscaler_interval - 1


def create_train_state(model: nn.Module, variables: dict, *, schedule: optax.Schedule,
                       momentum: float, nesterov: bool, weight_decay: float,
                       loss_scaling: bool) -> TrainState:
    """A step-0 state. `loss_scaling` (16-mixed) adds a DynamicScale with torch GradScaler's
    defaults: scale INITIAL_LOSS_SCALE (2**16), x2 after 2000 finite steps, x0.5 after a
    non-finite one."""
    tx = create_optimizer(schedule, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    dynamic_scale = None
    if loss_scaling:
        # Arrays, not Python numbers: the state keeps one pytree type from step to step (no retrace).
        dynamic_scale = DynamicScale(growth_factor=2.0, backoff_factor=0.5,
                                     growth_interval=dynamic_scale_interval(GRADSCALER_GROWTH_INTERVAL),
                                     fin_steps=jnp.zeros((), jnp.int32),
                                     scale=jnp.asarray(INITIAL_LOSS_SCALE, jnp.float32))
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                              batch_stats=variables["batch_stats"], dynamic_scale=dynamic_scale,
                              weight_decay=weight_decay)
    return state.replace(step=jnp.zeros((), jnp.int32))  # an int32 array, as restored checkpoints hold


def learning_rate(state: TrainState, schedule: optax.Schedule) -> jax.Array:
    """The LR the next update will use: the schedule at optax's own update count."""
    return schedule(optax.tree_utils.tree_get(state.opt_state, "count"))


def skipped_steps(state: TrainState) -> jax.Array:
    """Steps whose update was skipped (16-mixed overflow): batches seen minus updates applied.

    optax's count does not advance on a skipped step while `state.step` does, so the count needs
    no state of its own and survives a resume with the checkpoint."""
    return state.step - optax.tree_utils.tree_get(state.opt_state, "count")
