"""Train a ResNet with the Flax side of the harness.

    python flax_side/train.py --dataset digits --epochs 10 --schedule cosine --warmup-epochs 1
    python flax_side/train.py --dataset digits --epochs 2 --devices 2     # two host devices on CPU
    python flax_side/train.py --num-nodes 2 --node-rank 0 --coordinator-address node0:1234  # and 1 on node1
    python flax_side/train.py --resume last                                # continue the newest run
    python flax_side/train.py --help

The flags are shared with the other side (common/config.py); runs land in
logs/flax/<run-name>/version_N for `tensorboard --logdir logs`. The work is done by
flax_side/loop.py; this file parses the flags, prepares the devices and reports errors.
"""

import importlib
import multiprocessing
import os
import sys
from pathlib import Path

from common.config import parse_config
from common.errors import fail, one_line, run_main


def main(argv=None) -> None:
    launch("flax", "flax_side.loop", argv)


def launch(side: str, driver: str, argv=None) -> None:
    """main() of this side and of the NNX side (nnx_side/train.py): the flags of `side`, then the
    `train_and_evaluate(config)` of the module named `driver`, imported once JAX may start."""
    config = parse_config(side, argv)
    # XLA's persistent compilation cache: a second run of the same step skips its compilation.
    # JAX_COMPILATION_CACHE_DIR overrides.
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lightning-vs-flax" / "jax"
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
    # Host devices must be requested before JAX starts, so JAX is imported only below.
    if config.devices > 1:
        flag = f"--xla_force_host_platform_device_count={config.devices}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    if config.num_nodes > 1:
        join_processes(config)

    run = importlib.import_module(driver)
    run_main(lambda: run.train_and_evaluate(config), config.logdir,
             on_disk_fault=lambda code: leave_at_once(code))


def leave_at_once(code: int) -> None:
    """After a disk fault's line: Orbax's writer threads still hold the failed save's futures, and
    at interpreter exit TensorStore calls them back into a closed event loop, each with a traceback.
    The run's files are closed by now (version_folder.py's VersionFolder), so leave at once, and
    take the loader workers of --num-workers along: os._exit skips their shutdown, and they would
    live on."""
    sys.stdout.flush()
    for worker in multiprocessing.active_children():
        worker.kill()
    os._exit(code)


def join_processes(config) -> None:
    """jax.distributed: one process per node, each driving its --devices local devices.

    Flags left out come from JAX's cluster detection (SLURM, Open MPI, ...) or JAX_COORDINATOR_ADDRESS.
    """
    import jax

    try:
        jax.distributed.initialize(config.coordinator_address, num_processes=config.num_nodes,
                                   process_id=config.node_rank)
    except Exception as err:  # JAX raises several types; keep one line
        fail(f"cannot join the {config.num_nodes} processes of this run ({one_line(err)}); start every "
             f"node with the same --num-nodes and --coordinator-address, and its own --node-rank")


if __name__ == "__main__":
    main()
