"""16-mixed with overflow forced on both sides: the skipped steps are counted, leave the weights
and the optimizer state as they were, and are the same steps on both sides."""

import jax
import numpy as np
import pytest
import torch

from common.config import parse_config
from lightning_side.models import create_model
from harness.lockstep import final_weights
from tests.helpers.tb import scalars

STEPS = 3
# Overflows float16 gradients for certain: every step of the run is skipped, the scale halving each
# time, on both sides. GradScaler's and DynamicScale's own 2**16 may or may not overflow.
FORCED_SCALE = 2.0 ** 40


def test_both_sides_start_from_the_same_loss_scale():
    """torch's GradScaler default, 2**16, on both sides; the run below shows that each side's
    16-mixed run starts from its constant (patched there) and logs it as train/loss_scale."""
    from flax_side import state as flax_state
    from lightning_side import train as lightning_train

    assert lightning_train.INITIAL_LOSS_SCALE == flax_state.INITIAL_LOSS_SCALE == 2.0 ** 16


@pytest.mark.slow  # float16 on a CPU is slow (docs/testing.md)
def test_forced_overflow_skips_the_same_steps_and_changes_no_weight(tmp_path, monkeypatch):
    from flax_side import state as flax_state
    from flax_side.loop import train_and_evaluate
    from lightning_side import train as lightning_train

    monkeypatch.setattr(lightning_train, "INITIAL_LOSS_SCALE", FORCED_SCALE)
    monkeypatch.setattr(flax_state, "INITIAL_LOSS_SCALE", FORCED_SCALE)
    torch.manual_seed(0)
    start = create_model("resnet20", num_classes=10).state_dict()
    torch.save(start, tmp_path / "start.pt")  # one start for both sides: the same gradients
    argv = ["--dataset", "digits", "--epochs", "1", "--limit-train-batches", str(STEPS), "--batch-size", "8",
            "--limit-val-batches", "1", "--limit-test-batches", "1", "--log-every", "1", "--precision", "16-mixed",
            "--init-from", str(tmp_path / "start.pt"), "--logdir", str(tmp_path)]
    lightning_train.train(parse_config("lightning", argv))
    train_and_evaluate(parse_config("flax", argv))

    logged, weights = {}, {}
    for side in ("lightning", "flax"):
        version = tmp_path / side / "resnet20-digits" / "version_0"
        logged[side] = scalars(version)
        weights[side] = final_weights(side, version)
        skipped = [v for _, v in logged[side]["train/skipped_steps"]]
        scale = [v for _, v in logged[side]["train/loss_scale"]]
        assert skipped == [1, 2, 3], (side, skipped)  # every step skipped, and counted
        assert scale == [FORCED_SCALE / 2 ** k for k in range(STEPS)], (side, scale)
        # The skipped updates changed no weight (BatchNorm's running statistics are not weights).
        for name, value in start.items():
            if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                np.testing.assert_array_equal(weights[side][name], value.double().numpy(), err_msg=(side, name))
    assert logged["lightning"]["train/skipped_steps"] == logged["flax"]["train/skipped_steps"]

    # ... nor the optimizer state: no momentum yet on either side.
    ckpt = torch.load(tmp_path / "lightning" / "resnet20-digits" / "version_0" / "checkpoints" / "last.ckpt",
                      map_location="cpu", weights_only=True)
    assert all(not s or not torch.any(s["momentum_buffer"]) for s in ckpt["optimizer_states"][0]["state"].values())
    from flax_side.checkpoint import create_manager

    checkpoints = tmp_path / "flax" / "resnet20-digits" / "version_0" / "checkpoints"
    import orbax.checkpoint as ocp

    restored = create_manager(checkpoints, create=False).restore(
        STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    trace = restored["state"]["opt_state"]
    floats = [np.asarray(leaf) for leaf in jax.tree.leaves(trace) if np.asarray(leaf).dtype.kind == "f"]
    assert floats and not any(np.any(leaf) for leaf in floats)
    assert int(restored["state"]["step"]) == STEPS
