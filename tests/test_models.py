"""Both sides build the same networks: parameter counts, shapes, padding, BatchNorm settings, init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn

from flax_side import models as flax_models
from flax_side.batchnorm import BatchNorm
from lightning_side import models as torch_models

# He et al. (2016) Table 6 (0.27M ... 1.7M) and the usual CIFAR ResNet-18, counted exactly.
PARAM_COUNTS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet18-cifar": 11_173_962,
}
# torchvision's ImageNet ResNets: (1000 classes, 10 classes), as torchvision counts them.
IMAGENET_PARAM_COUNTS = {
    "resnet18": (11_689_512, 11_181_642),
    "resnet34": (21_797_672, 21_289_802),
    "resnet50": (25_557_032, 23_528_522),
}


def flax_variables(name, num_classes=10, seed=0, **options):
    """A fresh model and its init. Jitted at XLA's lowest optimisation level, which compiles it in
    a third of the time of the default or of op-by-op: the same draws, some values a rounding apart."""
    model = flax_models.create_model(name, num_classes, **options)
    init = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, 32, 32, 3)), train=False),
                   compiler_options={"xla_backend_optimization_level": 0})
    return model, init(jax.random.key(seed))


def flax_shapes(name, num_classes=10):
    """The init's shapes and dtypes, without compiling it."""
    model = flax_models.create_model(name, num_classes)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))


def test_both_sides_offer_the_same_models():
    assert (set(torch_models.MODEL_NAMES) == set(flax_models.MODEL_NAMES)
            == set(PARAM_COUNTS) | set(IMAGENET_PARAM_COUNTS))


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_parameter_counts(name):
    torch_count = sum(p.numel() for p in torch_models.create_model(name).parameters())
    flax_count = sum(x.size for x in jax.tree.leaves(flax_shapes(name)["params"]))
    assert torch_count == flax_count == PARAM_COUNTS[name]


def _count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", list(IMAGENET_PARAM_COUNTS))
def test_imagenet_parameter_counts_equal_torchvisions(name):
    import torchvision

    for num_classes, expected in zip((1000, 10), IMAGENET_PARAM_COUNTS[name]):
        ours = torch_models.create_model(name, num_classes)
        assert type(ours) is torchvision.models.ResNet  # torchvision's own model, not a copy
        torch_count = sum(p.numel() for p in ours.parameters())
        flax_model = flax_models.create_model(name, num_classes)
        flax_count = _count(jax.eval_shape(lambda: flax_model.init(
            jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))["params"])
        assert torch_count == flax_count == expected


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_output_shapes(name):
    torch_out = torch_models.create_model(name, num_classes=100).eval()(torch.zeros(2, 3, 32, 32))
    model = flax_models.create_model(name, 100)
    flax_out = jax.eval_shape(lambda variables: model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False),
                              flax_shapes(name, num_classes=100))  # shapes only
    assert tuple(torch_out.shape) == flax_out.shape == (2, 100)


def test_unknown_model_is_a_one_line_error():
    for create in (torch_models.create_model, flax_models.create_model):
        with pytest.raises(ValueError, match=r"resnet20, resnet32.*--model") as err:
            create("resnet21")
        assert "\n" not in str(err.value)


def test_stride2_conv_padding_matches_torch():
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    expected = conv(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
    kernel = conv.weight.detach().numpy().transpose(2, 3, 1, 0)

    def flax_conv(padding):
        layer = nn.Conv(8, (3, 3), 2, padding=padding, use_bias=False)
        return np.asarray(layer.apply({"params": {"kernel": kernel}}, x.transpose(0, 2, 3, 1)))

    np.testing.assert_allclose(flax_conv(flax_models.PAD_3X3), expected, rtol=1e-5, atol=1e-5)
    # The trap this guards against: "SAME" pads (0, 1) for stride 2 and shifts every output.
    assert np.abs(flax_conv("SAME") - expected).max() > 1e-2


class _Stop(Exception):
    """Ends a flax forward where it has what the test wants."""


def test_the_imagenet_models_max_pool_pads_like_torchvisions():
    """The max-pool's output inside both models, from the same weights. At 63 px the stem's output
    is 32 px: "SAME" would pad the stem (3, 3) as torch does, but the max-pool (0, 1), not (1, 1).
    (After the ReLU every value is >= 0, so padding with 0 or -inf gives the same output.)"""
    from flax_side.convert import torch_to_flax

    torch_model = torch_models.create_model("resnet18", 10).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 63, 63)).astype(np.float32)
    pooled = {}
    torch_model.maxpool.register_forward_hook(lambda module, args, out: pooled.update(torch=out))
    torch_model(torch.from_numpy(x))

    def layer1_input(next_fun, args, kwargs, context):
        if context.module.name == "layer1_0" and context.method_name == "__call__":
            pooled["flax"] = args[0]
            raise _Stop
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(layer1_input), pytest.raises(_Stop):
        flax_models.create_model("resnet18", 10).apply(torch_to_flax(torch_model.state_dict()),
                                                      x.transpose(0, 2, 3, 1), train=False)
    expected = pooled["torch"].detach().numpy().transpose(0, 2, 3, 1)
    assert expected.shape == (2, 16, 16, 64)
    np.testing.assert_allclose(np.asarray(pooled["flax"]), expected, rtol=1e-5, atol=1e-5)


