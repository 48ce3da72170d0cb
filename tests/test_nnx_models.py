"""The NNX models are the torch and linen models: weights convert exactly, the forward passes and
BatchNorm statistics agree in both modes, and a fresh model is initialised as torch's.

Every model here is jitted at XLA's lowest optimisation level, which compiles in a fraction of
the default's time (tests/test_models.py does the same for linen). Loading weights needs no
compiled init: `nnx.eval_shape` builds the model's structure, and the conversion fills it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx, traverse_util

from common.architectures import MODEL_NAMES
from flax_side.convert import torch_to_flax
from flax_side.models import create_model as create_linen_model
from lightning_side.models import create_model as create_torch_model
from nnx_side.convert import nnx_to_linen, nnx_to_torch, torch_to_nnx
from nnx_side import torchvision_resnet
from nnx_side.models import create_model

NUM_CLASSES = 5
FAST_OPTIONS = {"xla_backend_optimization_level": 0}
# Image sides small enough to compile fast, even so that "SAME" would pad a stride-2 conv (and
# the ImageNet stem and max-pool) otherwise than torch does.
IMAGE_SIDE = {"resnet20": 8, "resnet18": 16}
# resnet18, the torchvision twin, compiles for seconds: the slow suite (its bottleneck block stays fast).
IN_FLOAT64 = ["resnet20", pytest.param("resnet18", marks=pytest.mark.slow)]


def abstract_model(name, num_classes=NUM_CLASSES, **options):
    """The model's variables as shapes and dtypes: no weights drawn, nothing compiled."""
    return nnx.eval_shape(lambda: create_model(name, num_classes, rngs=nnx.Rngs(0), **options))


def eval_then_train(model, x):
    """The model's logits in eval mode, then in train mode, the second updating its BatchNorm
    statistics as an eager call would; one program, so one compilation."""
    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, compiler_options=FAST_OPTIONS)
    def call(state, x):
        model = nnx.merge(graphdef, state)
        model.eval()
        eval_logits = model(x)
        model.train()
        return eval_logits, model(x), nnx.state(model)

    eval_logits, train_logits, state = call(state, x)
    nnx.update(model, state)
    return np.asarray(eval_logits), np.asarray(train_logits)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def with_running_statistics(torch_model):
    """Non-trivial running statistics, so that eval mode really uses them."""
    with torch.no_grad():
        for m in torch_model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return torch_model


def images(name, n=4, dtype=np.float64):
    side = IMAGE_SIDE[name]
    return np.random.default_rng(0).standard_normal((n, 3, side, side)).astype(dtype)


@pytest.mark.parametrize("name", ["resnet20", "resnet18-cifar", "resnet18", "resnet50"])
def test_torch_to_nnx_to_torch_round_trip_is_exact(name):
    """Every entry filled with random values, so a swapped, transposed or dropped one shows."""
    torch_model = create_torch_model(name, NUM_CLASSES)
    state_dict = torch_model.state_dict()
    generator = torch.Generator().manual_seed(0)
    for value in state_dict.values():
        value.copy_(torch.randint(0, 1000, (), generator=generator) if value.dtype == torch.int64
                    else torch.randn(value.shape, generator=generator))
    back = nnx_to_torch(torch_to_nnx(state_dict, abstract_model(name)))
    assert list(back) == sorted(state_dict)
    for key, value in state_dict.items():
        assert back[key].dtype == value.dtype, key
        assert torch.equal(back[key], value), key


def test_weights_that_do_not_fit_are_refused():
    state_dict = create_torch_model("resnet20", NUM_CLASSES).state_dict()
    with pytest.raises(KeyError, match="missing.*layer1_3"):
        torch_to_nnx(state_dict, abstract_model("resnet32"))
    with pytest.raises(ValueError, match=r"params/fc/(kernel|bias) has shape \(\d+,?\d*\), the model.s is"):
        torch_to_nnx(state_dict, abstract_model("resnet20", num_classes=10))


@functools.cache
def float64_run(name):
    """A torch model in float64 with non-trivial running statistics, its weights loaded into the
    NNX twin, and the twin's logits on the same images in eval mode, then in train mode: what
    the torch and the linen comparisons both check, computed once."""
    torch_model = with_running_statistics(create_torch_model(name, NUM_CLASSES).double())
    before = {k: v.clone() for k, v in torch_model.state_dict().items()}
    x = images(name)
    with jax.enable_x64(True):
        model = torch_to_nnx(before, abstract_model(name, dtype=jnp.float64, param_dtype=jnp.float64))
        eval_logits, train_logits = eval_then_train(model, x.transpose(0, 2, 3, 1))
    return dict(torch_model=torch_model, before=before, x=x, model=model,
                eval_logits=eval_logits, train_logits=train_logits)


