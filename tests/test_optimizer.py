"""The optimizer on both sides: SGD with Nesterov momentum, coupled weight decay on conv and
linear/dense kernels only, and the learning rate at every optimizer step of every schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import traverse_util

from common.config import parse_config
from common.sides import SIDES
from flax_side.schedules import create_schedule
from flax_side.state import create_optimizer
from lightning_side.schedules import lr_factor_fn
from tests.helpers.schedules import learning_rates

# --------------------------------------------------------------------------- weight decay


def decayed_parameters(side: str) -> tuple[dict[str, bool], dict[str, tuple]]:
    """ResNet-20's parameters, by name: whether the side's optimizer decays each, and its shape.
    Lightning: two SGD parameter groups; flax: optax.add_decayed_weights' mask."""
    if side == "lightning":
        from lightning_side.models import create_model
        from lightning_side.module import parameter_groups

        model = create_model("resnet20")
        decay, no_decay = parameter_groups(model, 1e-4)
        assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
        assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
        decayed = {id(p) for p in decay["params"]}
        return ({name: id(p) in decayed for name, p in model.named_parameters()},
                {name: tuple(p.shape) for name, p in model.named_parameters()})
    if side == "nnx":
        return nnx_decayed_parameters()
    from flax_side.state import decay_mask
    from tests.helpers.models import abstract_flax_variables

    params = abstract_flax_variables()["params"]
    mask = traverse_util.flatten_dict(decay_mask(params), sep="/")
    shapes = traverse_util.flatten_dict(params, sep="/")
    assert mask.keys() == shapes.keys()
    return mask, {name: tuple(shape.shape) for name, shape in shapes.items()}


def nnx_decayed_parameters() -> tuple[dict[str, bool], dict[str, tuple]]:
    """What nnx.Optimizer decays, seen in what it does: from weights of 1, one update with zero
    gradients, LR 1 and no momentum moves exactly the decayed weights (to 1 - wd)."""
    from flax import nnx

    from nnx_side.convert import nnx_to_linen
    from nnx_side.models import create_model

    # Built abstractly and updated in one jit: eager NNX compiles each initialiser and each
    # optax operation per shape on its own (10 s against 2 s).
    graphdef, state = nnx.split(nnx.eval_shape(lambda: create_model("resnet20", 10, rngs=nnx.Rngs(0))))
    tx = create_optimizer(optax.constant_schedule(1.0), momentum=0.0, nesterov=False, weight_decay=0.25)

    @jax.jit
    def one_update(state):
        model = nnx.merge(graphdef, state)
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        optimizer.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
        return nnx.state(model)

    model = nnx.merge(graphdef, one_update(jax.tree.map(lambda v: np.ones(v.shape, v.dtype), state)))
    params = traverse_util.flatten_dict(nnx_to_linen(model)["params"], sep="/")
    for name, value in params.items():
        assert np.all(value == 0.75) or np.all(value == 1.0), name
    return ({name: bool(np.all(value == 0.75)) for name, value in params.items()},
            {name: value.shape for name, value in params.items()})


# The classifier's and the first conv's weights.
NAMES = {"lightning": ("fc.weight", "conv1.weight"), "flax": ("fc/kernel", "conv1/kernel"),
         "nnx": ("fc/kernel", "conv1/kernel")}


@pytest.mark.parametrize("side", SIDES)
def test_weight_decay_only_on_conv_and_linear_weights(side):
    decayed, shapes = decayed_parameters(side)
    assert decayed.keys() == shapes.keys()
    for name, decays in decayed.items():
        assert decays == (len(shapes[name]) in (2, 4)), name  # kernels, never BN or bias
    assert sum(decayed.values()) == 19 + 1  # resnet20: 19 convs and the classifier
    assert all(decayed[name] for name in NAMES[side])
    if side == "lightning":
        assert not any(".bn" in n or n.startswith("bn") or n.endswith("bias") for n, d in decayed.items() if d)
    else:
        assert all(decays == name.endswith("kernel") for name, decays in decayed.items())


