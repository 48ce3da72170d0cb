"""--init-from: a run starts from exactly the weights it is given (a torch state_dict, a Lightning
checkpoint, a flax run), converted where the side needs it; weights it cannot use are one line."""

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util

from tests.helpers.sides import DRIVERS, FLAX_SIDES
from flax_side.checkpoint import CheckpointError, load_initial_weights
from flax_side.convert import torch_to_flax
from lightning_side.models import create_model as create_torch_model
from tests.helpers.checkpoints import flat, saved_state
from tests.helpers.in_process import run_main
from tests.helpers.models import abstract_flax_variables
from tests.helpers.reference import REFERENCE_ARGV

QUICK = ["--dataset", "digits", "--batch-size", "32", "--limit-train-batches", "3",
         "--limit-val-batches", "2", "--limit-test-batches", "2", "--num-workers", "2"]
# A short run per side; the flax side's with the reference run's flags, whose steps the session
# has compiled, and no loader workers (JAX's threads make forking this process unsafe).
SHORT_RUN = {"lightning": QUICK + ["--epochs", "1", "--limit-train-batches", "1"],
             "flax": [*REFERENCE_ARGV, "--num-workers", "0"], "nnx": [*REFERENCE_ARGV, "--num-workers", "0"]}


def weights_at_the_start(side: str, monkeypatch) -> tuple[list[dict], list]:
    """(the weights each run of `side` in this process starts training from, flattened as
    tests/helpers/checkpoints.py names them; the Lightning callbacks that record them)."""
    started = []
    if side == "lightning":
        import lightning as L

        class StartWeights(L.Callback):
            def on_train_start(self, trainer, pl_module):
                started.append({k: v.detach().clone().numpy() for k, v in pl_module.model.state_dict().items()})

        return started, [StartWeights()]
    from flax_side import epochs

    real_train_epoch = epochs.train_epoch

    def train_epoch(p_train_step, state, *args, **kwargs):
        if kwargs["epoch"] == 0:
            items = state.checkpoint_items()  # linen's names on both Flax sides
            started.append(flat(jax.device_get({"params": items["params"], "batch_stats": items["batch_stats"]})))
        return real_train_epoch(p_train_step, state, *args, **kwargs)

    monkeypatch.setattr(epochs, "train_epoch", train_epoch)
    return started, []


def as_the_side_holds_them(side: str, state_dict: dict) -> dict:
    """A torch state_dict as the side's model holds it: itself, or converted to flax's variables."""
    if side == "lightning":
        return {key: value.numpy() for key, value in state_dict.items()}
    return flat(torch_to_flax(state_dict))


@pytest.mark.parametrize("side,kind", [("lightning", "state_dict"), ("lightning", "lightning_ckpt"),
                                       ("flax", "state_dict"), ("nnx", "state_dict")])
def test_init_from_starts_from_exactly_those_weights(tmp_path, side, kind, monkeypatch):
    torch.manual_seed(0)
    source = create_torch_model("resnet20", num_classes=10)
    torch.nn.init.normal_(source.fc.weight)  # unlike any fresh initialisation
    if kind == "state_dict":
        path = tmp_path / "weights.pt"
        torch.save(source.state_dict(), path)
    else:
        path = tmp_path / "run.ckpt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
                    "epoch": 3}, path)
    started, callbacks = weights_at_the_start(side, monkeypatch)
    done = run_main(side, [*SHORT_RUN[side], "--logdir", str(tmp_path), "--init-from", str(path)],
                    callbacks=callbacks)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = as_the_side_holds_them(side, source.state_dict())
    assert started[0].keys() == expected.keys()
    for key, value in expected.items():
        assert np.array_equal(started[0][key], value), key


