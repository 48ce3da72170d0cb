"""The flax trainer end to end: a real run and its tags, resume, several devices, --init-from."""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from flax_side import checkpoint, loop
from flax_side.convert import torch_to_flax
from flax_side.loop import train_and_evaluate
from flax_side.schedules import create_schedule
from harness.config import parse_config
from lightning_side.models import create_model as create_torch_model
from tests.tb import first_step, DESIGN_TAGS, scalars

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--dataset", "digits", "--batch-size", "32", "--limit-train-batches", "3",
         "--limit-val-batches", "2", "--log-every", "1"]


def run_cli(*argv, **kwargs):
    return subprocess.Popen([sys.executable, "flax_side/train.py", *argv], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def finish(process, timeout=300):
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def test_short_run_writes_the_design_tag_set(tmp_path):
    argv = ["--dataset", "digits", "--epochs", "1", "--limit-train-batches", "3", "--batch-size", "32",
            "--log-every", "1", "--logdir", str(tmp_path)]
    code, stdout, stderr = finish(run_cli(*argv))
    assert code == 0, stderr[-3000:]
    version = tmp_path / "flax" / "resnet20-digits" / "version_0"
    assert "[flax] best val/acc" in stdout and str(version) in stdout
    logged = scalars(version)
    assert DESIGN_TAGS <= set(logged) and "train/loss_scale" not in logged
    assert [s for s, _ in logged["train/loss"]] == [0, 1, 2]
    assert [s for s, _ in logged["train/acc"]] == [0, 1, 2]
    schedule = create_schedule(parse_config("flax", argv), steps_per_epoch=3)
    for step, lr in logged["train/lr"]:
        assert lr == pytest.approx(float(schedule(step)), rel=1e-6), step
    for tag in ("val/loss", "val/acc", "perf/epoch_seconds", "perf/train_images_per_sec"):
        assert [s for s, _ in logged[tag]] == [2], tag  # the epoch's last step, as Lightning
    for tag in ("test/loss", "test/acc"):
        assert [s for s, _ in logged[tag]] == [3], tag  # the step count, as Lightning's test()
    assert logged["epoch"] == [(0, 0.0), (1, 0.0), (2, 0.0), (2, 0.0), (3, 1.0)]
    assert 0 <= logged["val/acc"][0][1] <= 1 and logged["perf/train_images_per_sec"][0][1] > 0
    assert (version / "checkpoints" / "3" / "state").is_dir()
    assert parse_config("flax", ["--config", str(version / "hparams.yaml")]) == parse_config("flax", argv)


def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path, monkeypatch):
    argv = QUICK + ["--epochs", "2", "--schedule", "cosine", "--warmup-epochs", "1",
                    "--logdir", str(tmp_path)]
    straight = train_and_evaluate(parse_config("flax", argv + ["--run-name", "straight"]))

    real_train_epoch = loop.train_epoch

    def interrupted_after_epoch_0(*args, epoch, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_train_epoch(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", interrupted_after_epoch_0)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(parse_config("flax", argv + ["--run-name", "split"]))
    monkeypatch.undo()
    first = tmp_path / "flax" / "split" / "version_0"
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["3"]

    resumed = train_and_evaluate(parse_config("flax", argv + ["--run-name", "split", "--resume", "last"]))
    for a, b in zip(jax.tree.leaves(jax.device_get(straight)), jax.tree.leaves(jax.device_get(resumed))):
        assert np.array_equal(a, b)
    assert int(resumed.step) == 6

    # The resumed run wrote a new version folder (with a copy of what it resumed from) and logged
    # only its own steps; the interrupted run's folder is untouched.
    second = tmp_path / "flax" / "split" / "version_1"
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["3"]
    assert sorted(p.name for p in (second / "checkpoints").iterdir()) == ["3", "6"]
    assert [s for s, _ in scalars(second)["train/loss"]] == [3, 4, 5]
    straight_logged = scalars(tmp_path / "flax" / "straight" / "version_0")
    assert scalars(second)["train/loss"] == straight_logged["train/loss"][3:]

    # A flax checkpoint folder also serves --init-from: its newest weights.
    final = jax.device_get({"params": resumed.params, "batch_stats": resumed.batch_stats})
    weights = checkpoint.load_initial_weights(second / "checkpoints", jax.eval_shape(lambda: final))
    assert jax.tree.structure(weights) == jax.tree.structure(final)
    for a, b in zip(jax.tree.leaves(weights), jax.tree.leaves(final)):
        assert np.array_equal(a, b)


def test_two_devices_train_like_one(tmp_path):
    """Data parallel over 2 host devices (a subprocess: XLA_FLAGS must precede JAX), in float64."""
    argv = QUICK + ["--epochs", "1", "--precision", "64-true", "--logdir", str(tmp_path)]
    runs = {n: run_cli(*argv, "--devices", str(n), "--run-name", f"d{n}") for n in (1, 2)}
    for n, process in runs.items():
        code, stdout, stderr = finish(process)
        assert code == 0, f"--devices {n} exited {code}: {stderr[-3000:]}"
        assert f"d{n}/version_0" in stdout, stdout
    one, two = (scalars(tmp_path / "flax" / f"d{n}" / "version_0") for n in (1, 2))
    assert [s for s, _ in two["train/loss"]] == [0, 1, 2], two
    np.testing.assert_allclose([v for _, v in two["train/loss"]], [v for _, v in one["train/loss"]], rtol=1e-5)
    assert two["val/acc"] == one["val/acc"], (one, two)


def test_too_few_devices_is_a_one_line_error():
    with pytest.raises(loop.TrainingError, match="--devices 64"):
        loop.create_mesh(64)


def test_init_from_a_torch_state_dict_starts_from_the_converted_weights(tmp_path):
    torch.manual_seed(0)
    state_dict = create_torch_model("resnet20").state_dict()
    torch.save(state_dict, tmp_path / "weights.pth")
    # With --lr 0 the weights do not move, so the run ends on the weights it started from.
    state = train_and_evaluate(parse_config("flax", QUICK + [
        "--epochs", "1", "--limit-train-batches", "1", "--lr", "0", "--logdir", str(tmp_path),
        "--init-from", str(tmp_path / "weights.pth")]))
    for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(torch_to_flax(state_dict)["params"])):
        assert np.array_equal(a, b)


def test_corrupt_init_from_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"\x80\x02 definitely not a torch file")
    code, stdout, stderr = finish(run_cli(*QUICK, "--epochs", "1", "--logdir", str(tmp_path),
                                          "--init-from", str(bad)))
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], stderr
    assert not (tmp_path / "flax").exists()  # no run folder for a run that never started


