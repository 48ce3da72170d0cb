"""Each side's checkpoints read back in one form: which is the newest, and what a checkpoint
holds, flattened to {name: numpy array}, so that a test parametrized by side compares them alike.

Lightning: <version>/checkpoints/*.ckpt (last.ckpt links to the newest). Flax: Orbax step folders,
<version>/checkpoints/<step>/state (flax_side/checkpoint.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def newest_step(side: str, version: Path) -> int:
    """The step of the newest complete checkpoint in a version folder: what --resume last takes."""
    if side == "lightning":
        import torch

        from lightning_side.resume import _newest_first, check_resumable
        from lightning_side.weights import WeightsError

        for path in _newest_first(version / "checkpoints"):
            try:
                check_resumable(path)
            except WeightsError:
                continue
            return torch.load(path, map_location="cpu", weights_only=True)["global_step"]
        raise AssertionError(f"no complete checkpoint in {version}")
    return max(int(p.name) for p in (version / "checkpoints").iterdir()
               if p.name.isdigit() and (p / "state").is_dir())  # Orbax renames it in when complete


def flat(tree) -> dict[str, np.ndarray]:
    """A pytree (a flax variable tree, a whole saved state) as {"params/conv1/kernel": array, ...}."""
    import jax

    def name(path) -> str:
        return "/".join(str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))) for key in path)

    return {name(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def saved_state(side: str, version: Path) -> dict[str, np.ndarray]:
    """What the version's last checkpoint holds to resume from: Lightning's module state_dict
    (weights and BatchNorm buffers) of last.ckpt; on the flax side everything of the newest step
    (step, params, batch_stats, opt_state, dynamic_scale, rng)."""
    if side == "lightning":
        import torch

        ckpt = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        return {key: value.numpy() for key, value in ckpt["state_dict"].items()}
    import jax
    import orbax.checkpoint as ocp

    item = version / "checkpoints" / str(newest_step(side, version)) / "state"
    tree = ocp.PyTreeCheckpointHandler().metadata(item).tree
    with ocp.PyTreeCheckpointer() as checkpointer:
        return flat(checkpointer.restore(item, args=ocp.args.PyTreeRestore(
            restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))))


def model_weights(side: str, checkpoint: Path) -> dict[str, np.ndarray]:
    """The model's variables in one checkpoint (a Lightning .ckpt, a flax step folder): torch's
    state_dict names on the Lightning side, params/... and batch_stats/... on the flax side."""
    if side == "lightning":
        import torch

        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        return {key[len("model."):]: value.numpy() for key, value in state.items() if key.startswith("model.")}
    from flax_side.checkpoint import _flax_variables

    return flat(_flax_variables(checkpoint))


def assert_saved_alike(side: str, expected: Path, got: Path) -> dict[str, np.ndarray]:
    """That two version folders' last checkpoints hold the same, bit for bit (saved_state); returns got's."""
    want, have = saved_state(side, expected), saved_state(side, got)
    assert want.keys() == have.keys()
    for key in want:
        assert np.array_equal(want[key], have[key]), key
    return have
