"""One flag set for both train.py files: same names, same meaning, same defaults.

Values come from, in rising priority: the defaults below (the recipe of He et al. 2016), a YAML file
given with --config, and the command line. Both sides call `parse_config()`; neither defines flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from datamodules.names import DATASETS
from common.architectures import MODEL_NAMES, default_image_size
from common.sides import TITLES

MODELS = MODEL_NAMES
SCHEDULES = ("multistep", "cosine", "onecycle")
PRECISIONS = ("auto", "32", "16-mixed", "bf16-mixed", "64-true")


def _flag(help: str, default: Any = None, **argparse_kwargs: Any) -> Any:
    metadata = {"help": help, **argparse_kwargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    model: str = _flag("network to train: He et al.'s CIFAR ResNets (resnet20..110, resnet18-cifar) "
                       "or torchvision's ImageNet ResNets (resnet18, resnet34, resnet50)", "resnet20",
                       choices=MODELS)
    image_size: int = _flag("side of the square images the network sees (default: 32 for the CIFAR "
                            "networks, 224 for resnet18/34/50); above 32, images are decoded per "
                            "batch in the loader's workers, never all held in memory", None)
    zero_init_residual: bool = _flag("start the last BatchNorm of every residual block at scale 0, "
                                     "so each block starts as the identity (torchvision's option)",
                                     False)
    dataset: str = _flag("data source; 'digits' ships with scikit-learn and needs no network",
                         "cifar10", choices=DATASETS)
    data_dir: str = _flag("where datasets are read from (and CIFAR downloaded to)", "./data")
    epochs: int = _flag("training epochs (182 epochs of 351 steps = the paper's 64k iterations)", 182)
    batch_size: int = _flag("global training batch size (over all devices)", 128)
    lr: float = _flag("peak learning rate", 0.1)
    momentum: float = _flag("SGD momentum", 0.9)
    nesterov: bool = _flag("Nesterov momentum", True)
    weight_decay: float = _flag("L2 weight decay added to the gradient of conv and linear weights "
                                "(never BatchNorm or biases), as torch.optim.SGD does", 1e-4)
    schedule: str = _flag("learning-rate schedule, advanced every optimizer step", "multistep",
                          choices=SCHEDULES)
    milestones: list[float] = _flag("multistep: fractions of the total steps at which the LR is "
                                    "divided by 10 (paper: 32k and 48k of 64k)", [0.5, 0.75])
    warmup_epochs: float = _flag("linear warm-up from 0 to --lr over this many epochs "
                                 "(onecycle: the rising phase)", 0.0)
    label_smoothing: float = _flag("label smoothing of the cross-entropy loss", 0.0)
    precision: str = _flag("auto = 16-mixed on GPU, 32 on CPU; 64-true for exact parity checks",
                           "auto", choices=PRECISIONS)
    seed: int = _flag("seed of initialisation, data order and augmentation", 0)
    logdir: str = _flag("TensorBoard root: runs land in LOGDIR/<side>/<run-name>/version_N", "logs")
    run_name: str = _flag("run name (default: <model>-<dataset>)", None)
    resume: str = _flag("'last' (newest version of --run-name) or a checkpoint path", None)
    init_from: str = _flag("start from these weights: a torch state_dict or either side's checkpoint",
                           None)
    devices: int = _flag("devices to train on per node (flax on CPU: host devices)", 1)
    num_nodes: int = _flag("hosts taking part, one training process each on the flax side "
                           "(Lightning: one per device); see docs/several-gpus.md", 1)
    node_rank: int = _flag("this host's index in 0..NUM_NODES-1 (default: from the environment: "
                           "NODE_RANK / SLURM for Lightning, JAX's cluster detection for flax)", None)
    coordinator_address: str = _flag("HOST:PORT of node 0, where the processes meet (default: from the "
                                     "environment: MASTER_ADDR/MASTER_PORT, JAX_COORDINATOR_ADDRESS)",
                                     None)
    compile: bool = _flag("Lightning: torch.compile the LightningModule (faster steps after a "
                          "compilation that inductor caches after the first run); flax's steps are always "
                          "jit-compiled, so there it changes nothing", False)
    num_workers: int = _flag("data-loading worker processes", 0)
    log_every: int = _flag("write train/* scalars every N optimizer steps", 50)
    limit_train_batches: int = _flag("at most N training batches per epoch (quick checks)", None)
    limit_val_batches: int = _flag("at most N validation batches per epoch (quick checks)", None)
    limit_test_batches: int = _flag("at most N batches of the test split (quick checks)", None)

    def __post_init__(self) -> None:
        if self.run_name is None:
            self.run_name = f"{self.model}-{self.dataset}"
        if self.image_size is None and self.model in MODELS:
            self.image_size = default_image_size(self.model)

    def validate(self) -> list[str]:
        """Problems a user can fix, each as one line naming the flag."""
        problems = []
        if self.image_size is not None and self.image_size < 8:
            problems.append(f"--image-size must be at least 8 pixels, got {self.image_size}")
        for name in ("epochs", "batch_size", "log_every", "devices", "num_nodes"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if self.node_rank is not None and not 0 <= self.node_rank < max(self.num_nodes, 1):
            problems.append(f"--node-rank must be in 0..{self.num_nodes - 1} for --num-nodes "
                            f"{self.num_nodes}, got {self.node_rank}")
        if self.coordinator_address is not None and not _is_host_port(self.coordinator_address):
            problems.append(f"--coordinator-address must be HOST:PORT, got {self.coordinator_address!r}")
        replicas = self.devices * self.num_nodes
        if self.batch_size >= 1 and replicas >= 1 and self.batch_size % replicas:
            problems.append(f"--batch-size {self.batch_size} does not split evenly over {replicas} "
                            f"devices (--devices x --num-nodes); choose a multiple of {replicas}")
        if self.num_workers < 0:
            problems.append(f"--num-workers must be >= 0, got {self.num_workers}")
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "label_smoothing"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                problems.append(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.label_smoothing >= 1:
            problems.append(f"--label-smoothing must be below 1, got {self.label_smoothing}")
        if any(not 0 < m < 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            problems.append(f"--milestones must be increasing fractions between 0 and 1, got {self.milestones}")
        if self.warmup_epochs >= self.epochs and self.schedule != "multistep":
            problems.append(f"--warmup-epochs ({self.warmup_epochs}) must be shorter than --epochs ({self.epochs})")
        return problems

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def _add_flags(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default: {default})")
            continue
        kind = {"int": int, "float": float, "str": str, "list[float]": float}[str(f.type)]
        if str(f.type).startswith("list"):
            meta["nargs"] = "+"
        if "choices" not in meta:
            meta["metavar"] = f.name.upper()
        parser.add_argument(flag, type=kind, default=None,
                            help=f"{help_text} (default: {default})", **meta)


def build_parser(side: str, **argparse_kwargs: Any) -> argparse.ArgumentParser:
    """The train.py parser of `side`; argparse_kwargs (prog, description, parents, ...) override."""
    settings = dict(
        prog=f"python {side}_side/train.py",
        description=f"Train a ResNet with the {TITLES[side]} side of the harness. "
                    "The other sides' train.py files take the very same flags.",
        epilog="Example: python %s_side/train.py --dataset digits --epochs 10 --schedule cosine "
               "--warmup-epochs 1" % side)
    parser = argparse.ArgumentParser(**{**settings, **argparse_kwargs})
    parser.add_argument("--config", metavar="FILE",
                        help="YAML file of flag values (keys as in --help, with - or _); "
                             "flags on the command line win")
    _add_flags(parser)
    return parser


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist; check the path given to --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise ValueError(f"config file {path} is not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of flag names to values")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ValueError(f"config file {path}: unknown key {key!r}; see --help for the flags")
        values[name] = _coerce(name, value, path)
    return values


def _coerce(name: str, value: Any, path: Path) -> Any:
    # YAML reads 1e-4 as a string and 10 as an int where a float is meant: convert like the flag would.
    kind = str(next(f.type for f in dataclasses.fields(TrainConfig) if f.name == name))
    if value is None:
        return None
    try:
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind.startswith("list"):
            return [float(v) for v in (value if isinstance(value, list) else [value])]
        return {"int": int, "float": float, "str": str}[kind](value)
    except (TypeError, ValueError):
        raise ValueError(f"config file {path}: {name} = {value!r} is not a valid {kind}") from None


def save_yaml(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def parse_config(side: str, argv: Sequence[str] | None = None,
                 parser: argparse.ArgumentParser | None = None) -> TrainConfig:
    """Defaults < --config YAML < command line; exits 2 with one line on bad input.

    `parser` may add flags of its own to build_parser's; they are left out of the config."""
    parser = parser or build_parser(side)
    args = parser.parse_args(argv)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    if args.config:
        try:
            values.update(load_yaml(args.config))
        except ValueError as err:
            parser.error(str(err))
    values.update({k: v for k, v in vars(args).items() if k in known and v is not None})
    try:
        config = TrainConfig(**values)
    except TypeError as err:
        parser.error(str(err))
    for f in dataclasses.fields(TrainConfig):  # YAML values get the same checks as flags
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            parser.error(f"--{f.name.replace('_', '-')}: {getattr(config, f.name)!r} is not one of "
                         f"{', '.join(choices)}")
    problems = config.validate()
    if problems:
        parser.error("; ".join(problems))
    return config
