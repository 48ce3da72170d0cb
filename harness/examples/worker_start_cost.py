"""What starting the flax side's loader workers costs, by start method: the seconds from a fresh
train loader to its first batch (persistent workers start once a run, then serve every epoch),
with in-memory CIFAR-sized data and with a streamed photo folder.

    python harness/examples/worker_start_cost.py [--workers 2] [--repeats 3]

`fork` is what torch does by default on Linux, and what the flax side must not do: JAX's threads
are running in its process. docs/training.md holds the figures. The imports wait inside the
functions, as in flax_side/train.py: a worker that does not fork re-runs its main module's top level.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

METHODS = ("fork", "forkserver", "spawn")


def first_batch_seconds(data, method: str) -> float:
    loader = data.numpy_dataloader("train", start_method=method)
    start = time.perf_counter()
    next(iter(loader))
    seconds = time.perf_counter() - start
    loader._iterator = None  # ends its persistent workers
    return seconds


def measure(name: str, data, repeats: int) -> None:
    data.prepare_data()
    data.setup("fit")
    first_batch_seconds(data, "fork")  # warm the page cache and the imports
    for method in METHODS:
        times = [first_batch_seconds(data, method) for _ in range(repeats)]
        print(f"| {name} | {method} | {statistics.median(times):.2f} s | {min(times):.2f}-{max(times):.2f} s |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from datamodules import ImageDataModule
    from harness.photos import make_photo_folder

    print("| data | start method | first batch (median) | range |\n| --- | --- | ---: | ---: |")
    cifar_sized = ImageDataModule("synthetic", batch_size=128, num_workers=args.workers,
                                  synthetic_train_size=50_000, synthetic_test_size=10_000)
    measure("in memory, 50,000 images of 32 px", cifar_sized, args.repeats)
    with tempfile.TemporaryDirectory() as root:
        folder = make_photo_folder(Path(root), per_class=40, eval_per_class=5)
        streamed = ImageDataModule("imagefolder", data_dir=str(folder), batch_size=32,
                                   num_workers=args.workers, image_size=224)
        measure("streamed folder, 224 px", streamed, args.repeats)


if __name__ == "__main__":
    main()
