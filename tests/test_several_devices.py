"""Several devices and processes train like one.

- Flax (linen and NNX) on two host devices against one: 8 float64 lockstep steps (slow).
- Lightning's GlobalBatchNorm2d: two gloo ranks, each with half a batch, behave as one
  BatchNorm2d on all of it.
- Whole runs of several processes (slow): Lightning DDP (gloo) and JAX multi-process (CPU
  collectives), on 127.0.0.1, against a 1-process run on the same global batches.

In float64 (`--precision 64-true`) the only difference left is the order of the sums over the
global batch, so the tolerance is tight: train/loss equal as TensorBoard stores it (float32), and
weights within 1e-7 after 8 steps of 16 images. Per-rank BatchNorm statistics instead of global
ones -- what torch's CPU DDP does without lightning_side/sync_batchnorm.py -- moved the weights by
0.6 and the first loss by 2e-3 at 32 images a step, so the check cannot pass by accident.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from common.errors import TrainingError
from tests.helpers.sides import DRIVERS, FLAX_SIDES
from harness.lockstep import final_weights
from harness.processes import finish
from lightning_side.sync_batchnorm import GlobalBatchNorm2d, GlobalBatchNormSync
from tests.helpers.tb import DESIGN_TAGS, first_step, scalars

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- flax on host devices

@pytest.mark.slow  # two processes: host devices are set before JAX starts
@pytest.mark.parametrize("side", FLAX_SIDES)
def test_on_two_devices_it_trains_like_on_one(tmp_path, side):
    """Data parallel over 2 host devices (the state replicated, the batch split over the mesh),
    against one device: 8 float64 steps of the lockstep (harness/lockstep.py) to the tolerances
    that hold the sides together. A mean of per-device gradients or BatchNorm statistics taken
    over half the batch shows at 1e-3 and more."""
    from harness.lockstep import lockstep, relative_differences

    result = lockstep(tmp_path, steps=8, precision="64-true", batch_size=8, sides=(side,),
                      devices={side: (1, 2)})
    one, two = side, f"{side} on 2 devices"
    diffs = relative_differences(result, (one, two))
    assert diffs["train/loss (worst step)"] <= 1e-6, diffs
    assert diffs["val/loss"] <= 1e-5 and diffs["test/loss"] <= 1e-5, diffs
    assert diffs["weights"] <= 1e-6 and diffs["batch statistics"] <= 1e-6, diffs
    assert [s for s, _ in result[two]["scalars"]["train/loss"]] == list(range(8))
    assert result[two]["scalars"]["val/acc"] == result[one]["scalars"]["val/acc"]


def test_the_lockstep_gives_host_devices_to_the_flax_sides_it_runs_only(tmp_path):
    """A count for Lightning, or for a side left out of `sides`, would be dropped without a word."""
    from harness.lockstep import lockstep

    for devices in ({"lightning": (2,)}, {"nnx": (1, 2)}):
        with pytest.raises(ValueError, match="only the Flax sides among"):
            lockstep(tmp_path / "runs", sides=("lightning", "flax"), devices=devices)
    assert not (tmp_path / "runs").exists()  # refused before anything ran


def test_too_few_flax_devices_is_a_one_line_error():
    from flax_side.devices import create_mesh

    with pytest.raises(TrainingError, match="--devices 64"):
        create_mesh(64)


# --------------------------------------------------------------------------- BatchNorm over the global batch

WORLD = 2


def batch(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 5, 5, generator=g, dtype=dtype) * 3 + 1
    upstream = torch.randn(8, 3, 5, 5, generator=g, dtype=dtype)  # dL/dy, to test the backward
    return x.contiguous(memory_format=torch.channels_last), upstream


def reference(dtype):
    """One process, the whole batch: output, input gradient, weight/bias gradients, buffers."""
    bn = nn.BatchNorm2d(3).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, -0.5]))
        bn.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
    x, upstream = batch(dtype)
    x.requires_grad_(True)
    y = bn(x)
    (y * upstream).sum().backward()
    return y.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var


DTYPES = (torch.float64, torch.float32)


def rank_main(rank, port, results):
    torch.set_num_threads(1)  # a forked child, as a DataLoader worker is
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        for dtype in DTYPES:
            bn = GlobalBatchNorm2d.convert(nn.Sequential(nn.BatchNorm2d(3)).to(dtype))[0]
            assert type(bn) is GlobalBatchNorm2d
            with torch.no_grad():
                bn.weight.copy_(torch.tensor([1.0, 2.0, -0.5]))
                bn.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
            x, upstream = batch(dtype)
            half = slice(rank * 4, rank * 4 + 4)
            x = x[half].detach().requires_grad_(True)
            y = bn(x)
            (y * upstream[half]).sum().backward()
            # Parameter gradients are per rank here (DDP sums them); the input gradient is final.
            grads = [bn.weight.grad.clone(), bn.bias.grad.clone()]
            for g in grads:
                dist.all_reduce(g)
            results[rank, str(dtype)] = (y.detach(), x.grad, *grads, bn.running_mean.clone(),
                                         bn.running_var.clone(), int(bn.num_batches_tracked))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks() -> dict:
    """(rank, dtype) -> what that rank's layer computed: two processes, both dtypes in one start.
    Forked, as DataLoader workers are: spawned ranks spent 9 s importing torch again. JAX's
    warning about forking its threads is for a child that uses JAX; these use torch alone."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        with mp.get_context("fork").Manager() as manager:
            results = manager.dict()
            mp.start_processes(rank_main, args=(free_port(), results), nprocs=WORLD, start_method="fork")
            return dict(results)


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_ranks_normalise_like_one_batchnorm_over_the_global_batch(dtype, two_ranks):
    y, dx, dw, db, mean, var = reference(dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for rank in range(WORLD):
        ry, rdx, rdw, rdb, rmean, rvar, tracked = two_ranks[rank, str(dtype)]
        half = slice(rank * 4, rank * 4 + 4)
        torch.testing.assert_close(ry, y[half], **tol)
        torch.testing.assert_close(rdx, dx[half], **tol)
        torch.testing.assert_close(rdw, dw, **tol)
        torch.testing.assert_close(rdb, db, **tol)
        torch.testing.assert_close(rmean, mean, **tol)
        torch.testing.assert_close(rvar, var, **tol)  # unbiased, over all 8 x 25 values
        assert tracked == 1


def test_without_a_process_group_it_is_plain_batchnorm():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(4)
    converted = GlobalBatchNorm2d.convert(nn.Sequential(nn.BatchNorm2d(4)))[0]
    converted.load_state_dict(plain.state_dict())
    x = torch.randn(6, 4, 3, 3)
    torch.testing.assert_close(converted(x), plain(x), rtol=0, atol=0)
    assert list(converted.state_dict()) == list(plain.state_dict())


def test_the_layer_sync_plugin_converts_and_reverts_sharing_the_tensors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()))
    weight = model[1][0].weight
    plugin = GlobalBatchNormSync()
    synced = plugin.apply(model)
    assert type(synced[1][0]) is GlobalBatchNorm2d and synced[1][0].weight is weight
    reverted = plugin.revert(synced)
    assert type(reverted[1][0]) is nn.BatchNorm2d and reverted[1][0].weight is weight


