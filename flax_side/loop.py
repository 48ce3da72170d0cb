"""The flax side's driver, `train_and_evaluate(config) -> TrainState`, in reading order.

    data -> model and state (fresh, --init-from or --resume) -> logger and checkpoints
    -> jitted steps, compiled before the clock starts -> epochs of (train, validate, log, save)
    -> test with the best weights -> summary line

Data parallelism is `jax.sharding`: a 1-D mesh over the first --devices local devices, every
batch split along it, the state replicated; under jit, BatchNorm statistics and gradients are
over the global batch, so the numbers do not depend on the device count.

TensorBoard, against the global step s (0-based; `state.step` counts batches, see steps.py):
train/loss, train/acc (that batch), train/lr (the LR that batch's update used) and, under
16-mixed, train/loss_scale at every s with (s + 1) % --log-every == 0; at the end of each epoch,
at s = steps done - 1: val/loss, val/acc (exact means over the validation set), epoch,
perf/epoch_seconds (the training loop only), perf/train_images_per_sec and perf/peak_memory_mb;
at the end, at s = steps done (as Lightning's trainer.test()), test/loss and test/acc of the best
checkpoint by val/acc. `epoch` rides along with every logged step, as Lightning writes it.
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
import sys
import operator
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from lightning.fabric.loggers import TensorBoardLogger
from lightning.fabric.utilities.rank_zero import rank_zero_only
from tqdm import tqdm

from datamodules import ImageDataModule
from flax_side import checkpoint
from flax_side.compiler_options import step_compiler_options
from flax_side.models import create_model
from flax_side.schedules import create_schedule, optimizer_steps_per_epoch
from flax_side.state import TrainState, create_train_state, initial_variables
from flax_side.steps import eval_step, train_step
from harness import disk_faults
from harness.config import TrainConfig, save_yaml
from harness.interrupt import CtrlC
from harness.runs import host_peak_memory_mb, summary_line


class TrainingError(Exception):
    """A run that cannot go on (too few devices, a diverged loss); the message is one line."""


class Interrupted(Exception):
    """Ctrl-C: the run stopped after writing a checkpoint; the message says how to go on."""


class StopRequest(CtrlC):
    """harness.interrupt.CtrlC for the epoch loop (`with StopRequest() as stop:`), checked after
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


# precision -> (compute dtype, parameter dtype, loss scaling)
PRECISIONS: dict[str, tuple[Any, Any, bool]] = {
    "32": (jnp.float32, jnp.float32, False),
    "64-true": (jnp.float64, jnp.float64, False),
    "16-mixed": (jnp.float16, jnp.float32, True),
    "bf16-mixed": (jnp.bfloat16, jnp.float32, False),
}


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "16-mixed" if jax.default_backend() == "gpu" else "32"
    return precision


def create_mesh(num_devices: int) -> Mesh:
    """A 1-D mesh over the first `num_devices` local devices of every process, process 0's first:
    the rows of a global batch follow that order, so process p holds the DataModule's shard p."""
    local = jax.local_devices()
    if len(local) < num_devices:
        raise TrainingError(f"--devices {num_devices}: only {len(local)} {local[0].platform} "
                            f"device(s) here; lower --devices")
    devices = [d for p in range(jax.process_count())
               for d in sorted((d for d in jax.devices() if d.process_index == p),
                               key=lambda d: d.id)[:num_devices]]
    return Mesh(np.array(devices), ("data",))


