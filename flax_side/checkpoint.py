"""Orbax checkpoints of the flax side (and of the NNX side, which shares them), and the weights
a run may start from.

Layout: logs/<side>/<run-name>/version_N/checkpoints/<step>/ with two items,

    state/         the pytree {step, params, batch_stats, opt_state, dynamic_scale, rng}: the
                   state's checkpoint_items() and the key (params and batch_stats under linen's
                   names on both APIs; opt_state and dynamic_scale in each API's own form)
    meta/          JSON: epochs completed, that epoch's val metrics, the run's config
    metrics/       Orbax's own copy of {"val/acc", "val/loss", "step"}, which ranks checkpoints

written by ONE `ocp.CheckpointManager` at the end of every epoch (asynchronously: training goes
on while the files are written). Its preservation policy keeps the union of the last
`KEEP_LAST` checkpoints and the best one by val/acc -- on a tie the earlier one, as Lightning's
ModelCheckpoint keeps its first best -- so `manager.best_step()` is what the test set is
evaluated with, and `manager.latest_step()` is what `--resume` continues from.

A resumed run never writes into the folder it resumes from: it gets a new version folder, and
the checkpoints it resumed from (the latest and the best) are copied into the new folder's
`checkpoints/` first, so each version folder is complete on its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.experimental import multihost_utils

from common.errors import RunError, one_line
from common.runs import versions, warn_passed_over
from common.sides import TORCH_WEIGHTS
from flax_side.state import TrainState

KEEP_LAST = 3
CHECKPOINTS = "checkpoints"
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")


class CheckpointError(RunError):
    """A checkpoint or weights file that cannot be used; the message is one line naming it."""


def _rank(metrics: Mapping[str, float]) -> tuple[float, int]:
    # Higher val/acc wins; among equals the earlier step (Orbax keeps the highest key).
    return metrics["val/acc"], -metrics["step"]


def create_manager(directory: str | Path, create: bool = True) -> ocp.CheckpointManager:
    """The run's manager; with create=False, one that only reads an existing folder (it deletes
    nothing: the preservation policy runs only when it saves)."""
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=KEEP_LAST),
        ocp.checkpoint_managers.BestN(get_metric_fn=_rank, n=1),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=_rank, best_mode="max", preservation_policy=policy,
        enable_async_checkpointing=True, create=create)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                 item_names=("state", "meta"))


def _items(state: TrainState, rng: jax.Array) -> dict[str, Any]:
    return {**state.checkpoint_items(),
            # numpy: the key lives on one device of each process, which Orbax cannot save
            # with several processes; it is the same on all of them.
            "rng": np.asarray(jax.random.key_data(rng))}


def save(manager: ocp.CheckpointManager, state: TrainState, rng: jax.Array, *, epochs_done: int,
         metrics: Mapping[str, float], config: Mapping[str, Any]) -> None:
    """Starts saving `state` under its step; returns before the files are written."""
    step = int(state.step)
    meta = {"epochs_done": epochs_done, "metrics": dict(metrics), "config": dict(config)}
    items = _items(state, rng)
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(items),
                                               meta=ocp.args.JsonSave(meta)),
                 metrics={**metrics, "step": step})
    if jax.process_index() == 0:  # every process holds the same replicated weights
        export_torch_weights(manager, items, step)


def export_torch_weights(manager: ocp.CheckpointManager, items: Mapping[str, Any], step: int) -> None:
    """A torch state_dict of the weights beside each kept checkpoint, in <version>/torch_weights/.

    The Lightning side imports no JAX, so this copy is what lets its --init-from start from a
    flax checkpoint. Files of checkpoints the manager has let go are removed with them."""
    from flax_side import convert  # the one module of this side that imports torch

    exports = Path(manager.directory).parent / TORCH_WEIGHTS
    variables = jax.device_get({"params": items["params"], "batch_stats": items["batch_stats"]})
    convert.save_torch_state_dict(variables, exports / f"{step}.pt")
    kept = set(manager.all_steps()) | {step}
    for path in exports.glob("*.pt"):
        if path.stem.isdigit() and int(path.stem) not in kept:
            path.unlink()


def drop_unfinished_exports(manager: ocp.CheckpointManager) -> None:
    """Removes the torch copies of checkpoints that never completed (a full disk stopped Orbax's
    writer after the copy was made), so --init-from never takes weights --resume cannot."""
    if jax.process_index() != 0:
        return
    exports = Path(manager.directory).parent / TORCH_WEIGHTS
    manager.reload()
    complete = set(manager.all_steps())
    for path in exports.glob("*.pt"):
        if path.stem.isdigit() and int(path.stem) not in complete:
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- resuming

def candidates(resume: str, logdir: str | Path, run_name: str, side: str) -> list[tuple[Path, int]]:
    """What --resume may continue from, in order: for 'last' every complete checkpoint of the
    run, newest first (a damaged one is passed over for the next); otherwise the one named."""
    if resume != "last":
        return [find(resume, logdir, run_name)]
    found = []
    for version in reversed(versions(logdir, side, run_name)):
        directory = version / CHECKPOINTS
        if directory.is_dir():
            found += [(directory, step) for step in sorted(
                (int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir()),
                reverse=True)]
    if not found:
        find(resume, logdir, run_name, side)  # raises the one-line error
    return found


def restore_newest(choices: list[tuple[Path, int]], state: TrainState, rng: jax.Array,
                   ) -> tuple[TrainState, jax.Array, dict[str, Any], Path, int, set[int]]:
    """Restores the first of `choices` that reads back whole; says which ones it passed over, and
    returns their steps in the folder it resumes from (carry_over leaves them behind)."""
    passed, damaged = [], []
    for directory, step in choices:
        try:
            restored = restore(directory, step, state, rng)
        except CheckpointError as err:
            if len(choices) == 1:
                raise
            passed.append(f"{directory / str(step)} ({err})")
            damaged.append((directory, step))
            continue
        if passed and jax.process_index() == 0:
            warn_passed_over(passed, directory / str(step))
        return (*restored, directory, step, {s for d, s in damaged if d == directory})
    raise CheckpointError(f"--resume last: no checkpoint of the run reads back whole; the newest: {passed[0]}")


def find(resume: str, logdir: str | Path, run_name: str, side: str = "flax") -> tuple[Path, int]:
    """(checkpoints folder, step) for --resume: 'last', a checkpoints folder, a step folder
    inside one, or a version folder."""
    if resume == "last":
        for version in reversed(versions(logdir, side, run_name)):
            directory = version / CHECKPOINTS
            step = _latest_step(directory) if directory.is_dir() else None
            if step is not None:
                return directory, step
        raise CheckpointError(f"--resume last: no checkpoint of run {run_name!r} under "
                              f"{Path(logdir) / side / run_name}; check --run-name and --logdir")
    path = Path(resume)
    lightning = ("; to start from a Lightning run's weights, give it to --init-from"
                 if path.suffix == ".ckpt" or any(path.glob("checkpoints/*.ckpt")) or any(path.glob("*.ckpt"))
                 else "")
    if path.is_file():
        raise CheckpointError(f"--resume {path}: a file; the {side} side resumes from its own "
                              f"checkpoint folders (a version, checkpoints or step folder), or 'last'{lightning}")
    if not path.is_dir():
        raise CheckpointError(f"--resume {path}: no such folder; give a checkpoints folder, "
                              f"a step folder inside one, or 'last'")
    if (path / "state").is_dir():  # one step
        if not path.name.isdigit():
            raise CheckpointError(f"--resume {path}: not a checkpoint step folder (named by its step)")
        return path.parent, int(path.name)
    if (path / CHECKPOINTS).is_dir():  # a version folder
        path = path / CHECKPOINTS
    step = _latest_step(path)
    if step is None:
        raise CheckpointError(f"--resume {path}: no {side} checkpoint in this folder{lightning}")
    return path, step


def _latest_step(directory: Path) -> int | None:
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir()]
    return max(steps, default=None)


def carry_over(source: Path, step: int, destination: Path, damaged: set[int] = frozenset()) -> None:
    """Copy checkpoint `step` of `source`, and the best one there unless it is `damaged`, into a
    new run's folder, with their torch copies (export_torch_weights).

    Every process calls it (opening a manager is a collective); process 0 copies."""
    best = create_manager(source, create=False).best_step()
    if jax.process_index() == 0:
        destination.mkdir(parents=True, exist_ok=True)
        for s in {step, best} - {None} - set(damaged):
            shutil.copytree(source / str(s), destination / str(s))
            export = source.parent / TORCH_WEIGHTS / f"{s}.pt"
            if export.is_file():
                (destination.parent / TORCH_WEIGHTS).mkdir(exist_ok=True)
                shutil.copyfile(export, destination.parent / TORCH_WEIGHTS / export.name)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("checkpoints carried over")


def restore(directory: Path, step: int, state: TrainState,
            rng: jax.Array) -> tuple[TrainState, jax.Array, dict[str, Any]]:
    """Everything saved at `step`, into the structure, dtypes and shardings of `state` and `rng`."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _items(state, rng))
    try:
        restored = create_manager(directory, create=False).restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                          meta=ocp.args.JsonRestore()))
    except Exception as err:  # Orbax raises many types, with pages of text: keep one line.
        raise CheckpointError(f"cannot resume from {directory / str(step)} ({one_line(err)}): "
                              f"its files are damaged, or a run of another --model, --dataset or "
                              f"--precision wrote it") from None
    items = restored["state"]
    state = state.with_checkpoint_items(items)
    rng = jax.random.wrap_key_data(items["rng"], impl=jax.random.key_impl(rng))
    return state, rng, dict(restored["meta"])


