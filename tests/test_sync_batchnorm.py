"""GlobalBatchNorm2d: two gloo ranks, each with half a batch, behave as one BatchNorm2d on all of it."""

import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lightning_side.sync_batchnorm import GlobalBatchNorm2d, GlobalBatchNormSync

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
