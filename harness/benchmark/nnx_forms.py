"""What NNX costs: one train step in each form it can be jitted in, beside linen's, each from one
initial NNX state, for `python -m harness.benchmark --nnx-overhead` (the table) and for the test
that they compute the same thing (tests/test_benchmark.py).

Every form trains the same model with the same optimizer chain (flax_side/state.py's, through
`nnx.Optimizer` on the NNX side), the same normalisation and the same loss (flax_side/steps.py's
`normalise` and `cross_entropy`), on the same synthetic batch already on the device:

    linen            flax_side/steps.py's step under jax.jit, as train.py compiles it (compiled_steps.py)
    nnx.jit          `nnx_step` (below) under nnx.jit: graph mode, NNX's default
    graph=False      `nnx_step` under nnx.jit(graph=False), tree mode, with nnx.Optimizer(graph=False)
    cached_partial   nnx.cached_partial(nnx.jit(nnx_step), model, optimizer): graph mode, the
                     graph traversal of model and optimizer cached
    jit_partial      nnx.jit_partial(nnx_step, model, optimizer, graph=False): tree mode, the
                     flattening of model and optimizer cached (cached_partial is graph mode only)
    split/merge      nnx_side/steps.py's step under jax.jit over nnx_side.state.Split, as the NNX
                     trainer compiles it (compiled_steps.py): what nnx_side/train.py runs

Each nnx.jit form donates model and optimizer, as the jax.jit forms donate their state. The NNX
forms' step body is written once (`nnx_step`) and only wrapped differently.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from typing import Any, Callable

from harness.benchmark import measurements

# name -> what the table calls it
FORMS = {
    "linen": "linen, jax.jit (the flax side's compiled step)",
    "nnx-jit": "NNX, nnx.jit",
    "nnx-jit-tree": "NNX, nnx.jit(graph=False)",
    "nnx-cached-partial": "NNX, nnx.cached_partial(nnx.jit)",
    "nnx-jit-partial-tree": "NNX, nnx.jit_partial(graph=False)",
    "split-merge": "NNX, jax.jit over split/merge (the NNX trainer's)",
}


JAX_JIT_FORMS = ("linen", "split-merge")  # compiled by compiled_steps.py, as train.py does


@dataclasses.dataclass
class Runner:
    """One form's train step, its state held inside: `step(batch)` trains on `batch` and returns
    the metrics, `arrays()` the state's arrays (to wait for), `variables()` the model's variables
    in linen's layout {"params", "batch_stats"} (numpy)."""

    step: Callable[[Any], dict]
    arrays: Callable[[], Any]
    variables: Callable[[], dict]


def nnx_step(model, optimizer, batch, *, mean, std, input_dtype, label_smoothing) -> dict:
    """The NNX train step as NNX's documentation writes it, for the nnx.jit forms: the same
    normalisation, loss and update as nnx_side/steps.py's (less its batch count and 16-mixed
    loss scaling), on the model and optimizer themselves."""
    import jax.numpy as jnp
    from flax import nnx

    from flax_side.steps import normalise
    from nnx_side.steps import mean_loss

    images, labels = batch
    x = normalise(images, mean, std, input_dtype)
    model.train()
    loss_fn = functools.partial(mean_loss, x=x, labels=labels, label_smoothing=label_smoothing)
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return {"loss": loss, "acc": jnp.mean(jnp.argmax(logits, -1) == labels)}


def _copy(tree):
    """Fresh buffers: every form donates its state, and `build` leaves its argument usable."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(jnp.copy, tree)


def build(form: str, split, spec, mesh, compiler_options: dict | None = None) -> Runner:
    """The runner of `form` (a key of FORMS), starting from the NNX state `split` (an
    nnx_side.state.Split at step 0; linen starts from its weights, converted) for `spec`'s batch
    on `mesh`. Every form compiles at its first step. `compiler_options` reach the jax.jit forms
    only (nnx.jit takes none): None for train.py's."""
    split = _copy(split)
    if form in JAX_JIT_FORMS:
        return _jax_jit_runner(form, split, spec, mesh, compiler_options)
    return _nnx_jit_runner(form, split, spec)


