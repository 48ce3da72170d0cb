"""Train a ResNet with the Flax NNX side of the harness.

    python nnx_side/train.py --dataset digits --epochs 10 --schedule cosine --warmup-epochs 1
    python nnx_side/train.py --resume last                                 # continue the newest run
    python nnx_side/train.py --help

The same flags as the other sides (common/config.py), and the flax side's process setup
(flax_side/train.py: compilation cache, host devices, several processes, a disk fault's exit);
the run is nnx_side/loop.py's. Runs land in logs/nnx/<run-name>/version_N.
"""

from flax_side.train import launch
from nnx_side import SIDE


def main(argv=None) -> None:
    launch(SIDE, "nnx_side.loop", argv)


if __name__ == "__main__":
    main()
