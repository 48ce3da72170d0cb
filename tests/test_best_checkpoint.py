"""Which checkpoints stay, which one is the best, and which weights the test split sees.

Six epochs of one step each, and a tie for the best val/acc (the earliest must be kept), and every
checkpoint different from the next (so "tested with the best" can be told from "tested with the
last"). Lightning: with --lr 0 the weights never move while BatchNorm's running statistics do, so
val/acc ties by itself. Flax: the reference run's steps (a flax step compiles for about 10 s, and
--lr 0 would be a step of its own), with val/acc made to tie.
"""

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from tests.helpers.sides import DRIVERS
from tests.helpers.checkpoints import flat, model_weights
from tests.helpers.in_process import run_epochs_then_stop, run_main
from tests.helpers.tb import scalars

LIGHTNING_ARGV = ["--dataset", "digits", "--epochs", "6", "--limit-train-batches", "1", "--batch-size", "32",
                  "--limit-val-batches", "1", "--limit-test-batches", "1", "--lr", "0"]


class Run(NamedTuple):
    version: Path
    tested: dict  # the weights the test split was evaluated with, as tests/helpers/checkpoints.py names them
    last: dict  # the weights the run ended with (on the flax side its params)
    warnings: list[str]  # the lines of stderr that start with "warning:"


def weights_tested_by_lightning():
    """A Lightning callback that keeps the weights trainer.test() starts with, as numpy."""
    import lightning as L

    class TestedWeights(L.Callback):
        def on_test_start(self, trainer, pl_module):
            self.state = {k: v.detach().clone().numpy() for k, v in pl_module.model.state_dict().items()}

    return TestedWeights()


def ended_well(done):
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def warnings(done) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("warning:")]


def evaluated_by_flax(monkeypatch, val_acc: list[float]) -> list[dict]:
    """The weights of each of the flax loop's evaluations (the validations, then the test split),
    its first val/acc replaced by `val_acc`."""
    import jax

    from flax_side import loop

    real_evaluate, evaluated = loop.evaluate, []

    def evaluate(p_eval_step, state, loader, **kwargs):
        evaluated.append(flat(jax.device_get({"params": state.params, "batch_stats": state.batch_stats})))
        result = real_evaluate(p_eval_step, state, loader, **kwargs)
        return {**result, "acc": val_acc[len(evaluated) - 1]} if len(evaluated) <= len(val_acc) else result

    monkeypatch.setattr(loop, "evaluate", evaluate)
    return evaluated


def final_params(done) -> dict:
    import jax

    return flat(jax.device_get({"params": done.returned.params}))


def six_one_step_epochs(side: str, logdir: Path, monkeypatch, reference_runs) -> Run:
    if side == "lightning":
        tested = weights_tested_by_lightning()
        done = ended_well(run_main(side, LIGHTNING_ARGV + ["--logdir", str(logdir)], callbacks=[tested]))
        version = logdir / "lightning" / "resnet20-digits" / "version_0"
        return Run(version, tested.state, model_weights(side, version / "checkpoints" / "last.ckpt"), warnings(done))
    # The reference run's 6 steps of its LR schedule (cosine, 3 of warm-up), one an epoch.
    argv = [*reference_runs["flax"].argv, "--epochs", "6", "--limit-train-batches", "1", "--warmup-epochs", "3",
            "--logdir", str(logdir), "--num-workers", "0"]
    evaluated = evaluated_by_flax(monkeypatch, [0.25, 0.75, 0.75, 0.5, 0.5, 0.5])  # best after epochs 1 and 2
    done = ended_well(run_main(side, argv))
    assert len(evaluated) == 7  # six validations, then the test split
    return Run(logdir / "flax" / "reference" / "version_0", evaluated[-1], final_params(done), warnings(done))


@pytest.fixture(scope="module")
def six_epochs(tmp_path_factory, reference_runs):
    """side -> six_one_step_epochs's run of that side, run once for the tests that read it."""
    runs = {}

    def run(side: str) -> Run:
        if side not in runs:
            with pytest.MonkeyPatch.context() as monkeypatch:
                runs[side] = six_one_step_epochs(side, tmp_path_factory.mktemp(f"six-{side}"), monkeypatch,
                                                 reference_runs)
        return runs[side]

    return run