# --------------------------------------------------------------------------- whole runs of several processes

# Several train.py processes per test: the slow suite.
ARGV = ["--dataset", "digits", "--batch-size", "16", "--limit-train-batches", "4",
        "--limit-val-batches", "2", "--limit-test-batches", "2", "--log-every", "1", "--epochs", "2",
        "--precision", "64-true"]
WEIGHTS_TOLERANCE = 1e-7  # absolute, float64 weights after 8 steps


def launch(side: str, logdir: Path, run_name: str, *extra: str,
           new_session: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, f"{side}_side/train.py", *ARGV, "--logdir", str(logdir),
                             "--run-name", run_name, *extra], cwd=ROOT, text=True,
                            stdout=subprocess.DEVNULL if new_session else subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=new_session)


def wait_all(processes: list[subprocess.Popen]) -> list[str]:
    """Their stdouts, once all have ended (harness/processes.finish), each with exit code 0."""
    done = finish(dict(enumerate(processes)))
    for out in done.values():
        assert out.returncode == 0, out.stderr[-3000:]
    return [done[i].stdout for i in range(len(processes))]


def node_launches(side: str, logdir: Path, run_name: str, *extra: str, new_session: bool = False) -> list:
    """Two 'hosts' on this machine: one process each, meeting at 127.0.0.1."""
    address = f"127.0.0.1:{free_port()}"
    return [launch(side, logdir, run_name, "--num-nodes", "2", "--node-rank", str(rank),
                   "--coordinator-address", address, *extra, new_session=new_session) for rank in (1, 0)]


