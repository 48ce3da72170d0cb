"""The jitted steps: pure functions of (state, batch), after flax's examples/imagenet.

Everything static (normalisation constants, the schedule, the loss's label smoothing) is bound
with functools.partial by compiled_steps.py, which jits the result with `donate_argnums=0` for the
state.
Batches arrive as they leave the loader -- uint8 NHWC images and int32 labels -- and are
normalised here, on the device, in `input_dtype` (float32; float64 under 64-true); the model casts
to its compute dtype itself.

A skipped step (16-mixed only: a non-finite gradient under loss scaling) changes nothing but two
counters: params, opt_state -- optax's update count included -- and batch_stats keep their old
values, the DynamicScale (halved scale) is stored back, and `state.step` still advances. So
`state.step` counts batches, like Lightning's `global_step`, and is the TensorBoard x-axis, while
the schedule follows optax's count of applied updates: after k skipped steps the LR lags the
step by k (torch's LR scheduler would not lag; without loss scaling the two counts are equal).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flax_side.state import TrainState, learning_rate, skipped_steps

Batch = tuple[jax.Array, jax.Array]  # uint8 (B, H, W, C) images, int32 (B,) labels


def normalise(images: jax.Array, mean: np.ndarray, std: np.ndarray, dtype: Any) -> jax.Array:
    """(x - mean) / std per channel, from uint8 pixels; mean and std in 0..255 units."""
    return (images.astype(dtype) - jnp.asarray(mean, dtype)) / jnp.asarray(std, dtype)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
    """Per-example loss of torch's CrossEntropyLoss(label_smoothing=...)."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(targets, label_smoothing))


def train_step(state: TrainState, batch: Batch, *, mean: np.ndarray, std: np.ndarray,
               input_dtype: Any, label_smoothing: float,
               schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
    images, labels = batch
    x = normalise(images, mean, std, input_dtype)

    def loss_fn(params):
        logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                                         train=True, mutable=["batch_stats"])
        loss = cross_entropy(logits, labels, label_smoothing).mean()
        return loss, (logits, updates["batch_stats"])

    if state.dynamic_scale is not None:
        dynamic_scale, is_fin, (loss, (logits, batch_stats)), grads = (
            state.dynamic_scale.value_and_grad(loss_fn, has_aux=True)(state.params))
    else:
        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)

    metrics = {"loss": loss,
               "acc": jnp.mean(jnp.argmax(logits, -1) == labels),
               "lr": learning_rate(state, schedule)}  # the LR of this update, before it advances
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)

    if state.dynamic_scale is not None:
        def keep_if_skipped(new, old):
            return jax.tree.map(lambda n, o: jnp.where(is_fin, n, o), new, old)

        new_state = new_state.replace(
            params=keep_if_skipped(new_state.params, state.params),
            opt_state=keep_if_skipped(new_state.opt_state, state.opt_state),
            batch_stats=keep_if_skipped(new_state.batch_stats, state.batch_stats),
            dynamic_scale=dynamic_scale)
        metrics["loss_scale"] = state.dynamic_scale.scale  # the scale this step used, as Lightning logs it
        metrics["skipped_steps"] = skipped_steps(new_state)  # so far, this step included
    return new_state, metrics


def eval_step(state: TrainState, batch: Batch, mask: jax.Array, *, mean: np.ndarray,
              std: np.ndarray, input_dtype: Any, label_smoothing: float) -> dict[str, jax.Array]:
    """Sums over the examples where `mask` is True (eval batches are padded to one shape), so
    dataset means are exact: sum of losses / count."""
    images, labels = batch
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                            normalise(images, mean, std, input_dtype), train=False)
    return masked_sums(logits, labels, mask, label_smoothing)


def masked_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array,
                label_smoothing: float) -> dict[str, jax.Array]:
    """The loss sum, correct count and example count over the examples where `mask` is True."""
    losses = cross_entropy(logits, labels, label_smoothing)
    correct = jnp.argmax(logits, -1) == labels
    return {"loss_sum": jnp.sum(jnp.where(mask, losses, 0)),
            "correct": jnp.sum(correct & mask, dtype=jnp.int32),
            "count": jnp.sum(mask, dtype=jnp.int32)}
