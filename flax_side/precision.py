"""--precision on the flax side: the compute and parameter dtypes, and whether the loss is scaled."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from common.config import TrainConfig

# precision -> (compute dtype, parameter dtype, loss scaling)
PRECISIONS: dict[str, tuple[Any, Any, bool]] = {
    "32": (jnp.float32, jnp.float32, False),
    "64-true": (jnp.float64, jnp.float64, False),
    "16-mixed": (jnp.float16, jnp.float32, True),
    "bf16-mixed": (jnp.bfloat16, jnp.float32, False),
}


@dataclasses.dataclass(frozen=True)
class Precision:
    compute_dtype: Any
    param_dtype: Any
    loss_scaling: bool  # 16-mixed: a DynamicScale, and non-finite steps skipped
    input_dtype: Any  # normalisation: float32 or float64


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "16-mixed" if jax.default_backend() == "gpu" else "32"
    return precision


def setup_precision(config: TrainConfig) -> Precision:
    """The dtypes of --precision; under 64-true, JAX's float64 switched on."""
    precision = resolve_precision(config.precision)
    if precision == "64-true":
        jax.config.update("jax_enable_x64", True)  # before any array exists
    compute_dtype, param_dtype, loss_scaling = PRECISIONS[precision]
    return Precision(compute_dtype, param_dtype, loss_scaling,
                     input_dtype=jnp.promote_types(param_dtype, jnp.float32))
