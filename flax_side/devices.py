"""The devices a run trains on: the mesh, the loader's batches placed on it, and their memory.

Data parallelism is `jax.sharding`: a 1-D mesh over the first --devices local devices, every
batch split along it, the state replicated; under jit, BatchNorm statistics and gradients are
over the global batch, so the numbers do not depend on the device count.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from common.errors import TrainingError
from common.runs import host_peak_memory_mb

if TYPE_CHECKING:  # the benchmark compiles the steps without loading the DataModule (and torch)
    from datamodules import ImageDataModule


def create_mesh(num_devices: int) -> Mesh:
    """A 1-D mesh over the first `num_devices` local devices of every process, process 0's first:
    the rows of a global batch follow that order, so process p holds the DataModule's shard p."""
    local = jax.local_devices()
    if len(local) < num_devices:
        raise TrainingError(f"--devices {num_devices}: only {len(local)} {local[0].platform} "
                            f"device(s) here; lower --devices")
    devices = [d for p in range(jax.process_count())
               for d in sorted((d for d in jax.devices() if d.process_index == p),
                               key=lambda d: d.id)[:num_devices]]
    return Mesh(np.array(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    """The state's sharding: a whole copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """A batch's sharding: its rows split along the mesh."""
    return NamedSharding(mesh, P("data"))


def create_loaders(data: ImageDataModule) -> dict[str, Iterable]:
    """The numpy loaders of the train, val and test splits; with several processes, each loads
    its rows of every global batch."""
    if jax.process_count() > 1:
        data.shard(jax.process_index(), jax.process_count())
    return {split: data.numpy_dataloader(split) for split in ("train", "val", "test")}


def without_names(batches: Iterable, note_bad_images: Callable) -> Iterator:
    """(images, labels) of each loader batch; its third item, the names of images that failed to
    decode and were replaced, goes to the DataModule (which counts and names them)."""
    for images, labels, bad in batches:
        note_bad_images(bad)
        yield images, labels


def global_batch(local: Any, sharding: NamedSharding) -> Any:
    """One global array per leaf from this process's rows of it (all of them in one process)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def prefetch_to_device(batches: Iterable, sharding: NamedSharding, size: int = 2) -> Iterator:
    """The batches as global device arrays, `size` of them on their way to the devices ahead of
    the step that uses them (flax's prefetch_to_device, for jax.sharding rather than pmap)."""
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append(global_batch(batch, sharding))
        if len(queue) == size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def peak_memory_mb() -> float:
    """Peak memory of the training device: XLA's allocator on a GPU, the process's RSS on a CPU."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return host_peak_memory_mb()
