"""Which checkpoints stay, which one is the best, and which weights the test split sees.

Six epochs of one step each, and a tie for the best val/acc (the earliest must be kept), and every
checkpoint different from the next (so "tested with the best" can be told from "tested with the
last"). Lightning: with --lr 0 the weights never move while BatchNorm's running statistics do, so
val/acc ties by itself. Flax: the reference run's steps (a flax step compiles for about 10 s, and
--lr 0 would be a step of its own), with val/acc made to tie.
"""

from pathlib import Path

import numpy as np
import torch

from common.config import parse_config
from tests.helpers.tb import scalars

ARGV = ["--dataset", "digits", "--epochs", "6", "--limit-train-batches", "1", "--batch-size", "32",
        "--limit-val-batches", "1", "--limit-test-batches", "1", "--lr", "0"]


def earliest_best(version: Path) -> int:
    """The step count after the first epoch with the highest val/acc (val/acc is logged at the
    0-based index of an epoch's last step); fails unless the highest value was tied."""
    val = scalars(version)["val/acc"]
    top = max(v for _, v in val)
    tied = [step for step, v in val if v == top]
    assert len(tied) >= 2, f"no tie for the best val/acc to test: {val}"
    return tied[0] + 1


def test_lightning_keeps_the_last_three_and_the_earliest_best_and_tests_the_best(tmp_path):
    """Six epochs leave the last 3 epoch checkpoints and the best one, no more; a tie for the
    best keeps the earlier checkpoint; the test split is evaluated with its weights."""
    import lightning as L

    from lightning_side.train import train

    class TestedWeights(L.Callback):
        def on_test_start(self, trainer, pl_module):
            self.state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    tested = TestedWeights()
    train(parse_config("lightning", ARGV + ["--logdir", str(tmp_path)]), callbacks=[tested])
    version = tmp_path / "lightning" / "resnet20-digits" / "version_0"
    best = earliest_best(version)
    assert best < 4  # so the best is not one of the last three anyway
    files = sorted(p.name for p in (version / "checkpoints").iterdir())
    assert files == [f"best-epoch{best - 1:03d}-step{best}.ckpt", "epoch003-step4.ckpt",
                     "epoch004-step5.ckpt", "epoch005-step6.ckpt", "last.ckpt"], files

    def weights(name):
        state = torch.load(version / "checkpoints" / name, map_location="cpu", weights_only=True)["state_dict"]
        return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}

    from_best, from_last = weights(f"best-epoch{best - 1:03d}-step{best}.ckpt"), weights("last.ckpt")
    assert any(not torch.equal(from_best[k], from_last[k]) for k in from_best)  # the two can be told apart
    for key, value in from_best.items():
        assert torch.equal(tested.state[key], value), key


def test_flax_keeps_the_last_three_and_the_earliest_best_and_tests_the_best(tmp_path, monkeypatch, reference_runs):
    import jax

    from flax_side import loop
    from flax_side.checkpoint import _flax_variables

    # The reference run's 6 steps of its LR schedule (cosine, 3 of warm-up), one an epoch.
    argv = [*reference_runs["flax"].argv, "--epochs", "6", "--limit-train-batches", "1", "--warmup-epochs", "3",
            "--logdir", str(tmp_path), "--num-workers", "0"]
    val_acc = [0.25, 0.75, 0.75, 0.5, 0.5, 0.5]  # the best after epochs 1 and 2 (steps 2 and 3)
    evaluated = []  # the weights of each call: six validations, then the test split
    real_evaluate = loop.evaluate

    def evaluate(p_eval_step, state, loader, **kwargs):
        evaluated.append(jax.device_get({"params": state.params, "batch_stats": state.batch_stats}))
        result = real_evaluate(p_eval_step, state, loader, **kwargs)
        return {**result, "acc": val_acc[len(evaluated) - 1]} if len(evaluated) <= len(val_acc) else result

    monkeypatch.setattr(loop, "evaluate", evaluate)
    final = loop.train_and_evaluate(parse_config("flax", argv))
    version = tmp_path / "flax" / "reference" / "version_0"
    best = earliest_best(version)
    assert best == 2
    steps = sorted(int(p.name) for p in (version / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [best, 4, 5, 6], steps
    assert sorted(int(p.stem) for p in (version / "torch_weights").glob("*.pt")) == steps

    from_best = _flax_variables(version / "checkpoints" / str(best))
    leaves = lambda tree: jax.tree.leaves(jax.device_get(tree))  # noqa: E731
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(from_best["params"]), leaves(final.params)))
    assert len(evaluated) == 7
    for a, b in zip(leaves(evaluated[-1]), leaves(from_best)):
        np.testing.assert_array_equal(a, b)


def test_lightning_tests_the_last_weights_with_a_warning_when_the_best_cannot_be_read(tmp_path, capsys,
                                                                                     reference_runs):
    """The best checkpoint damaged on disk by the time the test split runs (a file cut short):
    one warning line names it, and the test split is evaluated with last.ckpt's weights."""
    import lightning as L

    from lightning_side.train import train

    class DamageTheBestThenRecordTestedWeights(L.Callback):
        def on_fit_end(self, trainer, pl_module):
            self.best = Path(trainer.checkpoint_callback.best_model_path)
            self.best.write_bytes(self.best.read_bytes()[:1000])

        def on_test_start(self, trainer, pl_module):
            self.state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    spy = DamageTheBestThenRecordTestedWeights()
    capsys.readouterr()
    train(parse_config("lightning", [*reference_runs["lightning"].argv, "--logdir", str(tmp_path),
                                     "--num-workers", "0"]), callbacks=[spy])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(spy.best) in warnings[0] and "cannot be read" in warnings[0], warnings
    last = tmp_path / "lightning" / "reference" / "version_0" / "checkpoints" / "last.ckpt"
    assert warnings[0].endswith(f"evaluated with {last.resolve()}") or warnings[0].endswith(f"evaluated with {last}")
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in spy.state.items():
        assert torch.equal(value, state[f"model.{key}"]), key


def test_flax_tests_the_final_weights_with_a_warning_when_the_best_cannot_be_read(tmp_path, capsys, monkeypatch,
                                                                                 reference_runs):
    """The same on the flax side. val/acc is made to fall after the first epoch, so that the best
    checkpoint (step 3) is not the final state; its files are cut short just before it is read."""
    import jax

    from flax_side import checkpoint, loop

    real_evaluate, real_restore = loop.evaluate, checkpoint.restore
    evaluated = []  # the weights of each call: two validations, then the test split

    def evaluate(p_eval_step, state, loader, **kwargs):
        evaluated.append(jax.device_get(state.params))
        result = real_evaluate(p_eval_step, state, loader, **kwargs)
        return {**result, "acc": 1.0 / len(evaluated)} if len(evaluated) <= 2 else result

    def restore(directory, step, *args):
        for data in (Path(directory) / str(step) / "state").rglob("d/*"):
            data.write_bytes(data.read_bytes()[:16])
        return real_restore(directory, step, *args)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    monkeypatch.setattr(checkpoint, "restore", restore)
    capsys.readouterr()
    final = loop.train_and_evaluate(parse_config("flax", [*reference_runs["flax"].argv, "--logdir", str(tmp_path),
                                                          "--num-workers", "0"]))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "the best checkpoint cannot be read" in warnings[0], warnings
    assert warnings[0].endswith("the test split is evaluated with the final weights, of step 6")
    assert len(evaluated) == 3
    for a, b in zip(jax.tree.leaves(evaluated[-1]), jax.tree.leaves(jax.device_get(final.params))):
        np.testing.assert_array_equal(a, b)
