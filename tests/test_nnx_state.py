"""The NNX side's training state as the flax side's driver carries it (nnx_side/state.py): a
`Split` is a value (changing an object merged from it changes nothing in it), and its checkpoint
items hold every variable once, under linen's names, and put back give the same state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from common.architectures import CIFAR_ARCHITECTURES
from nnx_side.models import CifarResNet
from nnx_side.state import create_train_state
from tests.helpers.checkpoints import flat

FAST_OPTIONS = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def split():
    """A ResNet-8 (one block a stage) with SGD's momentum and a loss scale, after one update of
    made-up gradients, so that no item is at its initial value."""
    widths, _, shortcut = CIFAR_ARCHITECTURES["resnet20"]

    def build():
        state = create_train_state(CifarResNet(widths, (1, 1, 1), shortcut, rngs=nnx.Rngs(0)),
                                   schedule=optax.constant_schedule(0.1), momentum=0.9, nesterov=True,
                                   weight_decay=1e-4, loss_scaling=True)
        ts = state.merge()
        ts.optimizer.update(ts.model, jax.tree.map(jnp.ones_like, nnx.state(ts.model, nnx.Param)))
        ts.step[...] += 1
        return type(state).of(ts)

    return jax.jit(build, compiler_options=FAST_OPTIONS)()


def test_changing_a_merged_object_leaves_the_split_as_it_was(split):
    before = flat(jax.device_get(split.state))
    merged = split.merge()
    merged.step[...] = 99
    merged.model.fc.kernel[...] = jnp.zeros_like(merged.model.fc.kernel[...])
    after = flat(jax.device_get(split.state))
    assert int(split.step) == 1
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_checkpoint_items_hold_every_variable_under_linens_names_and_restore_the_same_state(split):
    items = split.checkpoint_items()
    assert set(items) == {"step", "params", "batch_stats", "opt_state", "dynamic_scale"}
    assert set(items["params"]) >= {"conv1", "bn1", "layer1_0", "layer3_0", "fc"}
    assert set(items["params"]["layer1_0"]["bn1"]) == {"scale", "bias"}
    assert set(items["batch_stats"]["layer1_0"]["bn1"]) == {"mean", "var", "num_batches_tracked"}
    assert float(items["dynamic_scale"]["scale"]) == 2.0 ** 16
    leaves = {k: v for k, v in flat(items).items()}
    total = sum(np.size(v) for v in jax.tree.leaves(split.state))
    assert sum(np.size(v) for v in leaves.values()) == total  # every variable, once
    # Put back into a state whose every value differs: the same state as the one saved.
    zeroed = jax.tree.map(jnp.zeros_like, split)
    restored = zeroed.with_checkpoint_items(jax.device_get(items))
    want, got = flat(jax.device_get(split.state)), flat(jax.device_get(restored.state))
    assert want.keys() == got.keys()
    for key in want:
        assert np.array_equal(want[key], got[key]), key
    assert int(restored.step) == 1 and int(restored.merge().optimizer.step[...]) == 1
