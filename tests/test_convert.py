"""torch <-> flax weight conversion, and the forward/BatchNorm equivalence it makes testable."""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from flax_side.convert import flax_to_torch, torch_to_flax
from flax_side.models import create_model as create_flax_model
from lightning_side.models import create_model as create_torch_model


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def images(n=8, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(dtype)


@pytest.mark.parametrize("name", ["resnet20", "resnet18-cifar", "resnet18", "resnet50"])
def test_converted_weights_give_equal_logits_in_eval_mode(name):
    torch_model = create_torch_model(name).eval()
    # Non-trivial running statistics, so eval mode really uses them.
    with torch.no_grad():
        for m in torch_model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    x = images()
    expected = torch_model(torch.from_numpy(x)).detach().numpy()
    variables = torch_to_flax(torch_model.state_dict())
    got = create_flax_model(name).apply(variables, x.transpose(0, 2, 3, 1), train=False)
    assert rel_err(got, expected) <= 1e-4


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-4), (np.float64, 1e-10)])
def test_train_mode_logits_and_running_statistics_agree(dtype, tol):
    """One train-mode forward: same logits, and the same running mean and (unbiased) variance."""
    torch_model = create_torch_model("resnet20").to(torch.float64 if dtype == np.float64 else torch.float32)
    x = images(dtype=dtype)
    variables = torch_to_flax(torch_model.state_dict())
    with jax.enable_x64(dtype == np.float64):
        model = create_flax_model("resnet20", dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype))
        got, updates = model.apply(variables, x.transpose(0, 2, 3, 1), train=True,
                                   mutable=["batch_stats"])
        got = np.asarray(got)
        flax_stats = {k: np.asarray(v) for k, v in
                      traverse_util.flatten_dict(updates["batch_stats"], sep="/").items()}
    expected = torch_model.train()(torch.from_numpy(x)).detach().numpy()
    assert rel_err(got, expected) <= tol
    torch_sd = torch_model.state_dict()
    after = flax_to_torch({"params": variables["params"], "batch_stats": updates["batch_stats"]})
    for key in torch_sd:
        if "running_" in key:
            assert rel_err(after[key], torch_sd[key]) <= tol, key
        if key.endswith("num_batches_tracked"):
            assert int(after[key]) == int(torch_sd[key]) == 1, key

    # The convention is torch's unbiased estimate: with the biased one (flax's nn.BatchNorm) the
    # stem's running variance would be off by the factor n / (n - 1) in its update.
    n = x.shape[0] * 32 * 32
    stem_update = torch_sd["bn1.running_var"].numpy() - 0.9
    assert rel_err(flax_stats["bn1/var"] - 0.9, stem_update) <= max(tol, 1e-6)
    assert rel_err(stem_update * (n - 1) / n, stem_update) > 1e-5


@pytest.mark.parametrize("name", ["resnet20", "resnet18-cifar", "resnet50"])
def test_flax_to_torch_to_flax_round_trip_is_exact(name):
    model = create_flax_model(name)
    # Every variable of the model, filled with random values (compiling its init would take
    # longer than the whole check): the conversion must carry each bit there and back.
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(3), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(3)
    variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
    back = torch_to_flax(flax_to_torch(variables))
    flat_in = traverse_util.flatten_dict(jax.device_get(variables))
    flat_back = traverse_util.flatten_dict(back)
    assert flat_in.keys() == flat_back.keys()
    for key in flat_in:
        np.testing.assert_array_equal(flat_back[key], flat_in[key], err_msg=str(key))
        assert flat_back[key].dtype == flat_in[key].dtype, key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_to_flax_to_torch_round_trip_is_exact(dtype):
    torch_model = create_torch_model("resnet50").to(dtype)
    torch_model.train()(torch.from_numpy(images(4)).to(dtype))  # moves the running stats
    state_dict = torch_model.state_dict()
    back = flax_to_torch(torch_to_flax(state_dict))
    assert list(back) == sorted(state_dict)
    for key, value in state_dict.items():
        assert back[key].dtype == value.dtype, key
        assert torch.equal(back[key], value), key
    create_torch_model("resnet50").to(dtype).load_state_dict(back, strict=True)


def test_conversion_copies_rather_than_aliases_torch_memory():
    torch_model = create_torch_model("resnet20")
    variables = torch_to_flax(torch_model.state_dict())
    before = np.array(variables["batch_stats"]["bn1"]["mean"])
    torch_model.train()(torch.from_numpy(images(4)))  # updates running_mean in place
    np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["mean"], before)


def test_unexpected_state_dict_entries_are_rejected():
    state_dict = create_torch_model("resnet20").state_dict()
    state_dict["extra.weight"] = torch.zeros(3)
    with pytest.raises(KeyError, match="extra.weight"):
        torch_to_flax(state_dict)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_models_agree_in_float64_in_both_modes(name):
    """torchvision's model and its linen twin, from one torchvision state_dict. At 65 px, an odd
    size, a stride on another conv of the bottleneck (v1 instead of v1.5), or a padding other
    than torch's and "SAME", changes the feature maps. "SAME" it cannot see: at 65 px it pads
    as torch does at every layer (65 -> 33 -> 17 -> 9 -> 5 -> 3); the 64 px test below can."""
    torch_model = create_torch_model(name, 10).double()
    x = np.random.default_rng(1).standard_normal((4, 3, 65, 65))
    torch_model.train()(torch.from_numpy(x))  # non-trivial running statistics
    variables = torch_to_flax(torch_model.state_dict())
    with jax.enable_x64(True):
        model = create_flax_model(name, 10, dtype=jnp.float64, param_dtype=jnp.float64)
        nhwc = x.transpose(0, 2, 3, 1)
        # Jitted: a whole float64 network compiles and runs in a third of the time op by op takes.
        eval_logits = np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, nhwc))
        train_logits, updates = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
            variables, nhwc)
        train_logits = np.asarray(train_logits)
        after = flax_to_torch({"params": variables["params"], "batch_stats": updates["batch_stats"]})
    assert rel_err(eval_logits, torch_model.eval()(torch.from_numpy(x)).detach().numpy()) <= 1e-12
    assert rel_err(train_logits, torch_model.train()(torch.from_numpy(x)).detach().numpy()) <= 1e-10
    for key, value in torch_model.state_dict().items():
        if "running_" in key:
            assert rel_err(after[key], value) <= 1e-10, key


def test_imagenet_model_agrees_in_float64_at_an_even_size():
    """At 64 px "SAME" would pad the stem (2, 3), the max-pool and every stride-2 3x3 conv (0, 1),
    where torch pads (3, 3) and (1, 1): eval-mode logits in float64 to 1e-12."""
    torch_model = create_torch_model("resnet18", 10).double().eval()
    with torch.no_grad():  # non-trivial running statistics, without a float64 train step's cost
        for m in torch_model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64))
    variables = torch_to_flax(torch_model.state_dict())
    with jax.enable_x64(True):
        model = create_flax_model("resnet18", 10, dtype=jnp.float64, param_dtype=jnp.float64)
        logits = np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, x.transpose(0, 2, 3, 1)))
    assert logits.shape == (1, 10)
    assert rel_err(logits, torch_model.eval()(torch.from_numpy(x)).detach().numpy()) <= 1e-12
