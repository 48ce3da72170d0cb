"""Weights torch <-> flax, for either side's ResNets (CIFAR, and torchvision's ImageNet ones).

The only file of the flax side that touches torch. Names map mechanically because the flax
models use torch's names with every `.<index>` of a torch Sequential written `_<index>`
(`layer1.0.conv1.weight` <-> `layer1_0/conv1/kernel`, `layer2.0.downsample.1.running_var` <->
`layer2_0/downsample_1/var`):

    conv weight (O, I, kh, kw)   <-> kernel (kh, kw, I, O)
    linear weight (out, in)      <-> kernel (in, out)
    bn weight / bias             <-> scale / bias            (params)
    bn running_mean / _var       <-> mean / var              (batch_stats)
    bn num_batches_tracked       <-> num_batches_tracked     (batch_stats)

Both directions keep the dtype of what they are given (float32 or float64), so the two are
exact inverses.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np
import torch
from flax import traverse_util

from common.errors import one_line

_BN_TORCH_TO_FLAX = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
    "num_batches_tracked": ("batch_stats", "num_batches_tracked"),
}
_BN_FLAX_TO_TORCH = {v: k for k, v in _BN_TORCH_TO_FLAX.items()}


def _module_to_flax(module: str) -> tuple[str, ...]:
    # "layer1.0.downsample.1" -> ("layer1_0", "downsample_1")
    return tuple(re.sub(r"\.(\d+)", r"_\1", module).split("."))


def _module_to_torch(path: tuple[str, ...]) -> str:
    return ".".join(re.sub(r"_(\d+)$", r".\1", name) for name in path)


def _is_bn(module: str) -> bool:
    # bn1, bn2, bn3, shortcut_bn, and torchvision's downsample.1 (its Sequential's BatchNorm)
    last = module.split(".")[-1]
    return last.startswith(("bn", "shortcut_bn")) or module.endswith("downsample.1")


def torch_to_flax(state_dict: Mapping[str, Any]) -> dict[str, dict]:
    """A torch CIFAR ResNet state_dict as flax variables {"params", "batch_stats"} (numpy)."""
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, tensor in state_dict.items():
        module, _, leaf = key.rpartition(".")
        # Copies: a torch tensor's numpy view would change under the flax side when torch trains on.
        value = tensor.detach().cpu().numpy().copy() if isinstance(tensor, torch.Tensor) else np.array(tensor)
        path = _module_to_flax(module)
        if _is_bn(module):
            if leaf not in _BN_TORCH_TO_FLAX:
                raise KeyError(f"unexpected BatchNorm entry {key!r} in the state_dict")
            collection, name = _BN_TORCH_TO_FLAX[leaf]
            if name == "num_batches_tracked":
                value = value.astype(np.int32)
            flat[(collection, *path, name)] = value
        elif leaf == "weight" and value.ndim == 4:
            flat[("params", *path, "kernel")] = value.transpose(2, 3, 1, 0)
        elif leaf == "weight" and value.ndim == 2:
            flat[("params", *path, "kernel")] = value.T
        elif leaf == "bias":
            flat[("params", *path, "bias")] = value
        else:
            raise KeyError(f"unexpected entry {key!r} of shape {value.shape} in the state_dict")
    variables = traverse_util.unflatten_dict(flat)
    return {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}


def flax_to_torch(variables: Mapping[str, Any]) -> "OrderedDict[str, torch.Tensor]":
    """Flax variables {"params", "batch_stats"} as a torch state_dict (the inverse of torch_to_flax)."""
    entries: dict[str, torch.Tensor] = {}
    for collection in ("params", "batch_stats"):
        for path, value in traverse_util.flatten_dict(dict(variables.get(collection, {}))).items():
            value = np.asarray(value)
            *module_path, leaf = path
            module = _module_to_torch(tuple(module_path))
            if (collection, leaf) in _BN_FLAX_TO_TORCH:
                name = _BN_FLAX_TO_TORCH[(collection, leaf)]
                if name == "num_batches_tracked":
                    value = value.astype(np.int64)
            elif leaf == "kernel" and value.ndim == 4:
                name, value = "weight", value.transpose(3, 2, 0, 1)
            elif leaf == "kernel" and value.ndim == 2:
                name, value = "weight", value.T
            elif leaf == "bias":
                name = "bias"
            else:
                raise KeyError(f"unexpected flax variable {collection}/{'/'.join(path)}")
            entries[f"{module}.{name}"] = torch.from_numpy(np.array(value, order="C"))
    return OrderedDict(sorted(entries.items()))


def load_torch_state_dict(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """The model weights in a torch file: a state_dict (.pt/.pth), or a Lightning checkpoint
    (.ckpt, whose "state_dict" names the model's entries "model.<name>").

    Loads with `weights_only=True` (no code in the file runs). Raises ValueError, with one line
    naming the file, for anything that is not such a file.
    """
    try:
        loaded = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"{path} is not a readable torch file ({one_line(err)})") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = {k[len("model."):]: v for k, v in loaded["state_dict"].items() if k.startswith("model.")}
    if not isinstance(loaded, Mapping) or not loaded or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()):
        raise ValueError(f"{path} holds no model state_dict (expected a mapping of names to tensors, "
                         f"or a Lightning checkpoint with 'model.' entries)")
    return OrderedDict(loaded)


def save_torch_state_dict(variables: Mapping[str, Any], path: str | Path) -> None:
    """Write flax variables as a torch state_dict file, readable by the Lightning side's --init-from.

    Written to a temporary name and renamed, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(flax_to_torch(variables), tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half file behind
        raise
