"""The networks both sides build, as two tables, and the image size each expects by default.

CIFAR ResNets (He et al. 2016, 32 px): name -> (stage widths, blocks per stage, shortcut).
Shortcut "A" is option A (stride-2 subsampling plus zero-padded channels, no parameters); "B" is
a 1x1 conv + BatchNorm projection where the shape changes.

ImageNet ResNets (torchvision's, v1.5: the stride sits on the 3x3 conv; 224 px): name -> (block,
blocks per stage), with torchvision's stage widths 64-128-256-512 (x4 out of a bottleneck).
"""

CIFAR_ARCHITECTURES: dict[str, tuple[tuple[int, ...], int, str]] = {
    "resnet20": ((16, 32, 64), 3, "A"),
    "resnet32": ((16, 32, 64), 5, "A"),
    "resnet44": ((16, 32, 64), 7, "A"),
    "resnet56": ((16, 32, 64), 9, "A"),
    "resnet110": ((16, 32, 64), 18, "A"),
    "resnet18-cifar": ((64, 128, 256, 512), 2, "B"),
}
IMAGENET_ARCHITECTURES: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
MODEL_NAMES = (*CIFAR_ARCHITECTURES, *IMAGENET_ARCHITECTURES)


def default_image_size(model: str) -> int:
    """--image-size when none is given: what the network was designed for."""
    return 224 if model in IMAGENET_ARCHITECTURES else 32


def unknown_model_message(name: str) -> str:
    return f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)} with --model"