def global_batch(local: Any, sharding: NamedSharding) -> Any:
    """One global array per leaf from this process's rows of it (all of them in one process)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def prefetch_to_device(batches: Iterable, sharding: NamedSharding, size: int = 2) -> Iterator:
    """The batches as global device arrays, `size` of them on their way to the devices ahead of
    the step that uses them (flax's prefetch_to_device, for jax.sharding rather than pmap)."""
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append(global_batch(batch, sharding))
        if len(queue) == size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def train_and_evaluate(config: TrainConfig) -> TrainState:
    wall_start = time.perf_counter()
    precision = resolve_precision(config.precision)
    if precision == "64-true":
        jax.config.update("jax_enable_x64", True)  # before any array exists
    compute_dtype, param_dtype, loss_scaling = PRECISIONS[precision]
    input_dtype = jnp.promote_types(param_dtype, jnp.float32)  # normalisation: float32 or float64
    if config.resume and config.init_from:
        raise TrainingError("--resume continues a run with its own weights; drop --init-from")

    mesh = create_mesh(config.devices)
    processes, process = jax.process_count(), jax.process_index()
    lead = process == 0  # the one process that writes TensorBoard, hparams.yaml and prints
    rank_zero_only.rank = process  # the logger's own switch: it writes on rank 0 only
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    # Data: the shared DataModule, uint8 NHWC batches that depend only on (seed, epoch, index).
    data = ImageDataModule(dataset=config.dataset, data_dir=config.data_dir,
                           batch_size=config.batch_size, num_workers=config.num_workers,
                           seed=config.seed, image_size=config.image_size)
    data.prepare_data()
    data.setup()
    if processes > 1:
        data.shard(process, processes)  # each process loads its rows of every global batch
    loaders = {split: data.numpy_dataloader(split) for split in ("train", "val", "test")}
    steps_per_epoch = optimizer_steps_per_epoch(config, data.steps_per_epoch)
    schedule = create_schedule(config, steps_per_epoch)
    image_shape = data.image_shape

    # Model and state: fresh from --seed, or --init-from weights, or everything from --resume.
    model = create_model(config.model, data.num_classes, dtype=compute_dtype, param_dtype=param_dtype,
                         zero_init_residual=config.zero_init_residual)
    rng, init_rng = jax.random.split(jax.random.key(config.seed))
    init = functools.partial(initial_variables, model, image_shape=image_shape)
    make_state = functools.partial(create_train_state, model, schedule=schedule,
                                   momentum=config.momentum, nesterov=config.nesterov,
                                   weight_decay=config.weight_decay, loss_scaling=loss_scaling)
    first_epoch = 0
    if config.resume:
        choices = checkpoint.candidates(config.resume, config.logdir, config.run_name)
        # Shapes, dtypes and shardings only: every value comes from the checkpoint.
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                              jax.eval_shape(lambda r: make_state(init(r)), init_rng))
        state, rng, meta, source, source_step, damaged = checkpoint.restore_newest(choices, target, rng)
        first_epoch = meta["epochs_done"]
    else:
        if config.init_from:
            variables = checkpoint.load_initial_weights(config.init_from, jax.eval_shape(init, init_rng))
        else:
            variables = init(init_rng)
        state = jax.device_put(make_state(variables), replicated)

    # Logger and checkpoints: a new version folder every run, resumed runs included.
    # With several processes, process 0 picks the version and tells the others.
    logger = TensorBoardLogger(root_dir=Path(config.logdir) / "flax", name=config.run_name,
                               default_hp_metric=False)
    if processes > 1:
        version = multihost_utils.broadcast_one_to_all(np.int32(logger.version if lead else 0))
        logger = TensorBoardLogger(root_dir=Path(config.logdir) / "flax", name=config.run_name,
                                   version=int(version), default_hp_metric=False)
    version_dir = Path(logger.log_dir)
    logger.log_hyperparams(config.to_dict())
    if lead:
        version_dir.mkdir(parents=True, exist_ok=True)  # the logger makes it lazily
        save_yaml(config, version_dir / "hparams.yaml")  # rerun it with --config
        run_folder = disk_faults.RunFolder(version_dir)
    if config.resume:
        checkpoint.carry_over(source, source_step, version_dir / checkpoint.CHECKPOINTS, damaged)
    manager = checkpoint.create_manager(version_dir / checkpoint.CHECKPOINTS)

    # Steps: static arguments bound, jitted, and compiled now, so no epoch's clock counts compiling.
    static = dict(mean=data.mean, std=data.std, input_dtype=input_dtype,
                  label_smoothing=config.label_smoothing)
    images_spec = jax.ShapeDtypeStruct((config.batch_size, *image_shape), jnp.uint8, sharding=batch_sharding)
    labels_spec = jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=batch_sharding)
    mask_spec = jax.ShapeDtypeStruct((config.batch_size,), jnp.bool_, sharding=batch_sharding)
    options = step_compiler_options(config.model)  # CPU, CIFAR ResNets: no fusion pass (compiler_options.py)
    p_train_step = jax.jit(functools.partial(train_step, schedule=schedule, **static),
                           donate_argnums=0, out_shardings=replicated, compiler_options=options
                           ).lower(state, (images_spec, labels_spec)).compile()
    p_eval_step = jax.jit(functools.partial(eval_step, **static), out_shardings=replicated,
                          compiler_options=options
                          ).lower(state, (images_spec, labels_spec), mask_spec).compile()
    evaluate_on = functools.partial(evaluate, p_eval_step, batch_size=config.batch_size // processes,
                                    sharding=batch_sharding, note_bad_images=data.note_bad_images)

    train_seconds, train_images = 0.0, 0
    status = "failed"
    try:
        for epoch in range(first_epoch, config.epochs):
            # Past 0 only in the first epoch of a run resumed from a Ctrl-C checkpoint.
            first_batch = int(state.step) - epoch * steps_per_epoch
            loaders["train"].sampler.set_epoch(epoch, first_batch)
            # The epoch's bar stays open through validation, to end with val/loss and val/acc
            # as Lightning's does.
            with tqdm(total=steps_per_epoch - first_batch, desc=f"epoch {epoch}", unit="step",
                      dynamic_ncols=True, disable=not lead) as bar:
                with StopRequest() as stop:
                    state, seconds = train_epoch(
                        p_train_step, state, loaders["train"], epoch=epoch,
                        steps=steps_per_epoch - first_batch, log_every=config.log_every, logger=logger,
                        sharding=batch_sharding, check_finite=not loss_scaling, manager=manager, stop=stop,
                        bar=bar, note_bad_images=data.note_bad_images)
                if stop.requested:
                    # A mid-epoch checkpoint, never the best (val/acc -1), that --resume continues
                    # with the epoch's next batch.
                    checkpoint.save(manager, state, rng, epochs_done=epoch,
                                    metrics={"val/acc": -1.0, "val/loss": -1.0}, config=config.to_dict())
                    manager.wait_until_finished()
                    raise Interrupted(f"interrupted at step {int(state.step)}; the checkpoint is "
                                      f"{manager.directory / str(int(state.step))}; continue with "
                                      f"--resume last --run-name {config.run_name}")
                step = int(state.step) - 1
                val = evaluate_on(state, loaders["val"], limit=config.limit_val_batches)
                bar.set_postfix_str(", ".join(filter(None, (getattr(bar, "postfix", None), f"val/loss={val['loss']:.4f}",
                                                             f"val/acc={val['acc']:.4f}"))))
                images = (steps_per_epoch - first_batch) * config.batch_size
                train_seconds, train_images = train_seconds + seconds, train_images + images
                logger.log_metrics({"val/loss": val["loss"], "val/acc": val["acc"], "epoch": epoch,
                                    "perf/epoch_seconds": seconds,
                                    "perf/train_images_per_sec": images / seconds if seconds else math.nan,
                                    "perf/peak_memory_mb": peak_memory_mb(),
                                    "data/bad_images": len(data.bad_images)}, step=step)
                if not loss_scaling and not math.isfinite(val["loss"]):
                    raise diverged("val/loss", val["loss"], step, manager)
                if lead:  # a vanished run folder: stop, rather than save into a new one
                    run_folder.check()
                checkpoint.save(manager, state, rng, epochs_done=epoch + 1,
                                metrics={"val/acc": val["acc"], "val/loss": val["loss"]},
                                config=config.to_dict())

        # Test with the best weights by val/acc (on a tie the earliest), logged at the step count
        # as Lightning's trainer.test() logs it, with the epochs done as its `epoch`.
        manager.wait_until_finished()
        best_step = manager.best_step()
        best_state = state
        if best_step is not None and best_step != int(state.step):
            try:
                best_state, _, _ = checkpoint.restore(manager.directory, best_step, state, rng)
            except checkpoint.CheckpointError as err:
                if lead:
                    print(f"warning: the best checkpoint cannot be read ({err}); the test split is "
                          f"evaluated with the final weights, of step {int(state.step)}", file=sys.stderr, flush=True)
        test = evaluate_on(best_state, loaders["test"], limit=config.limit_test_batches)
        logger.log_metrics({"test/loss": test["loss"], "test/acc": test["acc"], "epoch": config.epochs},
                           step=int(state.step))
        best_val_acc = manager.metrics(best_step)["val/acc"] if best_step is not None else math.nan
        status = "success"
    finally:
        try:
            manager.wait_until_finished()  # raises here if the disk filled while it wrote
        finally:
            checkpoint.drop_unfinished_exports(manager)
            manager.close()
            logger.finalize(status)

    if lead:
        print(summary_line("flax", best_val_acc, test["acc"],
                           train_images / train_seconds if train_seconds else 0.0,
                           time.perf_counter() - wall_start, version_dir), flush=True)
    return state