def test_a_diverged_fp32_run_stops_with_one_line_and_saves_nothing_bad(tmp_path):
    with pytest.raises(loop.TrainingError, match=r"train/loss is nan at step \d: training diverged") as err:
        train_and_evaluate(parse_config("flax", QUICK + ["--epochs", "1", "--lr", "1e37",
                                                         "--logdir", str(tmp_path)]))
    assert "\n" not in str(err.value) and "no checkpoint had been written yet" in str(err.value)
    assert not any((tmp_path / "flax" / "resnet20-digits" / "version_0" / "checkpoints").iterdir())


def test_resume_last_passes_over_a_save_cut_short_by_a_kill(tmp_path):
    """Orbax writes a step into a temporary folder and renames it when complete: a kill during
    the save leaves only the temporary folder, which --resume last must not pick."""
    argv = QUICK + ["--epochs", "1", "--logdir", str(tmp_path)]
    train_and_evaluate(parse_config("flax", argv))
    checkpoints = tmp_path / "flax" / "resnet20-digits" / "version_0" / "checkpoints"
    (steps,) = [p.name for p in checkpoints.iterdir() if p.name.isdigit()]
    partial = checkpoints / f"{int(steps) + 5}.orbax-checkpoint-tmp-1234567890"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half-written").write_bytes(b"\0" * 10)
    directory, step = checkpoint.find("last", tmp_path, "resnet20-digits")
    assert (directory, step) == (checkpoints, int(steps))


@pytest.mark.parametrize("make", ["lightning checkpoint", "empty folder", "corrupt step"])
def test_unusable_resume_path_is_a_one_line_error(tmp_path, make):
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
    code, _, stderr = finish(run_cli(*QUICK, "--resume", str(path), "--logdir", str(tmp_path / "logs")))
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and str(path) in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr
    assert not (tmp_path / "logs").exists()


def test_resume_last_passes_over_a_damaged_newest_checkpoint_and_says_so(tmp_path, capsys):
    """A checkpoint that completed and was damaged on disk later (a file cut short): --resume
    last restores the one before it, in one line naming both."""
    argv = QUICK + ["--epochs", "2", "--log-every", "1", "--logdir", str(tmp_path)]
    train_and_evaluate(parse_config("flax", argv))
    checkpoints = tmp_path / "flax" / "resnet20-digits" / "version_0" / "checkpoints"
    assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [3, 6]
    for data in (checkpoints / "6" / "state").rglob("d/*"):
        data.write_bytes(data.read_bytes()[:16])
    capsys.readouterr()
    state = train_and_evaluate(parse_config("flax", argv + ["--epochs", "3", "--resume", "last"]))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert f"passed over 1 damaged checkpoint(s): {checkpoints / '6'}" in warnings[0]
    assert warnings[0].endswith(f"resuming from {checkpoints / '3'}")
    assert int(state.step) == 9
    assert first_step(tmp_path / "flax" / "resnet20-digits" / "version_1") == 3
