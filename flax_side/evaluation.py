"""Evaluation: exact means over a split, and the test split with the best checkpoint's weights."""

from __future__ import annotations

import itertools
import math
import operator
from typing import Callable, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from lightning.fabric.loggers import TensorBoardLogger

from common.runs import warn_testing_without_best
from flax_side import checkpoint
from flax_side.devices import global_batch, without_names
from flax_side.state import TrainState


def evaluate(eval_step_fn: Callable, state: TrainState, loader: Iterable, *, limit: int | None,
             batch_size: int, sharding: NamedSharding,
             note_bad_images: Callable = lambda bad: None) -> dict[str, float]:
    """Exact means over the split (or its first `limit` batches): the last, partial batch is
    padded to the compiled batch size (`batch_size`: this process's rows) and masked out of the sums."""
    totals = None
    for images, labels in without_names(itertools.islice(loader, limit), note_bad_images):
        n = len(labels)
        pad = batch_size - n
        images = np.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0)))
        labels = np.pad(labels, (0, pad))
        mask = np.arange(batch_size) < n
        sums = eval_step_fn(state, global_batch((images, labels), sharding), global_batch(mask, sharding))
        totals = sums if totals is None else jax.tree.map(operator.add, totals, sums)
    totals = jax.device_get(totals)
    count = int(totals["count"])
    return {"loss": float(totals["loss_sum"]) / count, "acc": int(totals["correct"]) / count}


def best_weights(manager: ocp.CheckpointManager, best_step: int | None, state: TrainState,
                 rng: jax.Array) -> TrainState:
    """The state of the best checkpoint, or `state` if that is the best or the best cannot be
    read (with a warning)."""
    if best_step is None or best_step == int(state.step):
        return state
    try:
        best_state, _, _ = checkpoint.restore(manager.directory, best_step, state, rng)
    except checkpoint.CheckpointError as err:
        if jax.process_index() == 0:
            warn_testing_without_best(f"the best checkpoint cannot be read ({err})",
                                      f"the final weights, of step {int(state.step)}")
        return state
    return best_state


def evaluate_test_split(evaluate_on: Callable, state: TrainState, rng: jax.Array, loader: Iterable, *,
                        limit: int | None, epochs: int, manager: ocp.CheckpointManager,
                        logger: TensorBoardLogger) -> tuple[float, float]:
    """(best val/acc, test/acc): the test split with the best weights by val/acc (on a tie the
    earliest), logged at the step count as Lightning's trainer.test() logs it, with the epochs
    done as its `epoch`."""
    manager.wait_until_finished()
    best_step = manager.best_step()
    test = evaluate_on(best_weights(manager, best_step, state, rng), loader, limit=limit)
    logger.log_metrics({"test/loss": test["loss"], "test/acc": test["acc"], "epoch": epochs},
                       step=int(state.step))
    best_val_acc = manager.metrics(best_step)["val/acc"] if best_step is not None else math.nan
    return best_val_acc, test["acc"]
