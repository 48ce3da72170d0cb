"""Shared data for both trainers: sources, batched augmentation, deterministic loaders.

Knows neither the Lightning side nor the Flax side, and never imports JAX.
"""

from .augment import random_crop_flip
from .datamodule import ImageDataModule
from .errors import DataError
from .sources import DATASETS

__all__ = ["DATASETS", "DataError", "ImageDataModule", "random_crop_flip"]