@pytest.mark.parametrize("source", FLAX_SIDES)
def test_init_from_a_flax_run_folder_starts_lightning_from_its_newest_torch_copy(tmp_path, monkeypatch,
                                                                                  reference_runs, source):
    """The Flax sides leave a torch copy of their weights; the Lightning side starts from it."""
    flax_version = reference_runs[source].version
    exported = torch.load(flax_version / "torch_weights" / "6.pt", weights_only=True)  # the newest
    argv = QUICK + ["--epochs", "1", "--limit-train-batches", "2", "--logdir", str(tmp_path)]
    started, callbacks = weights_at_the_start("lightning", monkeypatch)
    # Every form of the path once; the folders' layout is one for both APIs, so NNX's run once.
    forms = (flax_version, flax_version / "checkpoints", flax_version / "checkpoints" / "6")
    for given in forms if source == "flax" else forms[:1]:
        done = run_main("lightning", argv + ["--init-from", str(given)], callbacks=callbacks)
        assert done.returncode == 0, done.stderr[-3000:]
        for key, value in exported.items():
            assert np.array_equal(started[-1][key], value.numpy()), (given, key)


def test_init_from_a_linen_run_folder_starts_nnx_from_its_newest_weights(tmp_path, monkeypatch, reference_runs):
    """linen's and NNX's checkpoints hold params and batch_stats under the same names (the other
    way round is the next test's), so NNX starts from a linen run's weights exactly."""
    version = reference_runs["flax"].version
    newest = {key: value for key, value in saved_state("flax", version).items()
              if key.startswith(("params/", "batch_stats/"))}
    started, _ = weights_at_the_start("nnx", monkeypatch)
    done = run_main("nnx", [*SHORT_RUN["nnx"], "--logdir", str(tmp_path), "--init-from", str(version)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert started[0].keys() == newest.keys() and len(newest) > 100
    for key, value in newest.items():
        assert np.array_equal(started[0][key], value), key


# --------------------------------------------------------------------------- flax_side/checkpoint.py

def _torch_state_dict(name="resnet20"):
    torch.manual_seed(0)
    model = create_torch_model(name)
    with torch.no_grad():  # non-trivial running statistics, so they are seen to arrive
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


def _assert_same_variables(got, expected):
    got, expected = traverse_util.flatten_dict(got, sep="/"), traverse_util.flatten_dict(expected, sep="/")
    assert got.keys() == expected.keys()
    for key in expected:
        assert np.asarray(got[key]).dtype == np.asarray(expected[key]).dtype, key
        assert np.array_equal(got[key], expected[key]), key


def test_flax_reads_a_state_dict_a_lightning_checkpoint_and_a_flax_or_nnx_checkpoint_folder_as_their_weights(
        tmp_path, reference_runs):
    sd = _torch_state_dict()
    torch.save(sd, tmp_path / "weights.pt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "last.ckpt")
    expected = torch_to_flax(sd)
    like = abstract_flax_variables()
    _assert_same_variables(load_initial_weights(tmp_path / "weights.pt", like), expected)
    _assert_same_variables(load_initial_weights(tmp_path / "last.ckpt", like), expected)
    # A checkpoints folder of either Flax API (one layout, linen's names): its newest weights.
    for source in FLAX_SIDES:
        version = reference_runs[source].version
        newest = {key: value for key, value in saved_state(source, version).items()
                  if key.startswith(("params/", "batch_stats/"))}
        _assert_same_variables(load_initial_weights(version / "checkpoints", like),
                               traverse_util.unflatten_dict(newest, sep="/"))


def test_flax_init_from_the_wrong_model_or_a_non_weights_file_is_a_one_line_error(tmp_path):
    torch.save(_torch_state_dict("resnet20"), tmp_path / "r20.pt")
    with pytest.raises(CheckpointError, match="r20.pt") as err:
        load_initial_weights(tmp_path / "r20.pt", abstract_flax_variables("resnet20", num_classes=100))
    assert "\n" not in str(err.value)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt"):
        load_initial_weights(tmp_path / "notes.txt", abstract_flax_variables())


@pytest.mark.parametrize("side", DRIVERS)
@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_an_unreadable_init_from_is_a_one_line_error(tmp_path, side, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    done = run_main(side, QUICK + ["--init-from", str(bad), "--logdir", str(tmp_path / "logs")])
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and err[0].startswith("error:"), done.stderr
    assert bad.read_bytes() == content  # untouched
