"""BatchNorm over the global batch under DDP, on GPUs and on CPUs alike.

The flax side normalises with statistics of the whole global batch (under jit the batch axis is
sharded, the mean is global). On GPUs Lightning's `sync_batchnorm=True` gives the torch side the
same through `torch.nn.SyncBatchNorm`; on a CPU that module refuses to run (its kernels
`batch_norm_stats` & co. exist for CUDA only), and per-rank statistics would make a CPU DDP run a
different experiment from the 1-process one. `GlobalBatchNorm2d` fills that gap with torch's
differentiable functional all_reduce: autograd carries the
gradient through the global mean and variance exactly as SyncBatchNorm's hand-written backward
does. `GlobalBatchNormSync` is its Lightning `LayerSync` plugin.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
# torch's functional collectives: differentiable (the backward of a sum is a sum of the
# gradients), the replacement torch names for the deprecated torch.distributed.nn.functional.
import torch.distributed._functional_collectives as funcol
from lightning.pytorch.plugins import LayerSync
from torch import nn


def _distributed(group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training statistics are over every rank's batch (same state_dict)."""

    process_group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats and _distributed(self.process_group)):
            return super().forward(x)
        self._check_input_dim(x)
        x = x.to(torch.promote_types(x.dtype, torch.float32))  # float16 sums overflow; as torch's BN
        dims = (0, 2, 3)
        # Two passes, as torch's own CPU kernel: the mean first, then squared deviations from it
        # (sum(x^2) - n mean^2 would lose digits that 64-true parity checks can see).
        group = self.process_group or dist.group.WORLD
        local = torch.cat([x.sum(dims), x.new_full((1,), x.numel() // x.shape[1])])
        total = funcol.all_reduce(local, "sum", group)
        count, mean = total[-1], total[:-1] / total[-1]
        centred = x - mean.view(1, -1, 1, 1)
        var = funcol.all_reduce((centred * centred).sum(dims), "sum", group) / count
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            # torch keeps the unbiased running variance (and so does flax_side/batchnorm.py)
            self.running_var.mul_(1 - m).add_(var.detach() * (count / (count - 1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Every nn.BatchNorm2d in `module` replaced by this class, holding the same parameters and
        buffers (as torch.nn.SyncBatchNorm.convert_sync_batchnorm does)."""
        return _swap(module, nn.BatchNorm2d, cls)

    @classmethod
    def revert(cls, module: nn.Module) -> nn.Module:
        return _swap(module, cls, nn.BatchNorm2d)


def _swap(module: nn.Module, old: type, new: type) -> nn.Module:
    if type(module) is old:
        out = new(module.num_features, module.eps, module.momentum, module.affine,
                  module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        module.add_module(name, _swap(child, old, new))
    return module


class GlobalBatchNormSync(LayerSync):
    """The LayerSync plugin of GlobalBatchNorm2d, given to the Trainer in place of
    `sync_batchnorm=True` where torch's SyncBatchNorm cannot run."""

    def apply(self, model: nn.Module) -> nn.Module:
        return GlobalBatchNorm2d.convert(model)

    def revert(self, model: nn.Module) -> nn.Module:
        return GlobalBatchNorm2d.revert(model)
