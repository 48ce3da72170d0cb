"""The ResNets in Flax NNX, NHWC: He et al.'s CIFAR ResNets here, torchvision's ImageNet ResNets
in nnx_side/torchvision_resnet.py; `create_model` builds either.

The twin of flax_side/models.py, as stateful modules: the same variable names and nesting
(`layer1_0/conv1/kernel`), so the linen side's torch converter maps them; the same
initialisation (conv kernels He-normal fan_in, *untruncated*: flax's `he_normal` truncates,
torch's `kaiming_normal_` does not; the classifier weight U(+-1/sqrt(fan_in)), torch's Linear
default; classifier bias zero; BatchNorm scale 1, bias 0). NNX needs each layer's input width
when it is built, which linen infers from the first input.

BatchNorm's mode is the module's state, as in torch: `model.train()` (the state a new model is
in) normalises with the batch's statistics and updates the running ones, `model.eval()` uses
the running ones. `dtype` is the compute dtype; parameters stay `param_dtype`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
from flax import nnx

from common.architectures import CIFAR_ARCHITECTURES, IMAGENET_ARCHITECTURES, unknown_model_message
from nnx_side import torchvision_resnet
from nnx_side.batchnorm import BatchNorm

conv_init = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")  # untruncated normal
dense_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # U(+-1/sqrt(fan_in))

# Explicit (1, 1) padding: "SAME" would pad (0, 1) for a stride-2 3x3 conv, torch pads (1, 1).
PAD_3X3 = ((1, 1), (1, 1))


class BasicBlock(nnx.Module):
    def __init__(self, in_features: int, features: int, stride: int, shortcut: str,
                 zero_init_residual: bool = False, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        conv = functools.partial(nnx.Conv, use_bias=False, kernel_init=conv_init, dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs)
        norm = functools.partial(BatchNorm, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = conv(in_features, features, (3, 3), stride, padding=PAD_3X3)
        self.bn1 = norm(features)
        self.conv2 = conv(features, features, (3, 3), 1, padding=PAD_3X3)
        self.bn2 = norm(features, scale_init=nnx.initializers.zeros if zero_init_residual
                        else nnx.initializers.ones)
        self.reshape = stride != 1 or in_features != features
        self.shortcut = shortcut
        self.pad_channels = features - in_features
        if self.reshape and shortcut == "B":
            self.shortcut_conv = conv(in_features, features, (1, 1), stride, padding="VALID")
            self.shortcut_bn = norm(features)

    def __call__(self, x):
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if not self.reshape:
            residual = x
        elif self.shortcut == "A":
            # Option A: subsample by 2 and zero-pad the new channels evenly on both sides.
            half = self.pad_channels // 2
            residual = jnp.pad(x[:, ::2, ::2, :],
                               ((0, 0), (0, 0), (0, 0), (half, self.pad_channels - half)))
        else:
            residual = self.shortcut_bn(self.shortcut_conv(x))
        return nnx.relu(out + residual.astype(out.dtype))


class CifarResNet(nnx.Module):
    def __init__(self, widths: tuple[int, ...], blocks_per_stage: tuple[int, ...], shortcut: str,
                 num_classes: int = 10, zero_init_residual: bool = False, *,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.conv1 = nnx.Conv(3, widths[0], (3, 3), 1, padding=PAD_3X3, use_bias=False,
                              kernel_init=conv_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.bn1 = BatchNorm(widths[0], dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        in_features, names = widths[0], []
        for stage, (width, blocks) in enumerate(zip(widths, blocks_per_stage), start=1):
            for i in range(blocks):
                stride = 2 if stage > 1 and i == 0 else 1
                # Attributes named as linen names its submodules, not an nnx.List, so that the
                # state's paths are the linen variables' (`layer1_0`, not `layers/0`).
                names.append(f"layer{stage}_{i}")
                setattr(self, names[-1], BasicBlock(in_features, width, stride, shortcut,
                                                    zero_init_residual, dtype=dtype,
                                                    param_dtype=param_dtype, rngs=rngs))
                in_features = width
        self.blocks = tuple(names)
        # Logits in float32 (or wider), so the loss is never computed in half precision.
        self.fc = nnx.Linear(in_features, num_classes, kernel_init=dense_init,
                             bias_init=nnx.initializers.zeros,
                             dtype=jnp.promote_types(dtype, jnp.float32), param_dtype=param_dtype,
                             rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x.astype(self.dtype))))
        for name in self.blocks:
            x = getattr(self, name)(x)
        return self.fc(jnp.mean(x, axis=(1, 2)))


def create_model(name: str, num_classes: int = 10, *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, zero_init_residual: bool = False) -> nnx.Module:
    """A freshly initialised ResNet, in train mode, called as `model(x_nhwc)`."""
    if name in IMAGENET_ARCHITECTURES:
        block, blocks = IMAGENET_ARCHITECTURES[name]
        return torchvision_resnet.ResNet(block, blocks, num_classes, zero_init_residual,
                                         dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if name not in CIFAR_ARCHITECTURES:
        raise ValueError(unknown_model_message(name))
    widths, blocks, shortcut = CIFAR_ARCHITECTURES[name]
    return CifarResNet(widths, (blocks,) * len(widths), shortcut, num_classes, zero_init_residual,
                       dtype=dtype, param_dtype=param_dtype, rngs=rngs)
