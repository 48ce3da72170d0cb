"""The ResNets in Flax linen, NHWC: He et al.'s CIFAR ResNets here, torchvision's ImageNet ResNets
in flax_side/torchvision_resnet.py; `create_model` builds either.

Mirrors lightning_side/models.py name for name (`layer1_0` here is `layer1.0` there), with the same
initialisation scheme: conv kernels He-normal (fan_in, gain sqrt(2), *untruncated*: flax's
`he_normal` truncates, torch's `kaiming_normal_` does not), the classifier weight uniform in
+-1/sqrt(fan_in) (torch's Linear default), classifier bias zero, BatchNorm scale 1 and bias 0.

`dtype` is the compute dtype (float16/bfloat16 for mixed precision); parameters stay float32
(float64 under `jax_enable_x64` with `param_dtype=jnp.float64`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from flax_side import torchvision_resnet
from flax_side.batchnorm import BatchNorm
from common.architectures import (CIFAR_ARCHITECTURES, IMAGENET_ARCHITECTURES, MODEL_NAMES,
                                   unknown_model_message)

conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # untruncated normal
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # U(+-1/sqrt(fan_in))

# Explicit (1, 1) padding: "SAME" would pad (0, 1) for a stride-2 3x3 conv, torch pads (1, 1).
PAD_3X3 = ((1, 1), (1, 1))


class BasicBlock(nn.Module):
    features: int
    stride: int
    shortcut: str
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init,
                                 dtype=self.dtype, param_dtype=self.param_dtype)
        norm = functools.partial(BatchNorm, use_running_average=not train,
                                 dtype=self.dtype, param_dtype=self.param_dtype)
        out = conv(self.features, (3, 3), self.stride, padding=PAD_3X3, name="conv1")(x)
        out = nn.relu(norm(name="bn1")(out))
        out = conv(self.features, (3, 3), 1, padding=PAD_3X3, name="conv2")(out)
        out = norm(name="bn2", scale_init=nn.initializers.zeros if self.zero_init_residual
                   else nn.initializers.ones)(out)

        in_features = x.shape[-1]
        if self.stride == 1 and in_features == self.features:
            residual = x
        elif self.shortcut == "A":
            # Option A: subsample by 2 and zero-pad the new channels evenly on both sides.
            extra = self.features - in_features
            residual = jnp.pad(x[:, ::2, ::2, :],
                               ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        else:
            residual = conv(self.features, (1, 1), self.stride, padding="VALID",
                            name="shortcut_conv")(x)
            residual = norm(name="shortcut_bn")(residual)
        return nn.relu(out + residual.astype(out.dtype))


class CifarResNet(nn.Module):
    widths: tuple[int, ...]
    blocks_per_stage: tuple[int, ...]
    shortcut: str
    num_classes: int = 10
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.astype(self.dtype)
        x = nn.Conv(self.widths[0], (3, 3), 1, padding=PAD_3X3, use_bias=False,
                    kernel_init=conv_init, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="conv1")(x)
        x = BatchNorm(use_running_average=not train, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="bn1")(x)
        x = nn.relu(x)
        for stage, (width, blocks) in enumerate(zip(self.widths, self.blocks_per_stage), start=1):
            for i in range(blocks):
                stride = 2 if stage > 1 and i == 0 else 1
                x = BasicBlock(width, stride, self.shortcut, self.zero_init_residual, dtype=self.dtype,
                               param_dtype=self.param_dtype, name=f"layer{stage}_{i}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        # Logits in float32 (or wider), so the loss is never computed in half precision.
        x = nn.Dense(self.num_classes, kernel_init=dense_init, bias_init=nn.initializers.zeros,
                     dtype=jnp.promote_types(self.dtype, jnp.float32),
                     param_dtype=self.param_dtype, name="fc")(x)
        return x


def create_model(name: str, num_classes: int = 10, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, zero_init_residual: bool = False) -> nn.Module:
    """A ResNet applied as `model.apply(variables, x_nhwc, train=..., mutable=...)`."""
    if name in IMAGENET_ARCHITECTURES:
        block, blocks = IMAGENET_ARCHITECTURES[name]
        return torchvision_resnet.ResNet(block, blocks, num_classes, zero_init_residual,
                                         dtype=dtype, param_dtype=param_dtype)
    if name not in CIFAR_ARCHITECTURES:
        raise ValueError(unknown_model_message(name))
    widths, blocks, shortcut = CIFAR_ARCHITECTURES[name]
    return CifarResNet(widths, (blocks,) * len(widths), shortcut, num_classes, zero_init_residual,
                       dtype=dtype, param_dtype=param_dtype)
