"""The CIFAR ResNets both sides build, as one table: name -> (stage widths, blocks per stage, shortcut).

Shortcut "A" is He et al.'s option A (stride-2 subsampling plus zero-padded channels, no
parameters); "B" is a 1x1 conv + BatchNorm projection where the shape changes.
"""

ARCHITECTURES: dict[str, tuple[tuple[int, ...], int, str]] = {
    "resnet20": ((16, 32, 64), 3, "A"),
    "resnet32": ((16, 32, 64), 5, "A"),
    "resnet44": ((16, 32, 64), 7, "A"),
    "resnet56": ((16, 32, 64), 9, "A"),
    "resnet110": ((16, 32, 64), 18, "A"),
    "resnet18": ((64, 128, 256, 512), 2, "B"),
}
MODEL_NAMES = tuple(ARCHITECTURES)


def unknown_model_message(name: str) -> str:
    return f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)} with --model"
