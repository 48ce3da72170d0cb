"""Reading initial weights for --init-from: a torch state_dict or a Lightning checkpoint."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from common.errors import RunError, one_line
from common.sides import TORCH_WEIGHTS


class WeightsError(RunError):
    """A weights file that cannot be used; the message is one line naming the file."""


def load_model_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model's state_dict from a .pt/.pth state_dict or a Lightning .ckpt (keys "model.*")."""
    path = Path(path)
    if path.is_dir():
        path = flax_export(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist; check the path given to --init-from")
    try:
        # weights_only: a checkpoint is data, never code to run.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise WeightsError(f"{path} is not a readable torch file ({one_line(err)})") from None
    if isinstance(obj, dict) and "state_dict" in obj:  # a Lightning checkpoint
        obj = {k[len("model."):]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds no model state_dict (expected tensors by parameter name)")
    return obj



def flax_export(path: Path) -> Path:
    """The torch copy of a flax checkpoint: for a version or checkpoints folder the newest one,
    for a step folder (checkpoints/<step>) that step's."""
    if path.name.isdigit() and path.parent.name == "checkpoints":
        exact = path.parent.parent / TORCH_WEIGHTS / f"{path.name}.pt"
        if exact.is_file():
            return exact
        raise WeightsError(f"{path} has no torch copy at {exact}; give a .pt/.ckpt file instead")
    version = path.parent if path.name == "checkpoints" else path
    exports = [p for p in (version / TORCH_WEIGHTS).glob("*.pt") if p.stem.isdigit()]
    if not exports:
        raise WeightsError(f"{path} is a folder without flax checkpoint weights ({TORCH_WEIGHTS}/*.pt); "
                           "give a state_dict (.pt), a Lightning .ckpt or a flax run's folder")
    return max(exports, key=lambda p: int(p.stem))
