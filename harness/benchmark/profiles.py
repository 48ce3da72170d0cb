"""Where the step time goes: one convolution per ResNet-20 stage in torch and XLA, and the flax
step by kind of XLA operation. Run by command.py in a fresh process each, as the measurements are."""

from __future__ import annotations

import collections
import gzip
import json
import os
import tempfile
import time
from pathlib import Path

from harness.benchmark.measurements import flax_step


def xla_profile(model: str, batch: int, steps: int, image_size: int = 32) -> dict:
    """Milliseconds per flax train step by kind of XLA operation (the name of each fused
    operation without its number: `transpose_copy_fusion`, `ynn_fusion`, ...), from a
    jax.profiler trace of `steps` steps on one device."""
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_enable_xprof_traceme=true".strip()
    step, state, data = flax_step(model, batch, devices=1, image_size=image_size)
    import jax

    for _ in range(3):
        state, _ = step(state, data)
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                state, _ = step(state, data)
            jax.block_until_ready(state)
        wall = (time.perf_counter() - start) / steps * 1e3
        trace = next(Path(tmp).rglob("*.trace.json.gz"))
        events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    kinds: collections.Counter = collections.Counter()
    for event in events:
        name = event.get("name", "")
        # XLA's own operations only: not the executor's spans nor Python frames ($...).
        if event.get("ph") == "X" and "dur" in event and not name.startswith(("Thunk", "$", "Pjit")):
            kinds[name.split(".")[0]] += event["dur"] / 1e3 / steps
    return {"step_ms": wall, "kinds": dict(kinds.most_common(6))}


def conv_profile(batch: int, steps: int) -> dict:
    """Milliseconds of one 3x3 convolution of each ResNet-20 stage, forward, input gradient and
    weight gradient, in torch (channels_last) and in XLA (NHWC): where the step time goes."""
    import jax
    import jax.numpy as jnp
    import torch

    def clock(f, sync):
        sync(f())
        start = time.perf_counter()
        for _ in range(steps):
            out = f()
        sync(out)
        return (time.perf_counter() - start) / steps * 1e3

    dn = ("NHWC", "HWIO", "NHWC")
    result = {}
    for size, width in ((32, 16), (16, 32), (8, 64)):
        x = torch.randn(batch, width, size, size).contiguous(memory_format=torch.channels_last)
        w = torch.randn(width, width, 3, 3).contiguous(memory_format=torch.channels_last)
        dy = torch.randn_like(x)

        def backward(mask):
            return lambda: torch.ops.aten.convolution_backward(
                dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

        no_sync = lambda out: None  # noqa: E731  (torch on the CPU returns finished tensors)
        torch_ms = [clock(lambda: torch.nn.functional.conv2d(x, w, padding=1), no_sync),
                    clock(backward([True, False, False]), no_sync),
                    clock(backward([False, True, False]), no_sync)]
        jx = jnp.asarray(x.permute(0, 2, 3, 1).numpy())
        jw = jnp.asarray(w.permute(2, 3, 1, 0).numpy())
        jdy = jnp.asarray(dy.permute(0, 2, 3, 1).numpy())
        conv = lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), ((1, 1), (1, 1)),  # noqa: E731
                                                         dimension_numbers=dn)
        fwd = jax.jit(conv)
        dx = jax.jit(lambda b, g: jax.vjp(lambda a: conv(a, b), jx)[1](g)[0])
        dw = jax.jit(lambda a, g: jax.vjp(lambda b: conv(a, b), jw)[1](g)[0])
        sync = jax.block_until_ready
        xla_ms = [clock(lambda: fwd(jx, jw), sync), clock(lambda: dx(jw, jdy), sync),
                  clock(lambda: dw(jx, jdy), sync)]
        result[f"{size}x{size}x{width}"] = {"torch": torch_ms, "xla": xla_ms}
    return result

