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


def test_max_pool_pads_with_minus_infinity_like_torch():
    # All-negative input: padding with 0 instead of -inf would put zeros on every border output.
    x = -1.0 - np.random.default_rng(0).random((2, 8, 9, 9)).astype(np.float32)
    expected = torch.nn.MaxPool2d(3, 2, 1)(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    got = nn.max_pool(jnp.asarray(x.transpose(0, 2, 3, 1)), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    np.testing.assert_array_equal(np.asarray(got), expected)
    assert (expected < 0).all()


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
        assert np.mean(np.abs(w) > 2 * std) == pytest.approx(0.0455, abs=0.002), side


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


def test_imagenet_initialisation_is_torchvisions_on_both_sides():
    """Conv kernels kaiming_normal_(fan_out), untruncated; the classifier keeps torch's Linear
    default, weight and bias U(+-1/sqrt(fan_in)); BatchNorm 1/0."""
    torch_sd, flax_params, kernels, fc = _conv_and_fc("resnet18")
    _assert_he_normal(kernels, fan=128 * 3 * 3)  # fan_out = out channels x kernel area
    for side, (w, b) in fc.items():
        bound = 512 ** -0.5
        assert 0.95 * bound < np.abs(w).max() <= bound, side
        assert np.abs(b).max() <= bound and np.all(b != 0), side  # not the CIFAR models' zero bias
    assert np.all(flax_params["layer2_0/downsample_1/scale"] == 1)
    assert torch.all(torch_sd["layer2.0.downsample.1.weight"] == 1)


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
