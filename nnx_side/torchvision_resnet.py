"""The NNX twin of torchvision.models.resnet18/34/50 (ResNet v1.5), NHWC.

Mirrors flax_side/torchvision_resnet.py, whose docstring lists the traps (torch's padding, never
"SAME"; torchvision's init; v1.5's bottleneck stride; zero_init_residual), and takes its
initialisers from there: the same variable names (`layer1.0.downsample.1` in torchvision is
`layer1_0/downsample_1` here), so the linen side's converter maps torchvision state_dicts.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from flax_side.torchvision_resnet import conv_init, dense_init, uniform_bias
from nnx_side.batchnorm import BatchNorm


def _conv(in_features, features, kernel, stride, *, dtype, param_dtype, rngs):
    pad = (kernel - 1) // 2
    return nnx.Conv(in_features, features, (kernel, kernel), stride,
                    padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=conv_init,
                    dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class _Block(nnx.Module):
    """What both block kinds share: building their layers, and the downsampling shortcut."""

    def __init__(self, in_features: int, out_features: int, stride: int, zero_init_residual: bool,
                 *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        # Separate attributes, not a dict: a module's static attributes must hash, as the jit
        # cache keys on them.
        self.dtype, self.param_dtype = dtype, param_dtype
        self.zero_init_residual = zero_init_residual
        self.project = stride != 1 or in_features != out_features
        if self.project:
            self.downsample_0 = self.conv(in_features, out_features, 1, stride, rngs)
            self.downsample_1 = self.norm(out_features, rngs)

    def conv(self, in_features, features, kernel, stride, rngs):
        return _conv(in_features, features, kernel, stride, dtype=self.dtype,
                     param_dtype=self.param_dtype, rngs=rngs)

    def norm(self, features, rngs, last=False):
        scale_init = (nnx.initializers.zeros if last and self.zero_init_residual
                      else nnx.initializers.ones)
        return BatchNorm(features, scale_init=scale_init, dtype=self.dtype,
                         param_dtype=self.param_dtype, rngs=rngs)

    def shortcut(self, x):
        return self.downsample_1(self.downsample_0(x)) if self.project else x


class BasicBlock(_Block):
    expansion = 1

    def __init__(self, in_features, features, stride, zero_init_residual=False, *, dtype,
                 param_dtype, rngs):
        super().__init__(in_features, features, stride, zero_init_residual, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
        self.conv1 = self.conv(in_features, features, 3, stride, rngs)
        self.bn1 = self.norm(features, rngs)
        self.conv2 = self.conv(features, features, 3, 1, rngs)
        self.bn2 = self.norm(features, rngs, last=True)

    def __call__(self, x):
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return nnx.relu(out + self.shortcut(x))


class Bottleneck(_Block):
    expansion = 4

    def __init__(self, in_features, features, stride, zero_init_residual=False, *, dtype,
                 param_dtype, rngs):
        super().__init__(in_features, features * 4, stride, zero_init_residual, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
        self.conv1 = self.conv(in_features, features, 1, 1, rngs)
        self.bn1 = self.norm(features, rngs)
        self.conv2 = self.conv(features, features, 3, stride, rngs)
        self.bn2 = self.norm(features, rngs)
        self.conv3 = self.conv(features, features * 4, 1, 1, rngs)
        self.bn3 = self.norm(features * 4, rngs, last=True)

    def __call__(self, x):
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = nnx.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return nnx.relu(out + self.shortcut(x))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nnx.Module):
    """torchvision.models.ResNet: 7x7 stem, max-pool, four stages of 64..512 channels."""

    def __init__(self, block: str, blocks_per_stage: tuple[int, ...], num_classes: int = 1000,
                 zero_init_residual: bool = False, *, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.conv1 = _conv(3, 64, 7, 2, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.bn1 = BatchNorm(64, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        kind, in_features, names = BLOCKS[block], 64, []
        for stage, blocks in enumerate(blocks_per_stage, start=1):
            for i in range(blocks):
                stride = 2 if stage > 1 and i == 0 else 1
                # Attributes named as linen names its submodules (`layer1_0`), not an nnx.List.
                names.append(f"layer{stage}_{i}")
                setattr(self, names[-1], kind(in_features, 64 * 2 ** (stage - 1), stride,
                                              zero_init_residual, dtype=dtype,
                                              param_dtype=param_dtype, rngs=rngs))
                in_features = 64 * 2 ** (stage - 1) * kind.expansion
        self.blocks = tuple(names)
        # Logits in float32 (or wider), so the loss is never computed in half precision.
        self.fc = nnx.Linear(in_features, num_classes, kernel_init=dense_init,
                             bias_init=uniform_bias(in_features),
                             dtype=jnp.promote_types(dtype, jnp.float32), param_dtype=param_dtype,
                             rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x.astype(self.dtype))))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for name in self.blocks:
            x = getattr(self, name)(x)
        return self.fc(jnp.mean(x, axis=(1, 2)))
