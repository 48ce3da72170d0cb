"""A diverging fp32 run stops with one line on both sides and keeps its last good checkpoint."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # subprocesses; the divergence after a checkpoint below stays fast
@pytest.mark.parametrize("side", ["lightning", "flax"])
def test_non_finite_loss_stops_the_run(tmp_path, side):
    argv = ["--dataset", "digits", "--epochs", "3", "--limit-train-batches", "5", "--batch-size", "32",
            "--limit-val-batches", "1", "--log-every", "1", "--lr", "1e8", "--logdir", str(tmp_path)]
    out = subprocess.run([sys.executable, f"{side}_side/train.py", *argv], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training diverged" in errors[0] and "Traceback" not in out.stderr
    named = re.search(r"last good checkpoint is (\S+)", errors[0])
    if named:  # the checkpoint it names is there
        assert Path(named.group(1)).exists()
    else:
        assert "no checkpoint had been written yet" in errors[0]


# A run with the reference run's flags (tests/reference.py: 2 epochs of 3 steps) that is fine for
# its first epoch (checkpoint at step 3) and diverges in the next: the same LR schedule on both
# sides, 0.1 and then 1e30 from step 4 on. (Not from step 3: a Lightning checkpoint holds the LR of
# the step after it, which would carry the 1e30 over.) The resume has the real schedule, whose flax
# steps the reference run has compiled.
BLOW_UP_AT = 4


@pytest.mark.parametrize("side", ["lightning", "flax"])
def test_divergence_after_a_good_checkpoint_names_it_saves_nothing_more_and_resumes(tmp_path, side,
                                                                                     monkeypatch):
    from harness.config import parse_config
    from tests.reference import REFERENCE_ARGV
    from tests.tb import first_step, scalars

    argv = [*REFERENCE_ARGV, "--logdir", str(tmp_path), "--num-workers", "0"]
    version = tmp_path / side / "reference" / "version_0"
    if side == "lightning":
        from lightning_side import module
        from lightning_side.callbacks import TrainingError
        from lightning_side.train import train

        monkeypatch.setattr(module, "lr_factor_fn",
                            lambda *args, **kwargs: lambda step: 1.0 if step < BLOW_UP_AT else 1e31)
        run = lambda args: train(parse_config("lightning", args))  # noqa: E731
    else:
        import jax.numpy as jnp

        from flax_side import loop
        from flax_side.loop import TrainingError, train_and_evaluate

        monkeypatch.setattr(loop, "create_schedule", lambda config, steps: lambda count: jnp.where(
            count < BLOW_UP_AT, 0.1, 1e30))
        run = lambda args: train_and_evaluate(parse_config("flax", args))  # noqa: E731
    with pytest.raises(TrainingError) as err:
        run(argv)
    message = str(err.value)
    assert "\n" not in message and "training diverged" in message, message
    named = Path(re.search(r"last good checkpoint is (\S+)", message).group(1))
    # It names the checkpoint of step 3, and nothing was saved after the divergence.
    checkpoints = version / "checkpoints"
    if side == "lightning":
        from lightning_side.train import check_resumable

        check_resumable(named)
        assert named.resolve().name == "epoch000-step3.ckpt", named
        assert sorted(p.name for p in checkpoints.iterdir()) == [
            "best-epoch000-step3.ckpt", "epoch000-step3.ckpt", "last.ckpt"]
    else:
        assert named == checkpoints / "3"
        assert sorted(p.name for p in checkpoints.iterdir()) == ["3"]
        assert sorted(p.name for p in (version / "torch_weights").iterdir()) == ["3.pt"]
    diverged_at = int(re.search(r"at step (\d+)", message).group(1))
    assert BLOW_UP_AT <= diverged_at <= 5  # caught in the epoch it happened
    assert max(step for step, _ in scalars(version)["val/acc"]) <= diverged_at  # nothing logged after it
    monkeypatch.undo()
    run(argv + ["--resume", "last"])  # with the sane schedule: it goes on from step 3 to the end
    resumed = version.parent / "version_1"
    assert first_step(resumed) == 3 and [s for s, _ in scalars(resumed)["test/acc"]] == [6]
