"""Checkpoints written whole or not at all.

Lightning's TorchCheckpointIO commits through an fsspec transaction whose temporary file lies in
the system's temp folder, so the final copy into --logdir can fail half way (a full disk) and
leave a truncated .ckpt under the real name. Here the file is written beside its destination
under a temporary name and renamed, which a file system does at once; a failed save removes its
partial file, and the checkpoints saved before stay as they were.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except OSError as err:  # name the checkpoint: torch.save writes to a file object
            partial.unlink(missing_ok=True)
            raise OSError(err.errno, err.strerror, str(path)) from err
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
