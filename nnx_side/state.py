"""The NNX side's training state: the model, its `nnx.Optimizer`, the batches trained and, under
16-mixed, the loss scale, as one NNX object; and `Split`, that object as the jitted steps take it.

The optimizer is the linen side's optax chain (flax_side/state.py: coupled L2 weight decay on
conv and dense kernels, then SGD with (Nesterov) momentum at the step's LR), held by
`nnx.Optimizer(model, tx, wrt=nnx.Param)`: BatchNorm statistics are `nnx.BatchStat`s, so the
optimizer never sees them.

Two counts, as on the linen side: `step` counts the batches trained (the TensorBoard x-axis, a
skipped 16-mixed step included), the optimizer's own `step` the updates applied (the schedule's
step; a skipped step does not advance it).

Why `Split`: `nnx.jit` walks the object graph in Python at every call (about 20 ms a call for
resnet20 on a 2-core CPU: docs/speed.md, "What NNX costs"). Flax's performance guide
gives the way out, used here: `nnx.split` once, `jax.jit` a function that `nnx.merge`s, runs NNX
code on the stateful objects, and returns the split state again. `Split` is that (graphdef,
state) pair as one pytree, its state plain arrays, so the flax side's epoch loop, evaluation
and Orbax checkpoints carry it as they carry linen's TrainState: both give `.step` and the
checkpoint items {step, params, batch_stats, opt_state, dynamic_scale} (params and batch_stats
under linen's names, so --init-from reads either side's checkpoints).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from flax_side.state import create_optimizer
from nnx_side.loss_scale import DynamicLossScale


class TrainState(nnx.Pytree):
    def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, *, loss_scaling: bool):
        self.model = model
        self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        self.step = nnx.Variable(jnp.zeros((), jnp.int32))  # batches trained
        self.loss_scale = DynamicLossScale() if loss_scaling else None

    def learning_rate(self, schedule: optax.Schedule) -> jax.Array:
        """The LR the next update will use: the schedule at the count of updates applied."""
        return schedule(self.optimizer.step[...])

    def skipped_steps(self) -> jax.Array:
        """Batches whose update was skipped (16-mixed overflow)."""
        return self.step[...] - self.optimizer.step[...].astype(jnp.int32)


def create_train_state(model: nnx.Module, *, schedule: optax.Schedule, momentum: float,
                       nesterov: bool, weight_decay: float, loss_scaling: bool) -> "Split":
    """A step-0 state of `model` (whose weights it takes as they are), split for the steps."""
    tx = create_optimizer(schedule, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    return Split.of(TrainState(model, tx, loss_scaling=loss_scaling))


def _pure(state: Any) -> Any:
    return nnx.to_pure_dict(state)


@struct.dataclass
class Split:
    """`nnx.split(train_state)` as one pytree: the graph static, its state's plain arrays the
    leaves. Plain arrays (`nnx.as_pure`), not the `nnx.Variable`s `nnx.split` gives: jax.jit
    flattens the state at every call and builds it again from the outputs, and for resnet20
    that took 1.8 ms with Variables against 0.09 ms with arrays (docs/speed.md, "What NNX
    costs"); `merge` gives the Variables back, from the graph's record of them."""

    graphdef: Any = struct.field(pytree_node=False)
    state: nnx.State

    @classmethod
    def of(cls, train_state: TrainState) -> "Split":
        graphdef, state = nnx.split(train_state)
        return cls(graphdef, nnx.as_pure(state))

    def merge(self) -> TrainState:
        # New Variables around these arrays: changing the merged object leaves this Split as it was.
        return nnx.merge(self.graphdef, self.state)

    @property
    def step(self) -> jax.Array:
        return self.state["step"]

    def checkpoint_items(self) -> dict[str, Any]:
        """What a checkpoint holds, in the linen side's layout (flax_side/checkpoint.py)."""
        ts = self.merge()
        # get_value/set_value, not [...]: the state may be abstract (ShapeDtypeStructs: a
        # restore's target) and then has nothing to index.
        return {"step": ts.step.get_value(),
                "params": _pure(nnx.state(ts.model, nnx.Param)),
                "batch_stats": _pure(nnx.state(ts.model, nnx.BatchStat)),
                "opt_state": _pure(nnx.state(ts.optimizer)),
                "dynamic_scale": _pure(nnx.state(ts.loss_scale)) if ts.loss_scale is not None else None}

    def with_checkpoint_items(self, items: Mapping[str, Any]) -> "Split":
        """This state with every value from `items` (checkpoint_items' layout)."""
        ts = self.merge()
        ts.step.set_value(items["step"])
        for owner, kind, key in ((ts.model, nnx.Param, "params"), (ts.model, nnx.BatchStat, "batch_stats"),
                                 (ts.optimizer, ..., "opt_state"), (ts.loss_scale, ..., "dynamic_scale")):
            if owner is None:
                continue
            state = nnx.state(owner, kind)
            nnx.replace_by_pure_dict(state, items[key])
            nnx.update(owner, state)
        return Split.of(ts)
