"""The Lightning trainer: a short real run, its tags, resume, parameter groups, precision."""

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from common.config import parse_config
from lightning_side.module import ResNetModule, parameter_groups
from lightning_side.models import create_model
from lightning_side.schedules import lr_factor_fn
from lightning_side.train import lightning_precision, train
from harness.processes import finish, start_train
from tests.helpers.tb import DESIGN_TAGS, first_step, scalars

QUICK = ["--dataset", "digits", "--batch-size", "32", "--limit-train-batches", "3",
         "--limit-val-batches", "2", "--limit-test-batches", "2", "--num-workers", "2"]


def test_short_run_writes_the_design_tag_set(reference_runs):
    run = reference_runs["lightning"]  # 2 epochs x 3 batches, cosine with warm-up, every step logged
    assert "[lightning] best val/acc" in run.stdout and str(run.version) in run.stdout
    logged = scalars(run.version)
    assert DESIGN_TAGS <= set(logged) and "train/loss_scale" not in logged
    steps = [s for s, _ in logged["train/loss"]]
    assert steps == list(range(6))  # 2 epochs x 3 batches, every step
    factor = lr_factor_fn("cosine", epochs=2, steps_per_epoch=3, warmup_epochs=1)
    for step, lr in logged["train/lr"]:
        assert lr == pytest.approx(0.1 * factor(step), rel=1e-6, abs=1e-9)
    assert [s for s, _ in logged["val/acc"]] == [2, 5]  # the last step of each epoch
    assert (2, 0.0) in logged["epoch"] and (5, 1.0) in logged["epoch"]  # 0-based, at epoch end
    assert (run.version / "checkpoints" / "last.ckpt").is_file()
    assert (run.version / "hparams.yaml").read_text().count("dataset: digits") == 1


