"""Generated JPEG folders: an ImageNet-shaped `imagefolder` (train/<class>/, val/<class>/) to try
ImageNet-class runs, test the streamed pipeline and benchmark it, with no download.

    python -m harness.photos data/photos                       # 10 classes, 80-200 px photos
    python -m harness.photos data/photos-big --per-class 100 --min-side 375 --max-side 500

Photos of mixed sizes and aspect ratios whose colour says their class (so a network can learn
them), with one greyscale and one CMYK JPEG and a class name with spaces, as real folders have.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("airplane", "cat", "dog", "golden retriever", "ship", "truck", "bird", "frog", "horse", "deer")


def photo(rng: np.random.Generator, label: int, min_side: int = 80, max_side: int = 200) -> Image.Image:
    """A smooth random picture of min_side..max_side px a side, whose colour says its class."""
    w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], dtype=np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    wave = 60 * np.sin(xx / rng.uniform(5, 20) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(5, 20))
    pixels = base + wave[..., None] + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_photo_folder(root: Path, per_class: int = 12, eval_per_class: int = 3, classes=CLASSES,
                      seed: int = 0, min_side: int = 80, max_side: int = 200) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", eval_per_class)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                image = photo(rng, label, min_side, max_side)
                if k == 1 and label == 0:
                    image = image.convert("L")  # greyscale JPEG
                if k == 2 and label == 0:
                    image = image.convert("CMYK")  # CMYK JPEG
                image.save(folder / f"{split}_{k:04d}.jpg", quality=90)
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m harness.photos", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder to create (train/ and val/ go inside)")
    parser.add_argument("--per-class", type=int, default=12, help="training photos per class")
    parser.add_argument("--eval-per-class", type=int, default=3, help="val/ photos per class")
    parser.add_argument("--min-side", type=int, default=80)
    parser.add_argument("--max-side", type=int, default=200)
    args = parser.parse_args()
    print(make_photo_folder(args.root, args.per_class, args.eval_per_class,
                            min_side=args.min_side, max_side=args.max_side))