@pytest.mark.parametrize("name", IN_FLOAT64)
def test_forward_and_running_statistics_equal_torchs_in_float64(name):
    """Eval mode on the running statistics, then one train-mode forward: the same logits, and
    the same running mean, unbiased variance (torch momentum 0.1) and count."""
    run = float64_run(name)
    torch_model, x = run["torch_model"], torch.from_numpy(run["x"])
    torch_model.load_state_dict(run["before"])
    assert rel_err(run["eval_logits"], torch_model.eval()(x).detach().numpy()) <= 1e-12
    assert rel_err(run["train_logits"], torch_model.train()(x).detach().numpy()) <= 1e-10
    after = nnx_to_torch(run["model"])
    for key, value in torch_model.state_dict().items():
        assert after[key].dtype == value.dtype, key
        if "running_" in key:
            assert rel_err(after[key], value) <= 1e-10, key
        elif key.endswith("num_batches_tracked"):
            assert int(after[key]) == int(value) == 1, key


@pytest.mark.parametrize("name", IN_FLOAT64)
def test_nnx_equals_linen_given_the_same_weights(name):
    """Bit for bit, in both modes: the twins run the same operations in the same order, so any
    difference in padding or in the BatchNorm's arithmetic shows, however small."""
    run = float64_run(name)
    with jax.enable_x64(True):
        linen = create_linen_model(name, NUM_CLASSES, dtype=jnp.float64, param_dtype=jnp.float64)

        @functools.partial(jax.jit, compiler_options=FAST_OPTIONS)
        def linen_eval_then_train(variables, x):
            return (linen.apply(variables, x, train=False),
                    *linen.apply(variables, x, train=True, mutable=["batch_stats"]))

        expected_eval, expected_train, updates = jax.device_get(
            linen_eval_then_train(torch_to_flax(run["before"]), run["x"].transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(run["eval_logits"], expected_eval)
    np.testing.assert_array_equal(run["train_logits"], expected_train)
    after = traverse_util.flatten_dict(nnx_to_linen(run["model"])["batch_stats"])
    linen_after = traverse_util.flatten_dict(updates["batch_stats"])
    assert after.keys() == linen_after.keys()
    for key, value in linen_after.items():
        np.testing.assert_array_equal(after[key], value, err_msg=str(key))
        assert after[key].dtype == value.dtype, key


def test_bottleneck_block_equals_torchvisions():
    """resnet50's block, alone (the whole network would take seconds to compile): v1.5, the
    stride on the 3x3 conv (v1 puts it on the first 1x1, which samples other pixels), the
    projection shortcut, bn3; both modes."""
    from torchvision.models.resnet import Bottleneck, conv1x1

    projection = torch.nn.Sequential(conv1x1(64, 128, 2), torch.nn.BatchNorm2d(128))
    torch_block = with_running_statistics(Bottleneck(64, 32, stride=2, downsample=projection))
    block = torch_to_nnx(torch_block.state_dict(), nnx.eval_shape(lambda: torchvision_resnet.Bottleneck(
        64, 32, 2, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))))
    x = np.random.default_rng(0).standard_normal((2, 64, 8, 8)).astype(np.float32)
    eval_out, train_out = (y.transpose(0, 3, 1, 2) for y in eval_then_train(block, x.transpose(0, 2, 3, 1)))
    assert rel_err(eval_out, torch_block.eval()(torch.from_numpy(x)).detach().numpy()) <= 1e-5
    assert rel_err(train_out, torch_block.train()(torch.from_numpy(x)).detach().numpy()) <= 1e-5
    after = nnx_to_torch(block)
    for key, value in torch_block.state_dict().items():
        if "running_" in key:
            assert rel_err(after[key], value) <= 1e-5, key


def test_mixed_precision_computes_in_dtype_and_keeps_variables_float32():
    """As the linen side: bfloat16 convolutions, float32 parameters, BatchNorm statistics and
    logits (the loss is never computed in half precision). Shapes only, nothing compiled."""
    model = abstract_model("resnet20", dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    assert nnx.eval_shape(lambda model, x: model.conv1(x), model, x).dtype == jnp.bfloat16
    assert nnx.eval_shape(lambda model, x: model(x), model, x).dtype == jnp.float32
    params, stats = nnx.state(model, nnx.Param, nnx.BatchStat)
    assert {v.dtype for v in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert {v.dtype for v in jax.tree.leaves(stats)} == {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}


def fresh_variables(name, num_classes=NUM_CLASSES, keep=lambda path: True, **options):
    """{"path/to/variable": value} of a freshly initialised model, those `keep` chooses. What
    is not returned is never drawn: XLA drops it from the compiled init."""
    def init():
        state = nnx.state(create_model(name, num_classes, rngs=nnx.Rngs(0), **options))
        return {"/".join(map(str, path)): var.get_value()
                for path, var in nnx.to_flat_state(state) if keep(path)}
    return {k: np.asarray(v) for k, v in jax.jit(init, compiler_options=FAST_OPTIONS)().items()}


def assert_he_normal_convs(variables, fan):
    """Every conv kernel is an untruncated normal of std sqrt(2 / fan): fan(kernel) picks the
    fan (fan_in and fan_out differ where a conv widens, 21-fold at the ImageNet stem)."""
    kernels = {k: v for k, v in variables.items() if k.endswith("kernel") and v.ndim == 4}
    assert len(kernels) >= 19
    for key, w in kernels.items():
        std = np.sqrt(2.0 / fan(w.shape))
        assert w.std() == pytest.approx(std, rel=6 / np.sqrt(2 * w.size)), key
        assert abs(w.mean()) < 6 * std / np.sqrt(w.size), key
    # Untruncated: 4.55% of a normal lies beyond 2 sigma, none of a truncated one.
    tails = np.concatenate([(np.abs(w) > 2 * np.sqrt(2.0 / fan(w.shape))).ravel()
                            for w in kernels.values()])
    assert tails.mean() == pytest.approx(0.0455, abs=0.002)


def assert_batchnorms_start_at_one_and_zero(variables):
    for key, value in variables.items():
        expected = {"scale": 1, "bias": 0, "mean": 0, "var": 1, "num_batches_tracked": 0}
        leaf = key.rsplit("/", 1)[-1]
        if not key.startswith("fc") and leaf in expected:
            assert np.all(value == expected[leaf]), key


def test_cifar_initialisation_is_the_projects():
    """He-normal fan_in convs, classifier weight U(+-1/sqrt(fan_in)) and bias 0, BatchNorm 1/0."""
    variables = fresh_variables("resnet20")
    assert_he_normal_convs(variables, fan=lambda shape: shape[0] * shape[1] * shape[2])
    w, bound = variables["fc/kernel"], 64 ** -0.5
    assert w.shape == (64, NUM_CLASSES)
    assert 0.95 * bound < np.abs(w).max() <= bound
    assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.15)
    assert np.all(variables["fc/bias"] == 0)
    assert_batchnorms_start_at_one_and_zero(variables)


def test_imagenet_initialisation_is_torchvisions():
    """kaiming_normal_(fan_out) convs, the stem included; the classifier's weight *and* bias
    U(+-1/sqrt(fan_in)), torch's Linear default; BatchNorm 1/0."""
    variables = fresh_variables("resnet18", num_classes=100)
    assert variables["conv1/kernel"].shape == (7, 7, 3, 64)
    assert_he_normal_convs(variables, fan=lambda shape: shape[0] * shape[1] * shape[3])
    bound = 512 ** -0.5
    w, b = variables["fc/kernel"], variables["fc/bias"]
    assert 0.999 * bound < np.abs(w).max() <= bound
    assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.02)
    # 100 draws of U(+-bound): max |b| below 0.9 bound has odds 0.9^100, 3e-5.
    assert 0.9 * bound < np.abs(b).max() <= bound
    assert b.std() == pytest.approx(bound / np.sqrt(3), rel=0.25)
    assert_batchnorms_start_at_one_and_zero(variables)


@pytest.mark.parametrize("name,last_bn", [("resnet20", "bn2"), ("resnet18", "bn2"),
                                          ("resnet50", "bn3")])
def test_zero_init_residual_zeroes_the_last_batchnorm_of_every_block(name, last_bn):
    scales = fresh_variables(name, keep=lambda path: path[-1] == "scale", zero_init_residual=True)
    zero = {k for k, v in scales.items() if not v.any()}
    blocks = {k.split("/")[0] for k in scales if k.startswith("layer")}
    assert zero == {f"{block}/{last_bn}/scale" for block in blocks}
    assert all(np.all(v == 1) for k, v in scales.items() if k not in zero)


def test_batchnorm_mode_is_the_modules_state():
    model = abstract_model("resnet20")
    modes = lambda: {bn.use_running_average for _, bn in nnx.iter_graph(model)
                     if isinstance(bn, nnx.BatchNorm)}
    assert modes() == {False}  # a new model trains, as a new torch model does
    model.eval()
    assert modes() == {True}
    model.train()
    assert modes() == {False}


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_a_models_structure_can_key_the_jit_cache(name):
    """`nnx.jit` keys its cache on the model's graphdef, the structure and static attributes
    (a dict among them would be refused as unhashable); equal models, equal keys."""
    assert hash(nnx.graphdef(abstract_model(name))) == hash(nnx.graphdef(abstract_model(name)))


def test_unknown_model_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"resnet20, resnet32.*--model") as err:
        create_model("resnet21", rngs=nnx.Rngs(0))
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_has_torchs_variables(name):
    """Names and shapes (so parameter counts) of every model, the deep ones included: loading
    refuses a missing, unexpected or misshapen entry."""
    torch_to_nnx(create_torch_model(name, NUM_CLASSES).state_dict(), abstract_model(name))