def peak_memory_mb() -> float:
    """Peak memory of the training device: XLA's allocator on a GPU, the process's RSS on a CPU."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return host_peak_memory_mb()


def train_epoch(p_train_step: Callable, state: TrainState, loader: Iterable, *, epoch: int,
                steps: int, log_every: int, logger: TensorBoardLogger, sharding: NamedSharding,
                check_finite: bool, manager: Any, stop: "StopRequest | None" = None,
                bar: "tqdm | None" = None,
                note_bad_images: Callable = lambda bad: None) -> tuple[TrainState, float]:
    """One epoch of `steps` optimizer steps; returns the state and the loop's wall seconds.

    Metrics stay on the device; the host reads them only on logging steps. `bar` is the epoch's
    progress bar, which the caller closes."""
    first_step = int(state.step)
    bar = bar if bar is not None else tqdm(total=steps, disable=True)
    start = time.perf_counter()
    batches = without_names(itertools.islice(loader, steps), note_bad_images)
    for i, batch in enumerate(prefetch_to_device(batches, sharding)):
        state, metrics = p_train_step(state, batch)
        step = first_step + i
        log_step = (step + 1) % log_every == 0
        if log_step:
            metrics = jax.device_get(metrics)
            if check_finite and not math.isfinite(metrics["loss"]):
                raise diverged("train/loss", metrics["loss"], step, manager)
            # `epoch` rides along as Lightning adds it to every logged step.
            logger.log_metrics({**{f"train/{k}": float(v) for k, v in metrics.items()}, "epoch": epoch},
                               step=step)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
        bar.update(1)
        if stop is not None and stop.agreed(at_log_step=log_step):
            break
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    return state, seconds


def without_names(batches: Iterable, note_bad_images: Callable) -> Iterator:
    """(images, labels) of each loader batch; its third item, the names of images that failed to
    decode and were replaced, goes to the DataModule (which counts and names them)."""
    for images, labels, bad in batches:
        note_bad_images(bad)
        yield images, labels


def evaluate(p_eval_step: Callable, state: TrainState, loader: Iterable, *, limit: int | None,
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
        sums = p_eval_step(state, global_batch((images, labels), sharding), global_batch(mask, sharding))
        totals = sums if totals is None else jax.tree.map(operator.add, totals, sums)
    totals = jax.device_get(totals)
    count = int(totals["count"])
    return {"loss": float(totals["loss_sum"]) / count, "acc": int(totals["correct"]) / count}


def diverged(tag: str, value: float, step: int, manager: Any) -> TrainingError:
    manager.wait_until_finished()
    kept = (f"the last good checkpoint is {manager.directory / str(manager.latest_step())}"
            if manager.latest_step() is not None else "no checkpoint had been written yet")
    return TrainingError(f"{tag} is {value} at step {step}: training diverged and stopped; "
                         f"{kept} (try a lower --lr)")