def two_nodes(side: str, logdir: Path, run_name: str, *extra: str) -> list[str]:
    """A two-node run to its end: the two processes' stdout."""
    return wait_all(node_launches(side, logdir, run_name, *extra))


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory) -> dict:
    """Made once, two processes at a time (more than the cores only slow each other down):
    ("single", side) -> the 1-process run's version folder; ("nodes", side) -> (the two
    processes' stdout, the version folder) of a two-node run; ("ddp", "lightning") -> the same
    of Lightning's --devices 2. The like-one-process tests read them; the Ctrl-C test resumes a
    stopped run to the same end as the two-process run of its side."""
    logdir = tmp_path_factory.mktemp("straight")
    wait_all([launch(side, logdir, "single") for side in DRIVERS])
    runs = {("single", side): logdir / side / "single" / "version_0" for side in DRIVERS}
    for side in DRIVERS:
        runs["nodes", side] = (two_nodes(side, logdir, "nodes"), logdir / side / "nodes" / "version_0")
    runs["ddp", "lightning"] = (wait_all(two_processes("lightning", logdir, "ddp"))[0],
                                logdir / "lightning" / "ddp" / "version_0")
    return runs


def assert_trains_like_one_process(side: str, version: Path, reference: Path) -> None:
    assert [p.name for p in version.parent.iterdir()] == ["version_0"]  # one run folder
    # One process wrote TensorBoard (Lightning opens a second file for trainer.test()):
    # event files are named events.out.tfevents.<time>.<host>.<pid>.<n>.
    writers = {p.name.split(".")[-2] for p in version.glob("events.out.tfevents.*")}
    assert len(writers) == 1, writers
    got, want = scalars(version), scalars(reference)
    assert DESIGN_TAGS <= set(got)
    for tag in ("train/loss", "train/acc", "val/acc", "test/acc"):
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
        np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in want[tag]],
                                   rtol=1e-6, err_msg=tag)
    for tag in ("val/loss", "test/loss"):
        np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in want[tag]],
                                   rtol=1e-5, err_msg=tag)
    weights, reference_weights = final_weights(side, version), final_weights(side, reference)
    assert weights.keys() == reference_weights.keys()
    worst = max(float(np.abs(weights[k] - reference_weights[k]).max()) for k in weights)
    assert worst < WEIGHTS_TOLERANCE, f"weights differ by {worst:.2e}"


@pytest.mark.slow
def test_lightning_ddp_on_two_devices_trains_like_one_process(straight_runs):
    stdout, version = straight_runs["ddp", "lightning"]
    assert stdout.count("[lightning] best val/acc") == 1  # rank 0 reports; its child does not
    assert_trains_like_one_process("lightning", version, straight_runs["single", "lightning"])


@pytest.mark.slow
@pytest.mark.parametrize("side", DRIVERS)
def test_two_nodes_train_like_one_process(straight_runs, side):
    outputs, version = straight_runs["nodes", side]
    assert sum(out.count(f"[{side}] best val/acc") for out in outputs) == 1
    assert_trains_like_one_process(side, version, straight_runs["single", side])
    if side == "flax":  # Orbax wrote each checkpoint once, for both processes
        assert sorted(p.name for p in (version / "checkpoints").iterdir()) == ["4", "8"]
        assert sorted(p.name for p in (version / "torch_weights").iterdir()) == ["4.pt", "8.pt"]


