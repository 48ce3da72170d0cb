"""The linen twin of torchvision.models.resnet18/34/50 (ResNet v1.5), NHWC.

Built to be torchvision's model in flax, so that flax_side/convert.py maps every torchvision
state_dict mechanically: the same module names (`layer1.0.downsample.1` there is
`layer1_0/downsample_1` here), the same padding, the same initialisation. The traps:

- padding is torch's, never "SAME": the 7x7 stride-2 stem pads (3, 3), every 3x3 conv (1, 1)
  (for stride 2 "SAME" would pad (0, 1)), and the 3x3 stride-2 max-pool (1, 1) with -inf
  (flax's max_pool pads with its init value, -inf, as torch's MaxPool2d does);
- torchvision's init: conv kernels kaiming_normal_(mode="fan_out", nonlinearity="relu"),
  untruncated; BatchNorm scale 1, bias 0; the classifier keeps torch's Linear default, weight
  *and bias* uniform in +-1/sqrt(fan_in);
- v1.5: a bottleneck's stride is on its 3x3 conv, not on the first 1x1;
- zero_init_residual: the last BatchNorm of each block starts at scale 0.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_side.batchnorm import BatchNorm

# Plain JAX initialisers, which the NNX twin uses too (nnx_side/torchvision_resnet.py).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # untruncated, fan_out
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # U(+-1/sqrt(fan_in))


def uniform_bias(fan_in: int):
    """torch's Linear bias init: U(+-1/sqrt(fan_in)), which the bias's own shape cannot tell."""
    bound = fan_in ** -0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class _Block(nn.Module):
    """What both block kinds share: the layers' settings and the downsampling shortcut."""
    features: int
    stride: int
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def conv(self, features, kernel, stride, name):
        pad = (kernel - 1) // 2
        return nn.Conv(features, (kernel, kernel), stride, padding=((pad, pad), (pad, pad)),
                       use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=name)

    def norm(self, train, name, last=False):
        scale_init = nn.initializers.zeros if last and self.zero_init_residual else nn.initializers.ones
        return BatchNorm(use_running_average=not train, scale_init=scale_init, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=name)

    def shortcut(self, x, out_features, train):
        if self.stride == 1 and x.shape[-1] == out_features:
            return x
        x = self.conv(out_features, 1, self.stride, "downsample_0")(x)
        return self.norm(train, "downsample_1")(x)


class BasicBlock(_Block):
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        out = nn.relu(self.norm(train, "bn1")(self.conv(self.features, 3, self.stride, "conv1")(x)))
        out = self.norm(train, "bn2", last=True)(self.conv(self.features, 3, 1, "conv2")(out))
        return nn.relu(out + self.shortcut(x, self.features, train))


class Bottleneck(_Block):
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        out = nn.relu(self.norm(train, "bn1")(self.conv(self.features, 1, 1, "conv1")(x)))
        out = nn.relu(self.norm(train, "bn2")(self.conv(self.features, 3, self.stride, "conv2")(out)))
        out = self.norm(train, "bn3", last=True)(self.conv(self.features * 4, 1, 1, "conv3")(out))
        return nn.relu(out + self.shortcut(x, self.features * 4, train))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """torchvision.models.ResNet: 7x7 stem, max-pool, four stages of 64..512 channels."""
    block: str
    blocks_per_stage: tuple[int, ...]
    num_classes: int = 1000
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.astype(self.dtype)
        x = nn.Conv(64, (7, 7), 2, padding=((3, 3), (3, 3)), use_bias=False, kernel_init=conv_init,
                    dtype=self.dtype, param_dtype=self.param_dtype, name="conv1")(x)
        x = BatchNorm(use_running_average=not train, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="bn1")(x)
        x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        block = functools.partial(BLOCKS[self.block], zero_init_residual=self.zero_init_residual,
                                  dtype=self.dtype, param_dtype=self.param_dtype)
        for stage, blocks in enumerate(self.blocks_per_stage, start=1):
            for i in range(blocks):
                stride = 2 if stage > 1 and i == 0 else 1
                x = block(64 * 2 ** (stage - 1), stride, name=f"layer{stage}_{i}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        # Logits in float32 (or wider), so the loss is never computed in half precision.
        return nn.Dense(self.num_classes, kernel_init=dense_init, bias_init=uniform_bias(x.shape[-1]),
                        dtype=jnp.promote_types(self.dtype, jnp.float32),
                        param_dtype=self.param_dtype, name="fc")(x)
