"""The epoch loop: train, validate, log, save; on Ctrl-C, a checkpoint that --resume continues.

The scalars it writes, and the steps they are logged at, are listed in loop.py's docstring.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from lightning.fabric.loggers import TensorBoardLogger
from tqdm import tqdm

from common.config import TrainConfig
from common.errors import Interrupted, TrainingError
from common.interrupt import CtrlC
from common.runs import interrupted_message
from datamodules import ImageDataModule
from datamodules.batches import position_after
from flax_side import checkpoint
from flax_side.devices import peak_memory_mb, prefetch_to_device, without_names
from flax_side.state import TrainState
from flax_side.version_folder import VersionFolder


class StopRequest(CtrlC):
    """common.interrupt.CtrlC for the epoch loop (`with StopRequest() as stop:`), checked after
    each step: a KeyboardInterrupt between a jitted step's return and the assignment of its
    result would lose the donated state."""

    def agreed(self, at_log_step: bool) -> bool:
        """Whether to stop after this step. With several processes all must stop at the same
        step, or the others would wait forever in the next step's collectives: they agree on
        logging steps, where the host reads the metrics anyway."""
        if jax.process_count() == 1:
            return self.requested
        if not at_log_step:
            return False
        self.requested = bool(multihost_utils.process_allgather(np.int32(self.requested)).any())
        return self.requested

    def __enter__(self) -> "StopRequest":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


@dataclasses.dataclass(frozen=True)
class EpochLoop:
    """What every epoch of a run uses."""

    config: TrainConfig
    data: ImageDataModule  # it counts the images that failed to decode
    loaders: dict[str, Iterable]  # by split
    steps_per_epoch: int
    train_step_fn: Callable  # compiled_steps.compile_train_step's
    evaluate_on: Callable  # (state, loader, limit=) -> {"loss", "acc"}: evaluation.evaluate, its step bound
    folder: VersionFolder
    sharding: NamedSharding  # the batches'
    loss_scaling: bool


def train_epochs(loop: EpochLoop, state: TrainState, rng: jax.Array,
                 first_epoch: int) -> tuple[TrainState, float, int]:
    """The epochs from `first_epoch` on: the final state, and the seconds and images of their
    training loops."""
    # Where the checkpoint's step left the loader: the batch after the last one trained, as
    # Lightning restores it through the loader's load_state_dict.
    loop.loaders["train"].sampler.load_state_dict(position_after(int(state.step), loop.steps_per_epoch))
    train_seconds, train_images = 0.0, 0
    for epoch in range(first_epoch, loop.config.epochs):
        state, seconds, images = run_epoch(loop, state, rng, epoch)
        train_seconds, train_images = train_seconds + seconds, train_images + images
    return state, train_seconds, train_images


def run_epoch(loop: EpochLoop, state: TrainState, rng: jax.Array, epoch: int) -> tuple[TrainState, float, int]:
    """One epoch, trained, validated, logged and saved: the state, and the training loop's
    seconds and images."""
    # Past 0 only in the first epoch of a run resumed from a Ctrl-C checkpoint.
    first_batch = int(state.step) - epoch * loop.steps_per_epoch
    steps = loop.steps_per_epoch - first_batch
    loop.loaders["train"].sampler.set_epoch(epoch)
    # The epoch's bar stays open through validation, to end with val/loss and val/acc
    # as Lightning's does.
    with tqdm(total=steps, desc=f"epoch {epoch}", unit="step", dynamic_ncols=True,
              disable=jax.process_index() != 0) as bar:
        with StopRequest() as stop:
            state, seconds, means = train_epoch(
                loop.train_step_fn, state, loop.loaders["train"], epoch=epoch, steps=steps,
                log_every=loop.config.log_every, logger=loop.folder.logger, sharding=loop.sharding,
                check_finite=not loop.loss_scaling, manager=loop.folder.manager, stop=stop, bar=bar,
                note_bad_images=loop.data.note_bad_images)
        if stop.requested:
            raise save_ctrl_c_checkpoint(loop, state, rng, epoch)
        images = steps * loop.config.batch_size
        end_epoch(loop, state, rng, epoch, seconds, images, means, bar)
    return state, seconds, images


def train_epoch(train_step_fn: Callable, state: TrainState, loader: Iterable, *, epoch: int,
                steps: int, log_every: int, logger: TensorBoardLogger, sharding: NamedSharding,
                check_finite: bool, manager: Any, stop: "StopRequest | None" = None,
                bar: "tqdm | None" = None,
                note_bad_images: Callable = lambda bad: None) -> tuple[TrainState, float, dict[str, float]]:
    """One epoch of `steps` optimizer steps; returns the state, the loop's wall seconds, and the
    means of its batches' loss and accuracy (every batch is whole, so these are means over its images).

    Metrics stay on the device; the host reads them only on logging steps and at the end. `bar`
    is the epoch's progress bar, which the caller closes."""
    first_step = int(state.step)
    bar = bar if bar is not None else tqdm(total=steps, disable=True)
    start = time.perf_counter()
    batches = without_names(itertools.islice(loader, steps), note_bad_images)
    sums, trained = None, 0
    for i, batch in enumerate(prefetch_to_device(batches, sharding)):
        state, metrics = train_step_fn(state, batch)
        step, trained = first_step + i, i + 1
        epoch_metrics = {k: metrics[k] for k in ("loss", "acc")}
        sums = epoch_metrics if sums is None else jax.tree.map(jnp.add, sums, epoch_metrics)
        log_step = (step + 1) % log_every == 0
        if log_step:
            metrics = jax.device_get(metrics)
            if check_finite and not math.isfinite(metrics["loss"]):
                raise divergence_error("train/loss", metrics["loss"], step, manager)
            # `epoch` rides along as Lightning adds it to every logged step.
            logger.log_metrics({**{f"train/{k}": float(v) for k, v in metrics.items()}, "epoch": epoch},
                               step=step)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
        bar.update(1)
        if stop is not None and stop.agreed(at_log_step=log_step):
            break
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    means = {k: float(v) / trained for k, v in jax.device_get(sums).items()} if trained else {}
    return state, seconds, means


