"""Weights torch <-> NNX, through the linen side's converter, so the torch mapping is written once.

An NNX model's state is the linen variables by another name: `nnx.Param`s are linen's "params"
collection and `nnx.BatchStat`s its "batch_stats", under the same paths (nnx_side/models.py
names its submodules as linen does). So the two steps here are NNX state <-> the linen dict
{"params", "batch_stats"}, and flax_side/convert.py does the rest.

Loading is in place, as torch's `load_state_dict`: every variable of the model must be given,
with its shape, and nothing else; values take the model's dtypes. A model from `nnx.eval_shape`
(no weights drawn, nothing compiled) loads as well as a real one.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx, traverse_util

from flax_side.convert import flax_to_torch, torch_to_flax

# linen collection -> the NNX Variable type that holds it
COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


def nnx_to_linen(model: nnx.Module) -> dict[str, dict]:
    """The model's variables as linen's {"params": ..., "batch_stats": ...} (numpy copies)."""
    states = nnx.state(model, *COLLECTIONS.values())
    return {collection: traverse_util.unflatten_dict(
                {path: np.array(var.get_value()) for path, var in nnx.to_flat_state(state)})
            for collection, state in zip(COLLECTIONS, states)}


def linen_to_nnx(variables: Mapping[str, Any], model: nnx.Module) -> nnx.Module:
    """Set the model's variables from linen's {"params", "batch_stats"}; returns the model."""
    for collection, kind in COLLECTIONS.items():
        state = nnx.state(model, kind)
        have = dict(nnx.to_flat_state(state))
        given = traverse_util.flatten_dict(dict(variables.get(collection, {})))
        if have.keys() != given.keys():
            missing = sorted("/".join(p) for p in have.keys() - given.keys())
            unexpected = sorted("/".join(p) for p in given.keys() - have.keys())
            raise KeyError(f"{collection} do not fit the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
        values = {}
        for path, var in have.items():
            if tuple(np.shape(given[path])) != tuple(var.shape):
                raise ValueError(f"{collection}/{'/'.join(path)} has shape {np.shape(given[path])}, "
                                 f"the model's is {tuple(var.shape)}")
            values[path] = jnp.asarray(given[path], dtype=var.dtype)
        nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(values))
        nnx.update(model, state)
    return model


def torch_to_nnx(state_dict: Mapping[str, Any], model: nnx.Module) -> nnx.Module:
    """Load a torch state_dict of the twin network into the model; returns the model."""
    return linen_to_nnx(torch_to_flax(state_dict), model)


def nnx_to_torch(model: nnx.Module) -> "OrderedDict[str, torch.Tensor]":
    """The model's variables as a torch state_dict of the twin network."""
    return flax_to_torch(nnx_to_linen(model))
