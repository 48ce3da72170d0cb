"""The flax trainer end to end: a real run and its tags, resume, several devices, --init-from."""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from flax_side import checkpoint, epochs, loop
from flax_side.convert import torch_to_flax
from flax_side.loop import train_and_evaluate
from flax_side.schedules import create_schedule
from common.config import parse_config
from lightning_side.models import create_model as create_torch_model
from tests.helpers.tb import first_step, DESIGN_TAGS, scalars

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--dataset", "digits", "--batch-size", "32", "--limit-train-batches", "3",
         "--limit-val-batches", "2", "--limit-test-batches", "2", "--log-every", "1"]


def run_cli(*argv, **kwargs):
    return subprocess.Popen([sys.executable, "flax_side/train.py", *argv], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def finish(process, timeout=300):
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def test_short_run_writes_the_design_tag_set(reference_runs):
    run = reference_runs["flax"]  # 2 epochs x 3 batches, cosine with warm-up, every step logged
    version = run.version
    assert "[flax] best val/acc" in run.stdout and str(version) in run.stdout
    logged = scalars(version)
    assert DESIGN_TAGS <= set(logged) and "train/loss_scale" not in logged
    assert [s for s, _ in logged["train/loss"]] == list(range(6))
    assert [s for s, _ in logged["train/acc"]] == list(range(6))
    schedule = create_schedule(parse_config("flax", run.argv), steps_per_epoch=3)
    for step, lr in logged["train/lr"]:
        assert lr == pytest.approx(float(schedule(step)), rel=1e-6, abs=1e-9), step
    for tag in ("val/loss", "val/acc", "perf/epoch_seconds", "perf/train_images_per_sec"):
        assert [s for s, _ in logged[tag]] == [2, 5], tag  # each epoch's last step, as Lightning
    for tag in ("test/loss", "test/acc"):
        assert [s for s, _ in logged[tag]] == [6], tag  # the step count, as Lightning's test()
    assert (2, 0.0) in logged["epoch"] and (5, 1.0) in logged["epoch"]  # 0-based, at epoch end
    assert (6, 2.0) in logged["epoch"]  # beside test/*, as Lightning
    assert all(0 <= v <= 1 for _, v in logged["val/acc"]) and logged["perf/train_images_per_sec"][0][1] > 0
    assert sorted(p.name for p in (version / "checkpoints").iterdir()) == ["3", "6"]
    assert (version / "checkpoints" / "6" / "state").is_dir()
    assert parse_config("flax", ["--config", str(version / "hparams.yaml")]) == parse_config("flax", run.argv)


def saved_state(step_folder: Path) -> dict:
    """Everything a checkpoint holds (step, params, batch_stats, opt_state, rng, ...), as numpy."""
    import orbax.checkpoint as ocp

    item = step_folder / "state"
    tree = ocp.PyTreeCheckpointHandler().metadata(item).tree
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore(item, args=ocp.args.PyTreeRestore(
            restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)))


