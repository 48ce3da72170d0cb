"""A diverging fp32 run stops with one line on both sides and keeps its last good checkpoint."""

import re
from pathlib import Path

import pytest

from tests.helpers.sides import DRIVERS
from tests.helpers.in_process import run_main
from tests.helpers.reference import REFERENCE_ARGV
from tests.helpers.tb import first_step, scalars

# The reference run's flags (tests/helpers/reference.py: 2 epochs of 3 steps, checkpoint at step 3), with
# the classifier's bias set to NaN as an epoch starts: the first epoch (nothing saved yet) or the
# second (after step 3's checkpoint). The loss is NaN from that epoch's first step on, on both
# sides alike, and the flax steps are the reference run's, which the session has compiled (a
# diverging LR schedule would compile steps of its own). A real --lr 1e8 in train.py processes:
# tests/test_several_devices.py, on every rank.
ARGV = [*REFERENCE_ARGV, "--num-workers", "0"]


def poison_the_classifier(side: str, monkeypatch, epoch: int) -> list:
    """The classifier's bias made NaN when `epoch` starts, in the next run of `side` in this
    process: the Lightning callbacks that do it, or none where the flax loop is patched
    (monkeypatch.undo() gives back the plain run)."""
    if side == "lightning":
        import lightning as L
        import torch

        class PoisonTheClassifier(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                if trainer.current_epoch == epoch:
                    with torch.no_grad():
                        pl_module.model.fc.bias.fill_(float("nan"))

        return [PoisonTheClassifier()]
    import jax.numpy as jnp

    from flax_side import epochs

    real_train_epoch = epochs.train_epoch

    def poisoned_train_epoch(p_train_step, state, *args, **kwargs):
        if kwargs["epoch"] == epoch:
            fc = {**state.params["fc"], "bias": state.params["fc"]["bias"] * jnp.nan}
            state = state.replace(params={**state.params, "fc": fc})
        return real_train_epoch(p_train_step, state, *args, **kwargs)

    monkeypatch.setattr(epochs, "train_epoch", poisoned_train_epoch)
    return []


def divergence_error(done) -> str:
    """The one error line a diverged run ends with (exit 2, as for bad input), without its "error: "."""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return errors[0][len("error: "):]


@pytest.mark.parametrize("side", DRIVERS)
def test_divergence_before_any_checkpoint_says_so_and_saves_nothing(tmp_path, side, monkeypatch):
    done = run_main(side, [*ARGV, "--logdir", str(tmp_path)], callbacks=poison_the_classifier(side, monkeypatch, 0))
    message = divergence_error(done)
    assert "\n" not in message and message.startswith("train/loss is nan at step 0: training diverged"), message
    assert "no checkpoint had been written yet" in message and "--lr" in message
    checkpoints = tmp_path / side / "reference" / "version_0" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())


@pytest.mark.parametrize("side", DRIVERS)
def test_divergence_after_a_good_checkpoint_names_it_saves_nothing_more_and_resumes(tmp_path, side,
                                                                                     monkeypatch):
    argv = [*ARGV, "--logdir", str(tmp_path)]
    version = tmp_path / side / "reference" / "version_0"
    message = divergence_error(run_main(side, argv, callbacks=poison_the_classifier(side, monkeypatch, 1)))
    assert "\n" not in message and message.startswith("train/loss is nan at step 3: training diverged"), message
    named = Path(re.search(r"last good checkpoint is (\S+)", message).group(1))
    # It names the checkpoint of step 3, and nothing was saved after the divergence.
    checkpoints = version / "checkpoints"
    if side == "lightning":
        from lightning_side.resume import check_resumable

        check_resumable(named)
        assert named.resolve().name == "epoch000-step3.ckpt", named
        assert sorted(p.name for p in checkpoints.iterdir()) == [
            "best-epoch000-step3.ckpt", "epoch000-step3.ckpt", "last.ckpt"]
    else:
        assert named == checkpoints / "3"
        assert sorted(p.name for p in checkpoints.iterdir()) == ["3"]
        assert sorted(p.name for p in (version / "torch_weights").iterdir()) == ["3.pt"]
    assert max(step for step, _ in scalars(version)["val/acc"]) < 3  # nothing logged after it
    monkeypatch.undo()
    done = run_main(side, argv + ["--resume", "last"])  # unpoisoned: it goes on from step 3 to the end
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = version.parent / "version_1"
    assert first_step(resumed) == 3 and [s for s, _ in scalars(resumed)["test/acc"]] == [6]