def end_epoch(loop: EpochLoop, state: TrainState, rng: jax.Array, epoch: int, seconds: float,
              images: int, train_means: dict[str, float], bar: tqdm) -> None:
    """Validation, the epoch's scalars at its last step (train/*_epoch: the means of the batches
    trained in this process, as Lightning's on_epoch=True), and its checkpoint."""
    config, folder = loop.config, loop.folder
    step = int(state.step) - 1
    val = loop.evaluate_on(state, loop.loaders["val"], limit=config.limit_val_batches)
    bar.set_postfix_str(", ".join(filter(None, (getattr(bar, "postfix", None), f"val/loss={val['loss']:.4f}",
                                                 f"val/acc={val['acc']:.4f}"))))
    folder.logger.log_metrics({**{f"train/{k}_epoch": v for k, v in train_means.items()},
                               "val/loss": val["loss"], "val/acc": val["acc"], "epoch": epoch,
                               "perf/epoch_seconds": seconds,
                               "perf/train_images_per_sec": images / seconds if seconds else math.nan,
                               "perf/peak_memory_mb": peak_memory_mb(),
                               "data/bad_images": len(loop.data.bad_images)}, step=step)
    if not loop.loss_scaling and not math.isfinite(val["loss"]):
        raise divergence_error("val/loss", val["loss"], step, folder.manager)
    folder.check_disk()
    checkpoint.save(folder.manager, state, rng, epochs_done=epoch + 1,
                    metrics={"val/acc": val["acc"], "val/loss": val["loss"]}, config=config.to_dict())


def save_ctrl_c_checkpoint(loop: EpochLoop, state: TrainState, rng: jax.Array, epoch: int) -> Interrupted:
    """Saves a mid-epoch checkpoint, never the best (val/acc -1), that --resume continues with
    the epoch's next batch; returns the error that ends the run and says how to go on."""
    manager = loop.folder.manager
    checkpoint.save(manager, state, rng, epochs_done=epoch, metrics={"val/acc": -1.0, "val/loss": -1.0},
                    config=loop.config.to_dict())
    manager.wait_until_finished()
    return Interrupted(interrupted_message(int(state.step), manager.directory / str(int(state.step)),
                                           loop.config.run_name))


def divergence_error(tag: str, value: float, step: int, manager: Any) -> TrainingError:
    """The one-line error of a non-finite loss, naming the last good checkpoint (once its save
    has finished)."""
    manager.wait_until_finished()
    kept = (f"the last good checkpoint is {manager.directory / str(manager.latest_step())}"
            if manager.latest_step() is not None else "no checkpoint had been written yet")
    return TrainingError(f"{tag} is {value} at step {step}: training diverged and stopped; "
                         f"{kept} (try a lower --lr)")