def earliest_best(version: Path) -> int:
    """The step count after the first epoch with the highest val/acc (val/acc is logged at the
    0-based index of an epoch's last step); fails unless the highest value was tied."""
    val = scalars(version)["val/acc"]
    top = max(v for _, v in val)
    tied = [step for step, v in val if v == top]
    assert len(tied) >= 2, f"no tie for the best val/acc to test: {val}"
    return tied[0] + 1


def kept(side: str, version: Path) -> list[str]:
    """The checkpoints a version folder holds: Lightning's files; flax's complete steps, and the
    torch copy beside each."""
    checkpoints = version / "checkpoints"
    if side == "lightning":
        return sorted(p.name for p in checkpoints.iterdir())
    steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert sorted(int(p.stem) for p in (version / "torch_weights").glob("*.pt")) == steps
    return [str(step) for step in steps]


def best_checkpoint(side: str, version: Path, best: int) -> Path:
    if side == "lightning":
        return version / "checkpoints" / f"best-epoch{best - 1:03d}-step{best}.ckpt"
    return version / "checkpoints" / str(best)


@pytest.mark.parametrize("side", DRIVERS)
def test_six_epochs_keep_the_last_three_and_the_earliest_best_and_test_the_best(side, six_epochs):
    """Six epochs leave the last 3 epoch checkpoints and the best one, no more; a tie for the
    best keeps the earlier checkpoint; the test split is evaluated with its weights."""
    run = six_epochs(side)
    best = earliest_best(run.version)
    assert best < 4  # so the best is not one of the last three anyway
    if side == "flax":
        assert best == 2  # the val/acc it was given
    others = {"lightning": ["epoch003-step4.ckpt", "epoch004-step5.ckpt", "epoch005-step6.ckpt", "last.ckpt"],
              "flax": ["4", "5", "6"]}[side]
    assert kept(side, run.version) == [best_checkpoint(side, run.version, best).name, *others]

    from_best = model_weights(side, best_checkpoint(side, run.version, best))
    assert any(not np.array_equal(from_best[k], run.last[k]) for k in run.last)  # the two can be told apart
    assert run.tested.keys() == from_best.keys()
    for key, value in from_best.items():
        np.testing.assert_array_equal(run.tested[key], value, err_msg=key)


def damaged_best_then_tested(side: str, logdir: Path, monkeypatch, reference_runs) -> tuple[Run, Path]:
    """The reference run's flags, the best checkpoint cut short on disk just before the test split
    reads it: the run, and the best checkpoint. Flax: val/acc made to fall after the first epoch,
    so that the best (step 3) is not the final state."""
    argv = [*reference_runs[side].argv, "--logdir", str(logdir), "--num-workers", "0"]
    version = logdir / side / "reference" / "version_0"
    if side == "lightning":
        import lightning as L

        class DamageTheBest(L.Callback):
            def on_fit_end(self, trainer, pl_module):
                self.best = Path(trainer.checkpoint_callback.best_model_path)
                self.best.write_bytes(self.best.read_bytes()[:1000])

        damage, tested = DamageTheBest(), weights_tested_by_lightning()
        done = ended_well(run_main(side, argv, callbacks=[damage, tested]))
        last = model_weights(side, version / "checkpoints" / "last.ckpt")
        return Run(version, tested.state, last, warnings(done)), damage.best
    from flax_side import checkpoint

    evaluated = evaluated_by_flax(monkeypatch, [1.0, 0.5])
    real_restore, damaged = checkpoint.restore, []

    def restore(directory, step, *args):
        damaged.append(Path(directory) / str(step))
        for data in (damaged[-1] / "state").rglob("d/*"):
            data.write_bytes(data.read_bytes()[:16])
        return real_restore(directory, step, *args)

    monkeypatch.setattr(checkpoint, "restore", restore)
    done = ended_well(run_main(side, argv))
    assert len(evaluated) == 3  # two validations, then the test split
    tested = {k: v for k, v in evaluated[-1].items() if k.startswith("params/")}
    return Run(version, tested, final_params(done), warnings(done)), damaged[0]