def _final_weights(version_dir):
    ckpt = torch.load(version_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"], ckpt["global_step"]


class StopAfterFirstEpoch(L.Callback):
    """An interruption at an epoch boundary, after that epoch's checkpoints are written."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, reference_runs):
    straight = reference_runs["lightning"]  # uninterrupted, with these flags
    base = [*straight.argv, "--logdir", str(tmp_path), "--run-name", "split"]
    train(parse_config("lightning", base), callbacks=[StopAfterFirstEpoch()])
    assert _final_weights(tmp_path / "lightning" / "split" / "version_0")[1] == 3
    train(parse_config("lightning", base + ["--resume", "last"]))
    straight, straight_steps = _final_weights(straight.version)
    resumed, resumed_steps = _final_weights(tmp_path / "lightning" / "split" / "version_1")
    assert straight_steps == resumed_steps == 6
    # It resumed rather than started over (which would end on the same weights): its first
    # logged step is the one after the checkpoint's 3.
    assert first_step(tmp_path / "lightning" / "split" / "version_1") == 3
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    # The interrupted run's own folder is left as it was: the resumed run wrote a new version.
    assert _final_weights(tmp_path / "lightning" / "split" / "version_0")[1] == 3


def test_weight_decay_only_on_conv_and_linear_weights():
    model = create_model("resnet20")
    decay, no_decay = parameter_groups(model, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert decayed == {n for n, p in model.named_parameters() if p.ndim in (2, 4)}
    assert "fc.weight" in decayed and "conv1.weight" in decayed
    assert not any(".bn" in n or n.startswith("bn") or n.endswith("bias") for n in decayed)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("flag,cuda,expected", [
    ("auto", False, "32-true"), ("auto", True, "16-mixed"), ("32", False, "32-true"),
    ("16-mixed", True, "16-mixed"), ("bf16-mixed", False, "bf16-mixed"), ("64-true", False, "64-true"),
])
def test_precision_mapping(flag, cuda, expected):
    assert lightning_precision(flag, cuda) == expected


def test_module_normalises_uint8_on_the_device():
    module = ResNetModule(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))
    images = torch.full((1, 3, 32, 32), 40, dtype=torch.uint8)
    seen = {}
    module.model.forward = lambda x: seen.setdefault("x", x)
    module(images)
    assert torch.allclose(seen["x"][0, :, 0, 0], torch.tensor([15.0, 5.0, 2.0]))


class CaptureStartWeights(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


@pytest.mark.parametrize("kind", ["state_dict", "lightning_ckpt"])
def test_init_from_starts_from_exactly_those_weights(tmp_path, kind):
    source = create_model("resnet20", num_classes=10)
    torch.nn.init.normal_(source.fc.weight)  # unlike any fresh initialisation
    if kind == "state_dict":
        path = tmp_path / "weights.pt"
        torch.save(source.state_dict(), path)
    else:
        path = tmp_path / "run.ckpt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
                    "epoch": 3}, path)
    capture = CaptureStartWeights()
    argv = QUICK + ["--epochs", "1", "--limit-train-batches", "1", "--logdir", str(tmp_path),
                    "--init-from", str(path)]
    train(parse_config("lightning", argv), callbacks=[capture])
    for key, value in source.state_dict().items():
        assert torch.equal(capture.state[key], value), key


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_unreadable_init_from_is_a_one_line_error(tmp_path, content, in_process_main):
    from lightning_side.train import main
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    done = in_process_main(main, QUICK + ["--init-from", str(bad), "--logdir", str(tmp_path / "logs")])
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and err[0].startswith("error:")
    assert bad.read_bytes() == content  # untouched


def test_16_mixed_on_cpu_stays_float16_with_a_loss_scaler():
    from lightning.pytorch.plugins import MixedPrecision

    from lightning_side.train import precision_arguments
    args = precision_arguments("16-mixed")
    if torch.cuda.is_available():
        assert args == {"precision": "16-mixed"}
        return
    (plugin,) = args["plugins"]
    assert isinstance(plugin, MixedPrecision) and plugin.scaler is not None
    assert plugin.scaler.get_scale() == 2.0 ** 16  # GradScaler's default, as flax's DynamicScale
    with plugin.forward_context():
        out = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert out.dtype == torch.float16


def test_init_from_a_flax_run_folder(tmp_path, reference_runs):
    """The flax side leaves a torch copy of its weights; the Lightning side starts from it."""
    flax_version = reference_runs["flax"].version
    exported = torch.load(flax_version / "torch_weights" / "6.pt", weights_only=True)  # the newest
    argv = QUICK + ["--epochs", "1", "--limit-train-batches", "2", "--logdir", str(tmp_path)]
    for given in (flax_version, flax_version / "checkpoints", flax_version / "checkpoints" / "6"):
        capture = CaptureStartWeights()
        train(parse_config("lightning", argv + ["--init-from", str(given)]), callbacks=[capture])
        for key, value in exported.items():
            assert torch.equal(capture.state[key], value), (given, key)


class CtrlCDuringStep(L.Callback):
    """A real SIGINT in the middle of a step: after its forward pass (BatchNorm's running
    statistics have moved), before its optimizer update."""

    def __init__(self, step):
        self.step = step

    def on_before_backward(self, trainer, pl_module, loss):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_ctrl_c_saves_a_checkpoint_that_resumes_mid_epoch_exactly(tmp_path, workers, reference_runs):
    from lightning_side.train import Interrupted
    straight = reference_runs["lightning"]  # uninterrupted (its 2 workers load what 0 would)
    base = [*straight.argv, "--logdir", str(tmp_path), "--num-workers", workers, "--run-name", "split"]
    handler = signal.getsignal(signal.SIGINT)
    try:
        # The step in flight (the 4th, the first of epoch 1's 3 batches) finishes first.
        with pytest.raises(Interrupted, match="interrupted at step 4.*--resume last"):
            train(parse_config("lightning", base), callbacks=[CtrlCDuringStep(3)])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while it stops
    assert _final_weights(tmp_path / "lightning" / "split" / "version_0")[1] == 4
    train(parse_config("lightning", base + ["--resume", "last"]))
    resumed, steps = _final_weights(tmp_path / "lightning" / "split" / "version_1")
    assert steps == 6
    assert first_step(tmp_path / "lightning" / "split" / "version_1") == 4  # after the Ctrl-C checkpoint
    straight, _ = _final_weights(straight.version)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_resume_last_passes_over_a_checkpoint_truncated_by_a_kill(tmp_path, capsys, reference_runs):
    from lightning_side.resume import resume_checkpoint
    checkpoints = reference_runs["lightning"].copy_to(tmp_path) / "checkpoints"
    base = [*reference_runs["lightning"].argv, "--logdir", str(tmp_path)]
    newest = (checkpoints / "last.ckpt").resolve()
    newest.write_bytes(newest.read_bytes()[:1000])  # what a kill during the save leaves
    picked = Path(resume_checkpoint(parse_config("lightning", base + ["--resume", "last"])))
    assert picked != newest and picked.name != "last.ckpt"
    assert "step3" in picked.name  # the previous epoch's checkpoint, complete
    # ... and says so, in one line naming what it passed over and what it resumes from.
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: --resume last passed over 2 damaged")
    assert "last.ckpt" in warning[0] and "epoch001-step6.ckpt" in warning[0]
    assert warning[0].endswith(f"resuming from {picked}")


@pytest.mark.parametrize("make", ["truncated", "empty", "state_dict only", "flax folder"])
def test_unusable_resume_path_is_a_one_line_error(tmp_path, make, in_process_main):
    from lightning_side.train import main
    path = tmp_path / "bad.ckpt"
    if make == "truncated":
        torch.save({"state_dict": {}, "loops": {}}, path)
        path.write_bytes(path.read_bytes()[:50])
    elif make == "empty":
        path.write_bytes(b"")
    elif make == "state_dict only":
        torch.save(create_model("resnet20").state_dict(), path)
    else:
        path = tmp_path / "checkpoints"
        path.mkdir()
    before = path.read_bytes() if path.is_file() else None
    done = in_process_main(main, QUICK + ["--resume", str(path), "--logdir", str(tmp_path / "logs")])
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0]
    assert before is None or path.read_bytes() == before
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow  # torch.compile is slow on a small CPU (see docs/testing.md)
def test_compiled_module_trains_like_the_eager_one(tmp_path):
    """--compile: the same run, in float64 where the compiled kernels' rounding stays at 1e-12,
    with checkpoints that keep the plain module's keys."""
    argv = QUICK + ["--epochs", "1", "--log-every", "1", "--precision", "64-true", "--logdir", str(tmp_path)]
    done = finish({name: start_train("lightning", [*argv, "--run-name", name, *extra])  # started together
                   for name, extra in (("eager", []), ("compiled", ["--compile"]))})
    for out in done.values():
        assert out.returncode == 0, out.stderr[-3000:]
    eager, compiled = (torch.load(tmp_path / "lightning" / name / "version_0" / "checkpoints" / "last.ckpt",
                                  weights_only=True)["state_dict"] for name in ("eager", "compiled"))
    assert eager.keys() == compiled.keys()
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-9, atol=1e-9, msg=key)