def test_one_optimizer_step_equals_torch_sgd_with_decay_on_the_kernels():
    rng = np.random.default_rng(0)
    shapes = {"conv": {"kernel": (3, 3, 2, 4)}, "bn": {"scale": (4,), "bias": (4,)},
              "fc": {"kernel": (4, 3), "bias": (3,)}}
    params = jax.tree.map(lambda s: rng.standard_normal(s), shapes, is_leaf=lambda x: isinstance(x, tuple))
    grads = [jax.tree.map(lambda p: rng.standard_normal(p.shape), params) for _ in range(3)]
    schedule = optax.linear_schedule(0.125, 0.0625, 2)  # 0.125, 0.09375, 0.0625: exact in float32
    wd, momentum = 1e-2, 0.9

    flat = traverse_util.flatten_dict(params, sep="/")
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in flat.items()}
    decay = [p for k, p in tparams.items() if k.endswith("kernel")]
    no_decay = [p for k, p in tparams.items() if not k.endswith("kernel")]
    sgd = torch.optim.SGD([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.1, momentum=momentum, nesterov=True)

    with jax.enable_x64(True):
        tx = create_optimizer(schedule, momentum=momentum, nesterov=True, weight_decay=wd)
        jparams = jax.tree.map(jnp.asarray, params)
        opt_state = tx.init(jparams)
        for step, g in enumerate(grads):
            updates, opt_state = tx.update(jax.tree.map(jnp.asarray, g), opt_state, jparams)
            jparams = optax.apply_updates(jparams, updates)
            for group in sgd.param_groups:
                group["lr"] = float(schedule(step))
            for k, p in tparams.items():
                p.grad = torch.tensor(traverse_util.flatten_dict(g, sep="/")[k])
            sgd.step()
            got = traverse_util.flatten_dict(jax.device_get(jparams), sep="/")
            for k, p in tparams.items():
                np.testing.assert_allclose(got[k], p.detach().numpy(), rtol=0, atol=1e-13, err_msg=f"{k}@{step}")


# --------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("flags,expected", [
    # 10 steps per epoch, 4 epochs: T = 40; milestones at round(0.5*40) = 20 and 30.
    ([], {0: 0.1, 19: 0.1, 20: 0.01, 29: 0.01, 30: 0.001, 39: 0.001}),
    # warm-up over W = 10 steps from 0, then the same milestones.
    (["--warmup-epochs", "1"], {0: 0.0, 5: 0.05, 10: 0.1, 19: 0.1, 20: 0.01, 30: 0.001}),
    (["--schedule", "cosine", "--warmup-epochs", "1"], {0: 0.0, 5: 0.05, 10: 0.1, 25: 0.05, 40: 0.0}),
    (["--schedule", "onecycle"], {0: 0.1 / 25, 12: 0.1, 40: 0.1 / 25 / 1e4}),
])
def test_schedules_follow_the_shared_definitions(side, flags, expected):
    lr = learning_rates(side, ["--epochs", "4", *flags], steps_per_epoch=10)
    for step, value in expected.items():
        assert lr(step) == pytest.approx(value, rel=1e-5, abs=1e-9), step


@pytest.mark.parametrize("side", SIDES)
def test_milestones_on_the_same_step_divide_once_each_as_torch_multisteplr_does(side):
    # 3 steps: round(0.5 * 3) == round(0.75 * 3) == 2
    lr = learning_rates(side, ["--epochs", "1"], steps_per_epoch=3)
    assert [lr(s) for s in range(3)] == pytest.approx([0.1, 0.1, 0.001], rel=1e-6)


CASES = [  # (epochs, steps per epoch, warm-up epochs, milestones)
    (10, 10, 0.0, [0.5, 0.75]),
    (10, 10, 1.0, [0.5, 0.75]),
    (9, 7, 1.5, [0.3, 0.6, 0.9]),
    (182, 351, 0.0, [0.5, 0.75]),  # the paper's recipe on CIFAR-10
]


@pytest.mark.parametrize("schedule", ["multistep", "cosine", "onecycle"])
@pytest.mark.parametrize("epochs,steps,warmup,milestones", CASES)
def test_lightning_and_flax_schedules_agree_at_every_step(schedule, epochs, steps, warmup, milestones):
    config = parse_config("flax", ["--schedule", schedule, "--epochs", str(epochs), "--lr", "0.1",
                                   "--warmup-epochs", str(warmup),
                                   "--milestones", *map(str, milestones)])
    total = epochs * steps
    factor = lr_factor_fn(schedule, epochs, steps, warmup, milestones)
    torch_lrs = np.array([0.1 * factor(s) for s in range(total + 2)])
    with jax.enable_x64(True):
        flax_lrs = np.asarray(jax.vmap(create_schedule(config, steps))(np.arange(total + 2)))
    np.testing.assert_allclose(flax_lrs, torch_lrs, rtol=1e-9, atol=1e-12)
    # and the schedules really are what their names say
    assert torch_lrs.max() == pytest.approx(0.1, rel=1e-3)
    if warmup:
        assert torch_lrs[0] < 0.1 * 0.05


def test_lambda_lr_advances_once_per_optimizer_step():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    factor = lr_factor_fn("cosine", epochs=2, steps_per_epoch=5, warmup_epochs=1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(seen, [0.1 * factor(s) for s in range(10)], rtol=1e-12)
    assert seen[0] == 0.0 and seen[5] == pytest.approx(0.1)
