"""The --dataset choices, apart from the loaders (sources.py) so that parsing flags, --help and
argparse's errors import neither torch nor Lightning."""

DATASETS = ("cifar10", "cifar100", "imagefolder", "digits", "synthetic")
