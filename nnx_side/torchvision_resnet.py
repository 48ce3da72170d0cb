"""The NNX twin of torchvision.models.resnet18/34/50 (ResNet v1.5), NHWC.

Mirrors flax_side/torchvision_resnet.py: the same variable names (`layer1.0.downsample.1` in
torchvision is `layer1_0/downsample_1` here), so the linen side's converter maps torchvision
state_dicts. The traps are the same:

- padding is torch's, never "SAME": the 7x7 stride-2 stem pads (3, 3), every 3x3 conv (1, 1)
  (for stride 2 "SAME" would pad (0, 1)), and the 3x3 stride-2 max-pool (1, 1) with -inf;
- torchvision's init: conv kernels kaiming_normal_(mode="fan_out", nonlinearity="relu"),
  untruncated; BatchNorm scale 1, bias 0; the classifier keeps torch's Linear default, weight
  *and bias* uniform in +-1/sqrt(fan_in);
- v1.5: a bottleneck's stride is on its 3x3 conv, not on the first 1x1;
- zero_init_residual: the last BatchNorm of each block starts at scale 0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from nnx_side.batchnorm import BatchNorm

conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")  # untruncated, fan_out
dense_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # U(+-1/sqrt(fan_in))


def _uniform_bias(fan_in: int):
    """torch's Linear bias init: U(+-1/sqrt(fan_in)), which the bias's own shape cannot tell."""
    bound = fan_in ** -0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


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
                             bias_init=_uniform_bias(in_features),
                             dtype=jnp.promote_types(dtype, jnp.float32), param_dtype=param_dtype,
                             rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x.astype(self.dtype))))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for name in self.blocks:
            x = getattr(self, name)(x)
        return self.fc(jnp.mean(x, axis=(1, 2)))
