"""The ResNets in PyTorch, NCHW: He et al.'s CIFAR ResNets, and torchvision's ImageNet ones.

resnet20/32/44/56/110: three stages of 16/32/64 channels, option-A shortcuts (stride-2 subsampling
plus zero-padded channels, no parameters). resnet18-cifar: the usual CIFAR variant (3x3 stride-1
stem, no max-pool, four stages of 64..512 channels, 1x1 conv + BN projection shortcuts).

resnet18/34/50 are torchvision's own models (`torchvision.models.resnet50(weights=None, ...)`), with
torchvision's initialisation, so any torchvision state_dict loads into them as it is.

Mirrors flax_side/models.py name for name, so that flax_side/convert.py maps weights mechanically.
The initialisation scheme is the one documented in docs/design.md and implemented identically there:
conv kernels He-normal (fan_in, gain sqrt(2), untruncated), the classifier weight uniform in
+-1/sqrt(fan_in) (torch's Linear default), classifier bias zero, BatchNorm scale 1 and bias 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from common.architectures import (CIFAR_ARCHITECTURES, IMAGENET_ARCHITECTURES, MODEL_NAMES,
                                   unknown_model_message)

# torch's momentum is the weight of the new batch statistic; flax's is the decay of the old one
# (flax momentum 0.9 == torch momentum 0.1).
BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _conv3x3(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d:
    # padding=1 pads (1, 1) on both sides, also for stride 2: the flax side spells it out.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = _bn(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, 1)
        self.bn2 = _bn(out_channels)
        self.reshape = stride != 1 or in_channels != out_channels
        self.shortcut = shortcut
        if self.reshape and shortcut == "B":
            self.shortcut_conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.shortcut_bn = _bn(out_channels)
        self.pad_channels = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if not self.reshape:
            residual = x
        elif self.shortcut == "A":
            # Option A: subsample by 2 and zero-pad the new channels evenly on both sides.
            half = self.pad_channels // 2
            residual = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.pad_channels - half))
        else:
            residual = self.shortcut_bn(self.shortcut_conv(x))
        return F.relu(out + residual)


class CifarResNet(nn.Module):
    def __init__(self, widths: tuple[int, ...], blocks_per_stage: int | tuple[int, ...],
                 shortcut: str, num_classes: int = 10):
        super().__init__()
        if isinstance(blocks_per_stage, int):
            blocks_per_stage = (blocks_per_stage,) * len(widths)
        self.conv1 = _conv3x3(3, widths[0], 1)
        self.bn1 = _bn(widths[0])
        in_channels = widths[0]
        for stage, (width, blocks) in enumerate(zip(widths, blocks_per_stage), start=1):
            layers = []
            for i in range(blocks):
                stride = 2 if stage > 1 and i == 0 else 1
                layers.append(BasicBlock(in_channels, width, stride, shortcut))
                in_channels = width
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.num_stages = len(widths)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def init_weights(model: nn.Module) -> None:
    """The project's one initialisation scheme (flax_side/models.py implements the same)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            bound = m.in_features ** -0.5
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def create_model(name: str, num_classes: int = 10, zero_init_residual: bool = False) -> nn.Module:
    """A freshly initialised ResNet taking NCHW float input.

    `zero_init_residual`: the last BatchNorm of every residual block starts at scale 0, so each
    block starts as the identity (Goyal et al. 2017; torchvision's option of the same name).
    """
    if name in IMAGENET_ARCHITECTURES:
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes,
                                                 zero_init_residual=zero_init_residual)
    if name not in CIFAR_ARCHITECTURES:
        raise ValueError(unknown_model_message(name))
    widths, blocks, shortcut = CIFAR_ARCHITECTURES[name]
    model = CifarResNet(widths, blocks, shortcut, num_classes)
    if zero_init_residual:
        for block in model.modules():
            if isinstance(block, BasicBlock):
                nn.init.zeros_(block.bn2.weight)
    return model
