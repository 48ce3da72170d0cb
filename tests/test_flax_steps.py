"""The flax side's parts: schedules, the weight-decay mask and optimizer, loss scaling, weights in."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import traverse_util

from flax_side.checkpoint import CheckpointError, load_initial_weights
from flax_side.convert import torch_to_flax
from flax_side.models import CifarResNet, create_model
from flax_side.schedules import create_schedule
from flax_side.state import create_optimizer, create_train_state, decay_mask, initial_variables
from flax_side.steps import train_step
from common.architectures import CIFAR_ARCHITECTURES
from common.config import parse_config
from lightning_side.models import create_model as create_torch_model


def abstract_variables(name="resnet20", num_classes=10):
    model = create_model(name, num_classes)
    return jax.eval_shape(functools.partial(initial_variables, model, image_shape=(32, 32, 3)),
                          jax.random.key(0))


# --------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("flags,expected", [
    # 10 steps per epoch, 4 epochs: T = 40; milestones at round(0.5*40) = 20 and 30.
    ([], {0: 0.1, 19: 0.1, 20: 0.01, 29: 0.01, 30: 0.001, 39: 0.001}),
    # warm-up over W = 10 steps from 0, then the same milestones.
    (["--warmup-epochs", "1"], {0: 0.0, 5: 0.05, 10: 0.1, 19: 0.1, 20: 0.01, 30: 0.001}),
    (["--schedule", "cosine", "--warmup-epochs", "1"], {0: 0.0, 5: 0.05, 10: 0.1, 25: 0.05, 40: 0.0}),
    (["--schedule", "onecycle"], {0: 0.1 / 25, 12: 0.1, 40: 0.1 / 25 / 1e4}),
])
def test_schedules_follow_the_shared_definitions(flags, expected):
    schedule = create_schedule(parse_config("flax", ["--epochs", "4", *flags]), steps_per_epoch=10)
    for step, lr in expected.items():
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-5, abs=1e-9), step


def test_milestones_on_the_same_step_divide_once_each_as_torch_multisteplr_does():
    # 3 steps: round(0.5 * 3) == round(0.75 * 3) == 2
    schedule = create_schedule(parse_config("flax", ["--epochs", "1"]), steps_per_epoch=3)
    assert [float(schedule(s)) for s in range(3)] == pytest.approx([0.1, 0.1, 0.001], rel=1e-6)


# --------------------------------------------------------------------------- weight decay

def test_weight_decay_mask_is_true_exactly_for_conv_and_dense_kernels():
    params = abstract_variables()["params"]
    mask = traverse_util.flatten_dict(decay_mask(params), sep="/")
    shapes = traverse_util.flatten_dict(params, sep="/")
    assert mask.keys() == shapes.keys()
    for path, decayed in mask.items():
        assert decayed == path.endswith("kernel"), path
        assert decayed == (len(shapes[path].shape) in (2, 4)), path  # kernels, never BN or bias
    assert sum(mask.values()) == 19 + 1  # resnet20: 19 convs and the classifier


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


# --------------------------------------------------------------------------- loss scaling

def test_fp16_overflow_skips_the_step_and_halves_the_scale():
    """A non-finite gradient (a scale of 2**100 overflows float16) changes nothing but the
    counters: params, opt_state (optax's count included) and batch_stats keep their values,
    state.step advances (it counts batches, as Lightning's global_step), the scale halves."""
    # ResNet-20 with the first block of each stage only (a ResNet-8): the step's rules do not
    # depend on depth, and its float16 step compiles in a third of the time. Its weights are those
    # blocks of ResNet-20's init (float32 parameters either way), which the session's compilation
    # cache holds from the reference runs; an init of its own would compile for 7 s.
    widths, _, shortcut = CIFAR_ARCHITECTURES["resnet20"]
    model = CifarResNet(widths, (1,) * len(widths), shortcut, dtype=jnp.float16)
    full = initial_variables(create_model("resnet20"), jax.random.key(0), (32, 32, 3))
    variables = {kind: {name: value for name, value in layers.items()
                        if not name.startswith("layer") or name.endswith("_0")} for kind, layers in full.items()}
    schedule = optax.constant_schedule(0.1)
    state = create_train_state(model, variables,
                               schedule=schedule, momentum=0.9, nesterov=True, weight_decay=1e-4,
                               loss_scaling=True)
    step = jax.jit(functools.partial(train_step, mean=np.full(3, 127.0), std=np.full(3, 60.0),
                                     input_dtype=jnp.float32, label_smoothing=0.0, schedule=schedule),
                   donate_argnums=0)
    rng = np.random.default_rng(0)
    batch = (rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 8).astype(np.int32))
    kept = ("params", "opt_state", "batch_stats")

    state = state.replace(dynamic_scale=state.dynamic_scale.replace(scale=jnp.float32(2.0 ** 100)))
    before = jax.device_get({k: getattr(state, k) for k in kept})
    state, metrics = step(state, batch)
    after = jax.device_get({k: getattr(state, k) for k in kept})
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    assert int(state.step) == 1
    assert float(state.dynamic_scale.scale) == 2.0 ** 99  # stored back, halved
    assert float(metrics["loss_scale"]) == 2.0 ** 100  # the scale this step used
    assert int(state.dynamic_scale.fin_steps) == 0
    assert int(metrics["skipped_steps"]) == 1  # train/skipped_steps

    state = state.replace(dynamic_scale=state.dynamic_scale.replace(scale=jnp.float32(2.0 ** 16)))
    state, metrics = step(state, batch)  # a normal step goes through
    assert np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 2 and int(optax.tree_utils.tree_get(state.opt_state, "count")) == 1
    assert float(state.dynamic_scale.scale) == 2.0 ** 16 and int(state.dynamic_scale.fin_steps) == 1
    assert int(metrics["skipped_steps"]) == 1  # still the one
    assert not np.array_equal(jax.device_get(state.params["fc"]["kernel"]), before["params"]["fc"]["kernel"])


# --------------------------------------------------------------------------- --init-from

def _torch_state_dict(name="resnet20"):
    torch.manual_seed(0)
    model = create_torch_model(name)
    with torch.no_grad():  # non-trivial running statistics, so they are seen to arrive
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


def _assert_same_variables(got, expected):
    got, expected = traverse_util.flatten_dict(got, sep="/"), traverse_util.flatten_dict(expected, sep="/")
    assert got.keys() == expected.keys()
    for key in expected:
        assert np.asarray(got[key]).dtype == np.asarray(expected[key]).dtype, key
        assert np.array_equal(got[key], expected[key]), key


def test_init_from_torch_state_dict_and_lightning_checkpoint_give_the_converted_weights(tmp_path):
    sd = _torch_state_dict()
    torch.save(sd, tmp_path / "weights.pt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "last.ckpt")
    expected = torch_to_flax(sd)
    like = abstract_variables()
    _assert_same_variables(load_initial_weights(tmp_path / "weights.pt", like), expected)
    _assert_same_variables(load_initial_weights(tmp_path / "last.ckpt", like), expected)


def test_init_from_the_wrong_model_is_a_one_line_error(tmp_path):
    torch.save(_torch_state_dict("resnet20"), tmp_path / "r20.pt")
    with pytest.raises(CheckpointError, match="r20.pt") as err:
        load_initial_weights(tmp_path / "r20.pt", abstract_variables("resnet20", num_classes=100))
    assert "\n" not in str(err.value)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt"):
        load_initial_weights(tmp_path / "notes.txt", abstract_variables())


def test_dynamic_scale_grows_and_backs_off_on_the_same_steps_as_torch_gradscaler():
    import torch
    from flax.training.dynamic_scale import DynamicScale

    from flax_side.state import dynamic_scale_interval

    interval = 3
    finite = [True] * 7 + [False] + [True] * 4 + [False, False] + [True] * 5
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=interval)
    param = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([param], lr=0.0)
    dyn = DynamicScale(growth_interval=dynamic_scale_interval(interval), scale=8.0)
    torch_scales, flax_scales = [], []
    for ok in finite:
        optimizer.zero_grad()
        scaler.scale((param * (1.0 if ok else float("inf"))).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        torch_scales.append(scaler.get_scale())
        dyn, _, _, _ = dyn.value_and_grad(lambda p: (p * (1.0 if ok else jnp.inf)).sum())(jnp.ones(1))
        flax_scales.append(float(dyn.scale))
    assert flax_scales == torch_scales
    assert len(set(torch_scales)) > 2  # it did grow and back off
