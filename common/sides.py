"""The sides of the harness, where each one's train.py lives, and the folder names they share."""

from __future__ import annotations

import sys
from pathlib import Path

SIDES = ("lightning", "flax", "nnx")
# What the tools (harness.sweep, harness.compare) run and compare unless --sides says otherwise:
# Lightning against Flax as linen writes it, the comparison the harness was built for.
DEFAULT_SIDES = ("lightning", "flax")
# The sides that flax_side's driver runs (flax_side/api.py: linen's and NNX's state and steps):
# Orbax checkpoints, jax.sharding over host devices.
FLAX_SIDES = ("flax", "nnx")
# How --help and the docs name each side.
TITLES = {"lightning": "PyTorch Lightning", "flax": "Flax linen", "nnx": "Flax NNX"}

# Beside each flax checkpoint, a torch copy of its weights: <version>/torch_weights/<step>.pt,
# which the flax side writes and the Lightning side's --init-from reads.
TORCH_WEIGHTS = "torch_weights"

_PACKAGES = Path(__file__).resolve().parents[1]


def train_script(side: str) -> Path:
    """The side's train.py, the entry point users run."""
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}; choose one of {', '.join(SIDES)}")
    return _PACKAGES / f"{side}_side" / "train.py"


def train_command(side: str, argv: list[str]) -> list[str]:
    """The command line that runs the side's train.py with `argv` in this Python."""
    return [sys.executable, str(train_script(side)), *argv]
