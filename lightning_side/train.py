"""Train a CIFAR ResNet with the Lightning side of the harness.

    python lightning_side/train.py --dataset digits --epochs 10 --schedule cosine --warmup-epochs 1
    python lightning_side/train.py --help

The flags are shared with the other side (harness/config.py); runs land in
logs/lightning/<run-name>/version_N for `tensorboard --logdir logs`.
"""

from harness.config import parse_config


def main(argv=None) -> None:
    config = parse_config("lightning", argv)
    raise SystemExit("the Lightning trainer is not built yet; see the open trainer issue")


if __name__ == "__main__":
    main()
