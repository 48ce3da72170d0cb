"""A diverging fp32 run stops with one line on both sides and keeps its last good checkpoint."""

import re
from pathlib import Path

import pytest

from tests.helpers.reference import REFERENCE_ARGV


# The reference run's flags (tests/helpers/reference.py: 2 epochs of 3 steps, checkpoint at step 3), with
# the classifier's bias set to NaN as an epoch starts: the first epoch (nothing saved yet) or the
# second (after step 3's checkpoint). The loss is NaN from that epoch's first step on, on both
# sides alike, and the flax steps are the reference run's, which the session has compiled (a
# diverging LR schedule would compile steps of its own). A real --lr 1e8 in train.py processes:
# tests/test_distributed.py, on every rank.


def poisoned_run(side: str, monkeypatch, epoch: int):
    """A function argv -> None that trains `side` in this process with the classifier's bias
    made NaN when `epoch` starts; monkeypatch.undo() gives back the plain run."""
    from common.config import parse_config

    if side == "lightning":
        import lightning as L
        import torch

        from lightning_side import train as lightning_train

        class PoisonTheClassifier(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                if trainer.current_epoch == epoch:
                    with torch.no_grad():
                        pl_module.model.fc.bias.fill_(float("nan"))

        real_train = lightning_train.train
        monkeypatch.setattr(lightning_train, "train", lambda config: real_train(config, callbacks=[PoisonTheClassifier()]))
        return lambda argv: lightning_train.train(parse_config("lightning", argv))
    import jax.numpy as jnp

    from flax_side import epochs, loop

    real_train_epoch = epochs.train_epoch

    def poisoned_train_epoch(p_train_step, state, *args, **kwargs):
        if kwargs["epoch"] == epoch:
            fc = {**state.params["fc"], "bias": state.params["fc"]["bias"] * jnp.nan}
            state = state.replace(params={**state.params, "fc": fc})
        return real_train_epoch(p_train_step, state, *args, **kwargs)

    monkeypatch.setattr(epochs, "train_epoch", poisoned_train_epoch)
    return lambda argv: loop.train_and_evaluate(parse_config("flax", argv))


def training_error(side: str):
    if side == "lightning":
        from lightning_side.callbacks import TrainingError
    else:
        from flax_side.loop import TrainingError
    return TrainingError


@pytest.mark.parametrize("side", ["lightning", "flax"])
def test_divergence_before_any_checkpoint_says_so_and_saves_nothing(tmp_path, side, monkeypatch):
    run = poisoned_run(side, monkeypatch, epoch=0)
    with pytest.raises(training_error(side)) as err:
        run([*REFERENCE_ARGV, "--logdir", str(tmp_path), "--num-workers", "0"])
    message = str(err.value)
    assert "\n" not in message and message.startswith("train/loss is nan at step 0: training diverged"), message
    assert "no checkpoint had been written yet" in message and "--lr" in message
    checkpoints = tmp_path / side / "reference" / "version_0" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())


@pytest.mark.parametrize("side", ["lightning", "flax"])
def test_divergence_after_a_good_checkpoint_names_it_saves_nothing_more_and_resumes(tmp_path, side,
                                                                                     monkeypatch):
    from tests.helpers.tb import first_step, scalars

    argv = [*REFERENCE_ARGV, "--logdir", str(tmp_path), "--num-workers", "0"]
    version = tmp_path / side / "reference" / "version_0"
    run = poisoned_run(side, monkeypatch, epoch=1)
    with pytest.raises(training_error(side)) as err:
        run(argv)
    message = str(err.value)
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
    run(argv + ["--resume", "last"])  # unpoisoned: it goes on from step 3 to the end
    resumed = version.parent / "version_1"
    assert first_step(resumed) == 3 and [s for s, _ in scalars(resumed)["test/acc"]] == [6]
