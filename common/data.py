"""The one DataModule both sides build from the flags, so that they see the same batches."""

from __future__ import annotations

from common.config import TrainConfig
from datamodules import ImageDataModule


def create_datamodule(config: TrainConfig) -> ImageDataModule:
    """The shared DataModule for these flags, its data found (or downloaded) and split."""
    data = ImageDataModule(dataset=config.dataset, data_dir=config.data_dir, batch_size=config.batch_size,
                           num_workers=config.num_workers, seed=config.seed, image_size=config.image_size)
    data.prepare_data()
    data.setup()
    return data