def test_batchnorm_momentum_and_epsilon_map_across_conventions():
    bns = [m for m in torch_models.create_model("resnet20").modules()
           if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 19 and all(m.momentum == 0.1 and m.eps == 1e-5 for m in bns)
    assert BatchNorm.momentum == pytest.approx(1 - 0.1) and BatchNorm.epsilon == 1e-5


def _flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in
            __import__("flax").traverse_util.flatten_dict(tree).items()}


def _assert_he_normal(kernels: dict, fan: int) -> None:
    """Each side's kernel is an untruncated normal of std sqrt(2 / fan)."""
    std = np.sqrt(2.0 / fan)
    for side, w in kernels.items():
        assert w.std() == pytest.approx(std, rel=0.01), side
        # Untruncated: a normal puts 4.55% of its mass beyond 2 sigma; a truncated one puts 0%.
        # Within 4 standard errors of a fraction over w.size draws: a random kernel never fails.
        tail = 0.0455
        assert np.mean(np.abs(w) > 2 * std) == pytest.approx(tail, abs=4 * np.sqrt(tail * (1 - tail) / w.size)), side


def _conv_and_fc(name):
    torch_sd = torch_models.create_model(name, 10).state_dict()
    flax_params = _flat(flax_variables(name)[1]["params"])
    # 64 -> 128 channels: fan_in (576) and fan_out (1152) differ, so the test tells them apart.
    kernels = {"torch": torch_sd["layer2.0.conv1.weight"].numpy(), "flax": flax_params["layer2_0/conv1/kernel"]}
    fc = {"torch": (torch_sd["fc.weight"].numpy(), torch_sd["fc.bias"].numpy()),
          "flax": (flax_params["fc/kernel"], flax_params["fc/bias"])}
    return torch_sd, flax_params, kernels, fc


def test_initialisation_scheme_is_the_same_on_both_sides():
    """He-normal (fan_in, untruncated) convs, U(+-1/sqrt(fan_in)) classifier, zero bias, BN 1/0."""
    torch_sd, flax_params, kernels, fc = _conv_and_fc("resnet18-cifar")
    _assert_he_normal(kernels, fan=64 * 3 * 3)
    for side, (w, b) in fc.items():
        bound = 512 ** -0.5
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound, side
        assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.05), side
        assert np.all(b == 0), side
    for key, value in flax_params.items():
        if "bn" in key:
            assert np.all(value == (1.0 if key.endswith("scale") else 0.0)), key
    for key, value in torch_sd.items():
        if ".bn" in key or key.startswith("bn"):
            if key.endswith("weight"):
                assert torch.all(value == 1), key
            elif key.endswith("bias"):
                assert torch.all(value == 0), key


@pytest.fixture(scope="module")
def imagenet_init():
    """A fresh resnet18 on both sides, at 1,000 classes: 1,000 classifier biases, whose largest
    |b| tells torch's bound 1/sqrt(fan_in) from any smaller one."""
    torch_sd = torch_models.create_model("resnet18", 1000).state_dict()
    return torch_sd, _flat(flax_variables("resnet18", num_classes=1000)[1]["params"])