def _jax_jit_runner(form: str, split, spec, mesh, compiler_options: dict | None) -> Runner:
    """linen's step or the NNX trainer's, compiled by compiled_steps.py as train.py does."""
    import jax

    from flax_side.devices import replicated
    from nnx_side.convert import nnx_to_linen

    if form == "linen":
        state = measurements.new_train_state("flax", spec.model, spec.image_shape[0],
                                             variables=nnx_to_linen(split.merge().model))
    else:
        state = split
    held = {"state": jax.device_put(state, replicated(mesh))}

    @functools.cache
    def compiled():  # at the first step, as nnx.jit compiles at its first call
        return measurements.compiled_step("flax" if form == "linen" else "nnx", held["state"], spec,
                                          mesh, compiler_options)

    def step(batch):
        held["state"], metrics = compiled()(held["state"], batch)
        return metrics

    def variables():
        state = held["state"]
        if form == "linen":
            return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        return nnx_to_linen(state.merge().model)

    return Runner(step, lambda: held["state"], variables)


def _nnx_jit_runner(form: str, split, spec) -> Runner:
    """`nnx_step` under one of nnx.jit's forms, on the model and optimizer merged from `split`."""
    from flax import nnx

    from nnx_side.convert import nnx_to_linen

    train_state = split.merge()
    model, optimizer = train_state.model, train_state.optimizer
    body = functools.partial(nnx_step, **spec.static_arguments())
    if form == "nnx-jit":
        jitted = nnx.jit(body, donate_argnums=(0, 1))
        step = functools.partial(jitted, model, optimizer)
    elif form == "nnx-jit-tree":
        # Tree mode treats the model and optimizer as pytrees; the optimizer's own traversals
        # (of the model, inside the step) follow its `graph`. Its state is the one given.
        optimizer = nnx.Optimizer(model, optimizer.tx, wrt=optimizer.wrt, graph=False)
        nnx.update(optimizer, nnx.state(train_state.optimizer))
        jitted = nnx.jit(body, donate_argnums=(0, 1), graph=False)
        step = functools.partial(jitted, model, optimizer)
    elif form == "nnx-cached-partial":
        step = nnx.cached_partial(nnx.jit(body, donate_argnums=(0, 1)), model, optimizer)
    elif form == "nnx-jit-partial-tree":
        optimizer = nnx.Optimizer(model, optimizer.tx, wrt=optimizer.wrt, graph=False)
        nnx.update(optimizer, nnx.state(train_state.optimizer))
        # The jitted function takes the partial arguments as one list, its argument 0; the
        # runtime arguments follow (donate_argnums=(0, 1) would donate the batch).
        step = nnx.jit_partial(body, model, optimizer, donate_argnums=0, graph=False)
    else:
        raise ValueError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    return Runner(step, lambda: nnx.state((model, optimizer)), lambda: nnx_to_linen(model))


def measure_form(form: str, model: str, batch: int, steps: int, windows: int, image_size: int = 32) -> dict:
    """One form's step on one device, in this (fresh) process: ms per step (the median of
    `windows` timed windows of `steps` steps each, after a first step and 3 of warm-up), the
    host's time of a call on an idle device (the median of up to 10: Python and dispatch,
    until the call returns, the step itself running on after it),
    seconds to the end of the first step from a built state (tracing, compiling, one step), and
    peak memory as the other rows measure it (flax_side.devices.peak_memory_mb)."""
    import jax

    from flax_side.compiler_options import step_compiler_options
    from flax_side.devices import create_mesh, peak_memory_mb

    mesh = create_mesh(1)
    runner = build(form, measurements.new_train_state("nnx", model, image_size),
                   measurements.step_spec(model, batch, image_size), mesh)
    data = measurements.synthetic_batch(batch, image_size, mesh)
    jax.block_until_ready((runner.arrays(), data))
    start = time.perf_counter()
    runner.step(data)
    jax.block_until_ready(runner.arrays())
    first = time.perf_counter() - start
    for _ in range(3):
        runner.step(data)
    jax.block_until_ready(runner.arrays())
    ms = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            runner.step(data)
        jax.block_until_ready(runner.arrays())
        ms.append((time.perf_counter() - start) / steps * 1e3)
    # In a loop a call may wait for the step before it (XLA:CPU holds it back at small batches),
    # so the host's own cost is timed on an idle device: from the call until it returns.
    dispatch = []
    for _ in range(min(max(steps, 3), 10)):
        jax.block_until_ready(runner.arrays())
        start = time.perf_counter()
        runner.step(data)
        dispatch.append((time.perf_counter() - start) * 1e3)
    jax.block_until_ready(runner.arrays())
    return {"ms": statistics.median(ms), "windows_ms": ms, "dispatch_ms": statistics.median(dispatch),
            "first_step_s": first, "peak_mb": peak_memory_mb(),
            # train.py's for the jax.jit forms; nnx.jit takes none
            "xla_options": step_compiler_options(model) if form in JAX_JIT_FORMS else {}}
