"""The NNX side's train and eval steps: pure functions of (Split, batch) for `jax.jit`, whose
bodies are NNX code on stateful objects (nnx_side/state.py says why the split).

The twins of flax_side/steps.py, which the linen side jits: the same batches in (uint8 NHWC
images, int32 labels, normalised here on the device), the same loss and metrics out, the same
skipped step under 16-mixed (params, optimizer state and BatchNorm statistics kept; the batch
count advances, the update count does not). Where linen passes `mutable=["batch_stats"]` and
gets the new statistics back, NNX's BatchNorm updates its `nnx.BatchStat`s in place during the
forward pass of `model.train()`, and `nnx.value_and_grad` carries the update out.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from flax_side.steps import Batch, cross_entropy, masked_sums, normalise
from nnx_side.state import Split


def mean_loss(model: nnx.Module, *, x: jax.Array, labels: jax.Array,
              label_smoothing: float) -> tuple[jax.Array, jax.Array]:
    """(the batch's mean loss, the logits): what the step differentiates with respect to `model`."""
    logits = model(x)
    return cross_entropy(logits, labels, label_smoothing).mean(), logits


def train_step(split: Split, batch: Batch, *, mean: np.ndarray, std: np.ndarray, input_dtype: Any,
               label_smoothing: float, schedule: optax.Schedule) -> tuple[Split, dict[str, jax.Array]]:
    state = split.merge()
    model, optimizer = state.model, state.optimizer
    images, labels = batch
    x = normalise(images, mean, std, input_dtype)
    model.train()
    loss_fn = functools.partial(mean_loss, x=x, labels=labels, label_smoothing=label_smoothing)
    metrics = {"lr": state.learning_rate(schedule)}  # the LR of this update, before it advances
    if state.loss_scale is not None:
        before = nnx.as_pure(nnx.state((model, optimizer)))
        metrics["loss_scale"] = state.loss_scale.scale[...]  # the scale this step uses, as Lightning logs it
        finite, (loss, logits), grads = state.loss_scale.value_and_grad(loss_fn, has_aux=True)(model)
    else:
        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    state.step[...] += 1

    if state.loss_scale is not None:
        after = nnx.as_pure(nnx.state((model, optimizer)))
        nnx.update((model, optimizer), jax.tree.map(lambda n, o: jnp.where(finite, n, o), after, before))
        metrics["skipped_steps"] = state.skipped_steps()
    metrics.update(loss=loss, acc=jnp.mean(jnp.argmax(logits, -1) == labels))
    return Split.of(state), metrics


def eval_step(split: Split, batch: Batch, mask: jax.Array, *, mean: np.ndarray, std: np.ndarray,
              input_dtype: Any, label_smoothing: float) -> dict[str, jax.Array]:
    """Sums over the examples where `mask` is True, as flax_side/steps.py's eval_step."""
    model = split.merge().model
    model.eval()
    images, labels = batch
    logits = model(normalise(images, mean, std, input_dtype))
    return masked_sums(logits, labels, mask, label_smoothing)
