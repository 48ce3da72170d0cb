"""XLA:CPU's fusion pass makes a residual chain's backward pass cost O(depth^2); plain JAX.

Each block is relu(conv(x) * s + b + x). Fusion duplicates the cheap element-wise chain of every
earlier block into each backward fusion, so ms per block grows with depth unless the "fusion"
pass is off. Run: python harness/examples/xla_cpu_fusion_depth.py.
"""
import time

import jax
import jax.numpy as jnp


def net(ws, x):
    for w in ws:
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = jax.nn.relu(y * 0.5 + 0.1 + x)
    return jnp.mean(x ** 2)


def ms_per_block(depth, options):
    ws = [jax.random.normal(jax.random.key(i), (3, 3, 16, 16)) * 0.1 for i in range(depth)]
    x = jax.random.normal(jax.random.key(depth), (64, 32, 32, 16))
    grad = jax.jit(jax.grad(net), compiler_options=options).lower(ws, x).compile()
    maxima = grad.as_text().count(" maximum(")  # the ReLUs XLA computes: depth without duplication
    jax.block_until_ready(grad(ws, x))
    start = time.perf_counter()
    for _ in range(5):
        out = grad(ws, x)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / 5 / depth * 1e3, maxima


for depth in (3, 9, 18):
    for name, options in (("XLA defaults", {}), ("fusion off", {"xla_disable_hlo_passes": "fusion"})):
        ms, maxima = ms_per_block(depth, options)
        print(f"depth {depth:2d}, {name:12s}: {ms:6.2f} ms per block, {maxima:4d} ReLUs in the compiled HLO")