def ctrl_c(processes: list[subprocess.Popen], checkpoint: Path) -> list[int]:
    """Ctrl-C as a terminal sends it: SIGINT to each launch's whole process group (Lightning's
    DDP children included), once the first epoch's checkpoint is on disk."""
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert all(p.poll() is None for p in processes), "a run ended before the Ctrl-C"
        assert time.monotonic() < deadline
        time.sleep(0.02)  # the next epoch has 4 steps: stop it in its first
    for process in processes:
        os.killpg(process.pid, signal.SIGINT)
    return [process.wait(timeout=300) for process in processes]


def two_processes(side: str, logdir: Path, run_name: str, *extra: str, new_session: bool = False) -> list:
    """The launches of a two-process run: Lightning's --devices 2 (one launch, a DDP child), or
    flax's two nodes."""
    if side == "lightning":
        return [launch(side, logdir, run_name, "--devices", "2", *extra, new_session=new_session)]
    return node_launches(side, logdir, run_name, *extra, new_session=new_session)


@pytest.mark.slow
@pytest.mark.parametrize("side", DRIVERS)
def test_ctrl_c_stops_every_process_at_one_step_and_resumes_to_the_same_end(tmp_path, straight_runs, side):
    """Ctrl-C as the second epoch starts: every process stops after the same step, with a
    checkpoint of it, and --resume last ends on the weights of the uninterrupted two-process run."""
    version = tmp_path / side / "stop" / "version_0"
    first = (version / "checkpoints" / "epoch000-step4.ckpt" if side == "lightning"
             else version / "checkpoints" / "4" / "state")
    launches = two_processes(side, tmp_path, "stop", new_session=True)
    assert ctrl_c(launches, first) == [130] * len(launches)
    stderr = [p.stderr.read() for p in launches]
    stopped = {re.search(r"interrupted at step (\d+)", err).group(1) for err in stderr}
    assert len(stopped) == 1, stderr  # every process stopped after the same step
    step = int(stopped.pop())
    assert 4 <= step < 8  # in the second epoch (4 steps each), before its end
    if side == "lightning":
        assert any((version / "checkpoints").glob(f"*step{step}.ckpt"))
    else:
        assert (version / "checkpoints" / str(step) / "state").is_dir()

    wait_all(two_processes(side, tmp_path, "stop", "--resume", "last"))
    assert first_step(version.parent / "version_1") == step  # it went on from the Ctrl-C checkpoint
    assert [s for s, _ in scalars(version.parent / "version_1")["test/acc"]] == [8]
    straight = straight_runs["ddp" if side == "lightning" else "nodes", side][1]
    straight, resumed = final_weights(side, straight), final_weights(side, version.parent / "version_1")
    worst = max(float(np.abs(straight[k] - resumed[k]).max()) for k in straight)
    assert worst < 1e-12, f"weights differ by {worst:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("side", DRIVERS)
def test_a_diverged_multi_process_run_stops_on_every_rank_together(tmp_path, side):
    """--lr 1e8, a real divergence in train.py processes: every process stops at the same step
    with the one-line divergence error and no traceback, and none is left waiting in a collective
    (the timeout would fail the test). The in-process tests of test_divergence.py check what is
    kept and that a resume goes on from it."""
    processes = two_processes(side, tmp_path, "diverged", "--lr", "1e8", "--precision", "32", "--epochs", "3",
                              new_session=True)
    try:
        stderr = [p.communicate(timeout=600)[1] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert [p.returncode for p in processes] == [2] * len(processes), stderr
    # Lightning: one launch, whose DDP child reports the same error; flax: one per process.
    errors = [line for err in stderr for line in err.splitlines() if line.startswith("error:")]
    assert errors and all("training diverged" in e for e in errors), stderr
    assert not any("Traceback" in err for err in stderr), stderr
    for error in errors:
        named = re.search(r"last good checkpoint is (\S+)", error)
        if named:  # the checkpoint it names is there
            assert Path(named.group(1)).exists(), error
        else:
            assert "no checkpoint had been written yet" in error, error
    steps = {re.search(r"at step (\d+)", e).group(1) for e in errors}
    assert len(steps) == 1, errors  # every rank stopped after the same step