@pytest.mark.parametrize("side", DRIVERS)
def test_an_unreadable_best_checkpoint_is_named_and_the_test_split_sees_the_last_weights(tmp_path, side,
                                                                                        monkeypatch,
                                                                                        reference_runs):
    """The best checkpoint damaged on disk by the time the test split runs (a file cut short):
    one warning line names it, and the test split is evaluated with the weights the run ended with."""
    run, best = damaged_best_then_tested(side, tmp_path, monkeypatch, reference_runs)
    assert len(run.warnings) == 1 and "the best checkpoint cannot be read" in run.warnings[0], run.warnings
    assert str(best) in run.warnings[0], run.warnings[0]
    last = run.version / "checkpoints" / "last.ckpt"
    ends = {"lightning": (f"evaluated with {last.resolve()}", f"evaluated with {last}"),
            "flax": ("the test split is evaluated with the final weights, of step 6",)}[side]
    assert run.warnings[0].endswith(ends), run.warnings[0]
    assert run.tested.keys() == run.last.keys()
    for key, value in run.last.items():
        np.testing.assert_array_equal(run.tested[key], value, err_msg=key)


def split_by_a_resume(side: str, logdir: Path, monkeypatch, reference_runs) -> Run:
    """six_one_step_epochs's run stopped after its third epoch, as a kill there would leave it,
    then resumed to the end: the resumed run."""
    if side == "lightning":
        argv = LIGHTNING_ARGV + ["--logdir", str(logdir)]
        run_epochs_then_stop(side, argv, epochs=3)
        tested = weights_tested_by_lightning()
        done = ended_well(run_main(side, argv + ["--resume", "last"], callbacks=[tested]))
        version = logdir / "lightning" / "resnet20-digits" / "version_1"
        return Run(version, tested.state, model_weights(side, version / "checkpoints" / "last.ckpt"), warnings(done))
    argv = [*reference_runs["flax"].argv, "--epochs", "6", "--limit-train-batches", "1", "--warmup-epochs", "3",
            "--logdir", str(logdir), "--num-workers", "0"]
    with monkeypatch.context() as first:
        evaluated_by_flax(first, [0.25, 0.75, 0.75])
        run_epochs_then_stop(side, argv, epochs=3)
    evaluated = evaluated_by_flax(monkeypatch, [0.5, 0.5, 0.5])  # below the best before the stop
    done = ended_well(run_main(side, argv + ["--resume", "last"]))
    return Run(logdir / "flax" / "reference" / "version_1", evaluated[-1], final_params(done), warnings(done))


# Flax's, whose carry-over predates this test, in the slow suite beside the real Ctrl-C and SIGKILL
# of tests/test_resume.py::test_a_resumed_run_reports_and_tests_the_uninterrupted_runs_best.
@pytest.mark.parametrize("side", ["lightning", pytest.param("flax", marks=pytest.mark.slow)])
def test_the_best_before_a_resume_stays_the_best_and_is_tested(tmp_path, side, monkeypatch, reference_runs,
                                                               six_epochs):
    """Stopped after epoch 3 and resumed: the best checkpoint, the weights the test split sees and
    the best val/acc are the uninterrupted run's, though the best came before the stop and ties
    (the earliest wins) with epochs after it."""
    straight = six_epochs(side)
    best = earliest_best(straight.version)
    assert best <= 3, f"the best must come before the stop for this test to bite: step {best}"
    resumed = split_by_a_resume(side, tmp_path / "split", monkeypatch, reference_runs)
    # The resumed folder holds the best as the uninterrupted one does, beside its own epochs.
    assert best_checkpoint(side, resumed.version, best).exists(), kept(side, resumed.version)
    assert kept(side, resumed.version)[0] == kept(side, straight.version)[0]
    assert resumed.tested.keys() == straight.tested.keys()
    for key, value in straight.tested.items():
        np.testing.assert_array_equal(resumed.tested[key], value, err_msg=key)
    for tag in ("test/acc", "test/loss"):
        assert scalars(resumed.version)[tag] == scalars(straight.version)[tag], tag
