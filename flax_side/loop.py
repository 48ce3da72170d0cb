"""The flax side's driver, `train_and_evaluate(config, api) -> state`, in reading order: linen's
API by default, NNX's (nnx_side/api.py) for the NNX side; flax_side/api.py says what differs.

    precision -> devices -> data -> model and state (fresh, --init-from or --resume)
    -> version folder: logger, hparams.yaml, checkpoints -> steps, compiled before the clock starts
    -> epochs of (train, validate, log, save) -> test with the best weights -> summary line

Each step is a function of a sibling module: precision.py, devices.py (the mesh and the batches
on it), common/data.py (the shared DataModule), version_folder.py, compiled_steps.py, epochs.py
(the epoch loop and Ctrl-C), evaluation.py.

TensorBoard, against the global step s (0-based; `state.step` counts batches, see steps.py):
train/loss, train/acc (that batch), train/lr (the LR that batch's update used) and, under
16-mixed, train/loss_scale at every s with (s + 1) % --log-every == 0; at the end of each epoch,
at s = steps done - 1: val/loss, val/acc (exact means over the validation set), epoch,
perf/epoch_seconds (the training loop only), perf/train_images_per_sec and perf/peak_memory_mb;
at the end, at s = steps done (as Lightning's trainer.test()), test/loss and test/acc of the best
checkpoint by val/acc. `epoch` rides along with every logged step, as Lightning writes it.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import jax
from jax.sharding import Mesh

from common.config import TrainConfig
from common.data import create_datamodule
from common.errors import TrainingError
from common.runs import summary_line
from datamodules import ImageDataModule
from flax_side import checkpoint
from flax_side.api import LINEN, FlaxApi
from flax_side.compiled_steps import StepSpec, compile_eval_step, compile_train_step
from flax_side.devices import batch_sharding, create_loaders, create_mesh, replicated
from flax_side.epochs import EpochLoop, train_epochs
from flax_side.evaluation import evaluate, evaluate_test_split
from flax_side.precision import Precision, setup_precision
from flax_side.schedules import create_schedule, optimizer_steps_per_epoch
from flax_side.version_folder import CarryOver, lead_process, open_version_folder


def train_and_evaluate(config: TrainConfig, api: FlaxApi = LINEN) -> Any:
    """The run, step by step as the module's docstring lists them, with `api`'s state and steps
    (linen's; nnx_side/loop.py passes NNX's); returns the final state."""
    wall_start = time.perf_counter()
    precision = setup_precision(config)
    if config.resume and config.init_from:
        raise TrainingError("--resume continues a run with its own weights; drop --init-from")
    mesh = create_mesh(config.devices)
    lead = lead_process()
    # Data: the shared DataModule, uint8 NHWC batches that depend only on (seed, epoch, index).
    data = create_datamodule(config)
    loaders = create_loaders(data)
    steps_per_epoch = optimizer_steps_per_epoch(config, data.steps_per_epoch)
    schedule = create_schedule(config, steps_per_epoch)
    new_state = functools.partial(api.new_state, config, data.num_classes, data.image_shape, precision, schedule)
    state, rng, first_epoch, carry_over = create_state(config, api.side, new_state, mesh)
    folder = open_version_folder(config, api.side, carry_over)
    spec = step_spec(config, data, precision)
    train_step_fn = compile_train_step(state, schedule, spec, mesh, step=api.train_step)
    evaluate_on = evaluator(compile_eval_step(state, spec, mesh, step=api.eval_step), config, data, mesh)
    epoch_loop = EpochLoop(config=config, data=data, loaders=loaders, steps_per_epoch=steps_per_epoch,
                           train_step_fn=train_step_fn, evaluate_on=evaluate_on, folder=folder,
                           sharding=batch_sharding(mesh), loss_scaling=precision.loss_scaling)
    with folder:  # closed however the run ends (version_folder.py)
        state, train_seconds, train_images = train_epochs(epoch_loop, state, rng, first_epoch)
        best_val_acc, test_acc = evaluate_test_split(
            evaluate_on, state, rng, loaders["test"], limit=config.limit_test_batches, epochs=config.epochs,
            manager=folder.manager, logger=folder.logger)
    if lead:
        print(summary_line(api.side, best_val_acc, test_acc, train_images / train_seconds if train_seconds else 0.0,
                           time.perf_counter() - wall_start, folder.path), flush=True)
    return state


# --------------------------------------------------------------------------- the state

def create_state(config: TrainConfig, side: str, new_state: Callable, mesh: Mesh
                 ) -> tuple[Any, jax.Array, int, CarryOver | None]:
    """(state, RNG, first epoch, what to carry over): fresh from --seed, or --init-from weights,
    or everything from --resume. `new_state(rng, variables=None)` is the API's; the state is
    replicated over the mesh."""
    rng, init_rng = jax.random.split(jax.random.key(config.seed))
    if config.resume:
        # Shapes, dtypes and shardings only: every value comes from the checkpoint.
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)),
                              jax.eval_shape(new_state, init_rng))
        return restore_state(config, side, target, rng)
    variables = None
    if config.init_from:
        items = jax.eval_shape(lambda r: new_state(r).checkpoint_items(), init_rng)
        variables = checkpoint.load_initial_weights(
            config.init_from, {key: items[key] for key in ("params", "batch_stats")})
    return jax.device_put(new_state(init_rng, variables), replicated(mesh)), rng, 0, None


def restore_state(config: TrainConfig, side: str, target: Any,
                  rng: jax.Array) -> tuple[Any, jax.Array, int, CarryOver]:
    """--resume: the newest of its checkpoints that reads back whole, into `target`'s structure."""
    choices = checkpoint.candidates(config.resume, config.logdir, config.run_name, side)
    state, rng, meta, source, source_step, damaged = checkpoint.restore_newest(choices, target, rng)
    return state, rng, meta["epochs_done"], CarryOver(source, source_step, damaged)


# --------------------------------------------------------------------------- the steps

def step_spec(config: TrainConfig, data: ImageDataModule, precision: Precision) -> StepSpec:
    """What the steps are compiled for: the flags' global batch, the data's images and statistics."""
    return StepSpec(model=config.model, batch_size=config.batch_size, image_shape=data.image_shape,
                    mean=data.mean, std=data.std, input_dtype=precision.input_dtype,
                    label_smoothing=config.label_smoothing)


def evaluator(eval_step_fn: Callable, config: TrainConfig, data: ImageDataModule, mesh: Mesh) -> Callable:
    """evaluate(state, loader, limit=) with the compiled eval step and this process's rows bound."""
    return functools.partial(evaluate, eval_step_fn, batch_size=config.batch_size // jax.process_count(),
                             sharding=batch_sharding(mesh), note_bad_images=data.note_bad_images)