# --------------------------------------------------------------------------- --init-from

def load_initial_weights(path: str | Path, like: Mapping[str, Any]) -> dict[str, Any]:
    """{"params", "batch_stats"} from a torch state_dict (.pt/.pth), a Lightning checkpoint
    (.ckpt) or a flax checkpoint folder, checked against and cast like `like` (fresh variables)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"--init-from {path}: no such file or folder")
    if path.is_dir():
        variables = _flax_variables(path)
    elif path.suffix in TORCH_SUFFIXES:
        from flax_side import convert  # the one module of this side that imports torch

        try:
            state_dict = convert.load_torch_state_dict(path)
        except ValueError as err:  # its message names the file
            raise CheckpointError(f"--init-from: {err}") from None
        try:
            variables = convert.torch_to_flax(state_dict)
        except KeyError as err:
            raise CheckpointError(f"--init-from {path}: not a CIFAR ResNet of this project "
                                  f"({err.args[0] if err.args else err})") from None
    else:
        raise CheckpointError(f"--init-from {path}: expected a .pt/.pth state_dict, a Lightning "
                              f".ckpt or a flax checkpoint folder")
    return _conform(variables, like, path)


def _flax_variables(path: Path) -> dict[str, Any]:
    """params and batch_stats of a checkpoint of this side, as numpy, whatever devices wrote it."""
    directory, step = find(str(path), ".", "")
    item = directory / str(step) / "state"
    try:
        saved = ocp.PyTreeCheckpointHandler().metadata(item).tree
        target = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved[k])
                  for k in ("params", "batch_stats")}
        with ocp.PyTreeCheckpointer() as checkpointer:
            return checkpointer.restore(item, args=ocp.args.PyTreeRestore(
                item=target, partial_restore=True,
                restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)))
    except Exception as err:
        raise CheckpointError(f"--init-from {item}: cannot read it ({one_line(err)})") from None


def _conform(variables: Mapping[str, Any], like: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """`variables` with exactly `like`'s names and shapes, in `like`'s dtypes."""
    got = traverse_util.flatten_dict(dict(variables), sep="/")
    want = traverse_util.flatten_dict(dict(like), sep="/")
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise CheckpointError(f"--init-from {path}: does not fit --model (missing "
                              f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                              f"{extra[:3]}{'...' if len(extra) > 3 else ''})")
    for key, value in want.items():
        if np.shape(got[key]) != value.shape:
            raise CheckpointError(f"--init-from {path}: {key} has shape {np.shape(got[key])}, "
                                  f"the model needs {value.shape} (other --model or class count?)")
    out = {key: np.asarray(got[key]).astype(value.dtype) for key, value in want.items()}
    return traverse_util.unflatten_dict(out, sep="/")