def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path, monkeypatch, reference_runs):
    straight = reference_runs["flax"]  # uninterrupted, with these flags
    # No loader workers in this process: JAX's threads make forking it unsafe (the data is the same).
    argv = [*straight.argv, "--logdir", str(tmp_path), "--run-name", "split", "--num-workers", "0"]

    real_train_epoch = epochs.train_epoch

    def interrupted_after_epoch_0(*args, epoch, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_train_epoch(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(epochs, "train_epoch", interrupted_after_epoch_0)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(parse_config("flax", argv))
    monkeypatch.undo()
    first = tmp_path / "flax" / "split" / "version_0"
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["3"]

    resumed = train_and_evaluate(parse_config("flax", argv + ["--resume", "last"]))
    assert int(resumed.step) == 6
    # Everything the two runs saved at their end, optimizer state and random key included.
    second = tmp_path / "flax" / "split" / "version_1"
    ends = [saved_state(version / "checkpoints" / "6") for version in (straight.version, second)]
    assert jax.tree.structure(ends[0]) == jax.tree.structure(ends[1])
    for a, b in zip(jax.tree.leaves(ends[0]), jax.tree.leaves(ends[1])):
        assert np.array_equal(a, b)
    final = jax.device_get({"params": resumed.params, "batch_stats": resumed.batch_stats})
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves({k: ends[1][k] for k in final})):
        assert np.array_equal(a, b)  # what it saved is what it ended with

    # The resumed run wrote a new version folder (with a copy of what it resumed from) and logged
    # only its own steps; the interrupted run's folder is untouched.
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["3"]
    assert sorted(p.name for p in (second / "checkpoints").iterdir()) == ["3", "6"]
    assert [s for s, _ in scalars(second)["train/loss"]] == [3, 4, 5]
    assert scalars(second)["train/loss"] == scalars(straight.version)["train/loss"][3:]

    # A flax checkpoint folder also serves --init-from: its newest weights.
    weights = checkpoint.load_initial_weights(second / "checkpoints", jax.eval_shape(lambda: final))
    assert jax.tree.structure(weights) == jax.tree.structure(final)
    for a, b in zip(jax.tree.leaves(weights), jax.tree.leaves(final)):
        assert np.array_equal(a, b)


def test_two_devices_train_like_one(float64_lockstep):
    """Data parallel over 2 host devices, against one device: the float64 lockstep's 10 steps
    (harness/lockstep.py) to the tolerances that hold the two sides together. A mean of per-device
    gradients or BatchNorm statistics taken over half the batch shows at 1e-3 and more."""
    from harness.lockstep import relative_differences

    diffs = relative_differences(float64_lockstep, ("flax", "flax on 2 devices"))
    assert diffs["train/loss (worst step)"] <= 1e-6, diffs
    assert diffs["val/loss"] <= 1e-5 and diffs["test/loss"] <= 1e-5, diffs
    assert diffs["weights"] <= 1e-6 and diffs["batch statistics"] <= 1e-6, diffs
    one, two = (float64_lockstep[name]["scalars"] for name in ("flax", "flax on 2 devices"))
    assert [s for s, _ in two["train/loss"]] == list(range(10))
    assert two["val/acc"] == one["val/acc"]


def test_too_few_devices_is_a_one_line_error():
    with pytest.raises(loop.TrainingError, match="--devices 64"):
        loop.create_mesh(64)


def test_init_from_a_torch_state_dict_starts_from_the_converted_weights(tmp_path, monkeypatch, reference_runs):
    torch.manual_seed(0)
    state_dict = create_torch_model("resnet20").state_dict()
    torch.save(state_dict, tmp_path / "weights.pth")
    started = []  # the weights the first epoch starts from (the reference run's flags: compiled)
    real_train_epoch = epochs.train_epoch

    def train_epoch(p_train_step, state, *args, **kwargs):
        started.append(jax.device_get({"params": state.params, "batch_stats": state.batch_stats}))
        return real_train_epoch(p_train_step, state, *args, **kwargs)

    monkeypatch.setattr(epochs, "train_epoch", train_epoch)
    train_and_evaluate(parse_config("flax", [*reference_runs["flax"].argv, "--logdir", str(tmp_path),
                                             "--num-workers", "0", "--init-from", str(tmp_path / "weights.pth")]))
    converted = torch_to_flax(state_dict)
    assert jax.tree.structure(started[0]) == jax.tree.structure(converted)
    for a, b in zip(jax.tree.leaves(started[0]), jax.tree.leaves(converted)):
        assert np.array_equal(a, b)


def test_resume_last_passes_over_a_save_cut_short_by_a_kill(tmp_path, reference_runs):
    """Orbax writes a step into a temporary folder and renames it when complete: a kill during
    the save leaves only the temporary folder, which --resume last must not pick."""
    checkpoints = reference_runs["flax"].copy_to(tmp_path) / "checkpoints"
    partial = checkpoints / "11.orbax-checkpoint-tmp-1234567890"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half-written").write_bytes(b"\0" * 10)
    assert checkpoint.find("last", tmp_path, "reference") == (checkpoints, 6)


@pytest.mark.parametrize("make", ["lightning checkpoint", "empty folder", "corrupt step"])
def test_unusable_resume_path_is_a_one_line_error(tmp_path, make, in_process_main):
    from flax_side.train import main
    if make == "lightning checkpoint":
        path = tmp_path / "last.ckpt"
        torch.save({"state_dict": {}, "loops": {}}, path)
    elif make == "empty folder":
        path = tmp_path / "checkpoints"
        path.mkdir()
    else:
        path = tmp_path / "checkpoints"
        (path / "7" / "state").mkdir(parents=True)
        (path / "7" / "state" / "_METADATA").write_text("{ not json")
    done = in_process_main(main, [*QUICK, "--resume", str(path), "--logdir", str(tmp_path / "logs")])
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and str(path) in lines[0], done.stderr
    assert not (tmp_path / "logs").exists()


def test_resume_last_passes_over_a_damaged_newest_checkpoint_and_says_so(tmp_path, capsys, reference_runs):
    """A checkpoint that completed and was damaged on disk later (a file cut short): --resume
    last restores the one before it, in one line naming both."""
    checkpoints = reference_runs["flax"].copy_to(tmp_path) / "checkpoints"
    assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [3, 6]
    for data in (checkpoints / "6" / "state").rglob("d/*"):
        data.write_bytes(data.read_bytes()[:16])
    capsys.readouterr()
    argv = [*reference_runs["flax"].argv, "--logdir", str(tmp_path), "--resume", "last", "--num-workers", "0"]
    state = train_and_evaluate(parse_config("flax", argv))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert f"passed over 1 damaged checkpoint(s): {checkpoints / '6'}" in warnings[0]
    assert warnings[0].endswith(f"resuming from {checkpoints / '3'}")
    assert int(state.step) == 6
    resumed = tmp_path / "flax" / "reference" / "version_1"
    assert first_step(resumed) == 3
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["3", "6"]  # not the damaged 6
