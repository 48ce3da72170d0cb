"""BatchNorm in NNX with torch's running-variance convention, the twin of flax_side/batchnorm.py.

A subclass of `nnx.BatchNorm`: its constructor gives the same variables (`scale`, `bias` as
`nnx.Param`; `mean`, `var` as `nnx.BatchStat`) and its `use_running_average` attribute, which
`model.train()`, `model.eval()` and `nnx.view` set. Three things of `nnx.BatchNorm` differ from
torch and from the linen side, and none of its arguments changes them, so the statistics are
created again and `__call__` is replaced whole:

- the running variance folds in the *biased* batch variance; torch's folds in the unbiased one
  (n / (n - 1) times larger), and so does the linen side;
- the running statistics are created float32 whatever `param_dtype` is, so a float64 lockstep
  would round them; here they are at least float32, float64 under x64;
- normalisation is `(x - mean) * inv + bias`; torch's inference kernels, and the linen twin,
  fold it into one multiply-add, `x * inv + (bias - mean * inv)`, which rounds differently.

It also keeps torch's `num_batches_tracked`, so torch state_dicts convert both ways exactly.
Under `jax.jit` with a batch sharded over devices, the means are over the global batch, so data
parallelism needs no `axis_name`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax
from flax import nnx

# torch's BatchNorm2d momentum 0.1 is the weight of the new batch; flax's is the decay of the old.
MOMENTUM = 0.9
EPSILON = 1e-5


class BatchNorm(nnx.BatchNorm):
    def __init__(self, num_features: int, *, dtype: Any = None, param_dtype: Any = jnp.float32,
                 scale_init=nnx.initializers.ones, rngs: nnx.Rngs):
        super().__init__(num_features, momentum=MOMENTUM, epsilon=EPSILON, dtype=dtype,
                         param_dtype=param_dtype, scale_init=scale_init, rngs=rngs)
        self.stats_dtype = jnp.promote_types(param_dtype, jnp.float32)
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), self.stats_dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), self.stats_dtype))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x: jnp.ndarray, use_running_average: bool | None = None) -> jnp.ndarray:
        if use_running_average is None:
            use_running_average = self.use_running_average
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            # Statistics in at least float32 whatever the compute dtype, as torch's AMP does.
            xs = x.astype(jnp.promote_types(x.dtype, self.stats_dtype))
            axes = tuple(range(x.ndim - 1))
            mean = xs.mean(axes)
            var = jnp.square(xs - mean).mean(axes)  # two-pass: stable, and what torch computes
            n = x.size // x.shape[-1]
            unbiased = var * (n / max(n - 1, 1))
            self.mean[...] = self.momentum * self.mean[...] + (1 - self.momentum) * mean
            self.var[...] = self.momentum * self.var[...] + (1 - self.momentum) * unbiased
            self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1

        dtype = self.dtype or x.dtype
        inv = self.scale[...] * lax.rsqrt(var + self.epsilon)
        return x.astype(dtype) * inv.astype(dtype) + (self.bias[...] - mean * inv).astype(dtype)
