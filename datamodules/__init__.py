"""Shared data for both trainers: sources, batched augmentation, deterministic loaders.

Knows neither the Lightning side nor the Flax side, and never imports JAX. Its names are imported
when first used (PEP 562), so `common.config` can read DATASETS without loading Lightning: a
train.py's --help and its flag errors come back in about a second instead of seven.
"""

import importlib

from .names import DATASETS

_LAZY = {"DataError": ".errors", "ImageDataModule": ".datamodule", "random_crop_flip": ".augment"}

__all__ = ["DATASETS", "DataError", "ImageDataModule", "random_crop_flip"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
