"""The NNX side's driver: the flax side's (flax_side/loop.py), with NNX's state and steps
(nnx_side/api.py). Run folders land in logs/nnx/<run-name>/version_N."""

from __future__ import annotations

from common.config import TrainConfig
from flax_side import loop
from nnx_side.api import NNX
from nnx_side.state import Split


def train_and_evaluate(config: TrainConfig) -> Split:
    return loop.train_and_evaluate(config, NNX)
