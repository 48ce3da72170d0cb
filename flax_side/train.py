"""Train a CIFAR ResNet with the Flax side of the harness.

    python flax_side/train.py --dataset digits --epochs 10 --schedule cosine --warmup-epochs 1
    python flax_side/train.py --help

The flags are shared with the other side (harness/config.py); runs land in
logs/flax/<run-name>/version_N for `tensorboard --logdir logs`.
"""

from harness.config import parse_config


def main(argv=None) -> None:
    config = parse_config("flax", argv)
    raise SystemExit("the Flax trainer is not built yet; see the open trainer issue")


if __name__ == "__main__":
    main()
