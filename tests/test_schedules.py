"""Both sides use the same learning rate at every optimizer step of every schedule."""

import jax
import numpy as np
import pytest
import torch

from flax_side.schedules import create_schedule
from common.config import parse_config
from lightning_side.schedules import lr_factor_fn

CASES = [  # (epochs, steps per epoch, warm-up epochs, milestones)
    (10, 10, 0.0, [0.5, 0.75]),
    (10, 10, 1.0, [0.5, 0.75]),
    (9, 7, 1.5, [0.3, 0.6, 0.9]),
    (182, 351, 0.0, [0.5, 0.75]),  # the paper's recipe on CIFAR-10
]


@pytest.mark.parametrize("schedule", ["multistep", "cosine", "onecycle"])
@pytest.mark.parametrize("epochs,steps,warmup,milestones", CASES)
def test_lightning_and_flax_schedules_agree_at_every_step(schedule, epochs, steps, warmup, milestones):
    config = parse_config("flax", ["--schedule", schedule, "--epochs", str(epochs), "--lr", "0.1",
                                   "--warmup-epochs", str(warmup),
                                   "--milestones", *map(str, milestones)])
    total = epochs * steps
    factor = lr_factor_fn(schedule, epochs, steps, warmup, milestones)
    torch_lrs = np.array([0.1 * factor(s) for s in range(total + 2)])
    with jax.enable_x64(True):
        flax_lrs = np.asarray(jax.vmap(create_schedule(config, steps))(np.arange(total + 2)))
    np.testing.assert_allclose(flax_lrs, torch_lrs, rtol=1e-9, atol=1e-12)
    # and the schedules really are what their names say
    assert torch_lrs.max() == pytest.approx(0.1, rel=1e-3)
    if warmup:
        assert torch_lrs[0] < 0.1 * 0.05


def test_lambda_lr_advances_once_per_optimizer_step():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    factor = lr_factor_fn("cosine", epochs=2, steps_per_epoch=5, warmup_epochs=1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(seen, [0.1 * factor(s) for s in range(10)], rtol=1e-12)
    assert seen[0] == 0.0 and seen[5] == pytest.approx(0.1)
