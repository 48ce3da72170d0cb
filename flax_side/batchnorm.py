"""BatchNorm whose running variance follows torch's convention.

flax's `nn.BatchNorm` folds the *biased* batch variance into its running average; torch's
`BatchNorm2d` folds the *unbiased* one (n / (n - 1) times larger). Normalisation itself uses the
biased variance on both. The project keeps torch's convention on both sides (docs/equivalence.md),
so eval-mode outputs after the same training agree; this module is
`nn.BatchNorm` with that one change, the same variable names, and a `num_batches_tracked` counter
so torch state_dicts convert both ways without loss.

Under `jax.jit` with a batch sharded over devices, the means below are over the global batch, so
no `axis_name` is needed for data parallelism.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
from jax import lax
from flax import linen as nn


class BatchNorm(nn.Module):
    use_running_average: bool | None = None
    momentum: float = 0.9  # flax convention: decay of the running average (torch momentum 0.1)
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones  # zeros for zero_init_residual's last BatchNorm

    @nn.compact
    def __call__(self, x: jnp.ndarray, use_running_average: bool | None = None) -> jnp.ndarray:
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average)
        features = x.shape[-1]
        stats_dtype = jnp.promote_types(self.param_dtype, jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), stats_dtype)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), stats_dtype)
        tracked = self.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32)
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)

        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            # Statistics in at least float32 whatever the compute dtype, as torch's AMP does.
            xs = x.astype(jnp.promote_types(x.dtype, stats_dtype))
            axes = tuple(range(x.ndim - 1))
            mean = xs.mean(axes)
            var = jnp.square(xs - mean).mean(axes)  # two-pass: stable, and what torch computes
            if not self.is_initializing():
                n = x.size // features
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
                tracked.value = tracked.value + 1

        # Folded into one multiply-add per element, as torch's inference kernels do.
        dtype = self.dtype or x.dtype
        inv = scale * lax.rsqrt(var + self.epsilon)
        return x.astype(dtype) * inv.astype(dtype) + (bias - mean * inv).astype(dtype)