def _conv_kernels(torch_sd, flax_params):
    """{side: [(name, kernel as (kh, kw, in, out), fan_out)]} of every conv, the stem included."""
    torch_kernels = [(k, v.numpy().transpose(2, 3, 1, 0)) for k, v in torch_sd.items() if v.ndim == 4]
    flax_kernels = [(k, v) for k, v in flax_params.items() if k.endswith("kernel") and v.ndim == 4]
    return {side: [(k, w, w.shape[0] * w.shape[1] * w.shape[3]) for k, w in kernels]
            for side, kernels in (("torch", torch_kernels), ("flax", flax_kernels))}


def test_imagenet_initialisation_is_torchvisions_on_both_sides(imagenet_init):
    """Every conv kaiming_normal_(fan_out), untruncated, the 7x7 stem included; the classifier
    keeps torch's Linear default, weight and bias U(+-1/sqrt(fan_in)); every BatchNorm 1/0."""
    torch_sd, flax_params = imagenet_init
    for side, kernels in _conv_kernels(torch_sd, flax_params).items():
        assert len(kernels) == 20 and kernels[0][1].shape == (7, 7, 3, 64), side  # stem, 16 convs, 3 shortcuts
        for name, w, fan_out in kernels:
            # fan_out, not fan_in: the stem's differ 21-fold, a 64 -> 128 channel conv's 2-fold.
            assert w.std() == pytest.approx(np.sqrt(2.0 / fan_out), rel=6 / np.sqrt(2 * w.size)), (side, name)
            assert abs(w.mean()) < 6 * np.sqrt(2.0 / fan_out / w.size), (side, name)
        # Untruncated: 4.55% of a normal lies beyond 2 sigma, none of a truncated one.
        tails = np.concatenate([np.abs(w).ravel() > 2 * np.sqrt(2.0 / fan) for _, w, fan in kernels])
        assert tails.mean() == pytest.approx(0.0455, abs=0.001), side
    bound = 512 ** -0.5
    fc = {"torch": (torch_sd["fc.weight"].numpy(), torch_sd["fc.bias"].numpy()),
          "flax": (flax_params["fc/kernel"], flax_params["fc/bias"])}
    for side, (w, b) in fc.items():
        assert w.size == 512_000 and b.size == 1000, side
        assert 0.999 * bound < np.abs(w).max() <= bound, side
        assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.01), side
        # 1,000 draws of U(+-bound): max |b| below 0.99 bound has odds 0.99^1000, 4e-5.
        assert 0.99 * bound < np.abs(b).max() <= bound, side
        assert b.std() == pytest.approx(bound / np.sqrt(3), rel=0.1) and abs(b.mean()) < 0.08 * bound, side
    for key, value in flax_params.items():
        if key.endswith("/scale") or key.endswith("/bias") and not key.startswith("fc"):
            assert np.all(value == (1.0 if key.endswith("scale") else 0.0)), key
    for key, value in torch_sd.items():
        if value.ndim == 1 and not key.startswith("fc") and key.endswith(("weight", "bias")):
            assert torch.all(value == (1.0 if key.endswith("weight") else 0.0)), key


@pytest.mark.parametrize("name,last_bn", [pytest.param("resnet50", "bn3", marks=pytest.mark.slow),
                                          ("resnet18", "bn2"), ("resnet20", "bn2")])
def test_zero_init_residual_zeroes_the_last_batchnorm_of_every_block_on_both_sides(name, last_bn):
    torch_sd = torch_models.create_model(name, 10, zero_init_residual=True).state_dict()
    flax_params = _flat(flax_variables(name, zero_init_residual=True)[1]["params"])
    torch_zero = {k for k, v in torch_sd.items() if k.endswith(".weight") and v.ndim == 1 and not v.any()}
    flax_zero = {k for k, v in flax_params.items() if k.endswith("/scale") and not v.any()}
    assert torch_zero and {k.replace(".weight", "").replace(".", "_", 1).replace(".", "/") for k in torch_zero} \
        == {k.replace("/scale", "") for k in flax_zero}
    assert all(k.endswith(f"{last_bn}.weight") for k in torch_zero)
    blocks = {k.rsplit(".", 2)[0] for k in torch_sd if k.startswith("layer") and k.endswith("conv1.weight")}
    assert len(torch_zero) == len(blocks)
    default = torch_models.create_model(name, 10).state_dict()
    assert all(default[k].eq(1).all() for k in torch_zero)
