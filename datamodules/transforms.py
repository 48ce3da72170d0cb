"""Per-image transforms of streamed photos: torchvision's ImageNet recipe, drawn from numpy.

Training: RandomResizedCrop(S, scale=(0.08, 1), ratio=(3/4, 4/3)) + horizontal flip. Evaluation:
resize the short side to round(S * 256 / 224), then centre-crop S (torchvision's Resize(int) +
CenterCrop). The crop parameters follow torchvision's `RandomResizedCrop.get_params` step for
step, but are drawn from a `numpy.random.Generator` seeded by the image's place in the run, not
from torch's global RNG, so the same image gets the same crop in any worker and on both sides.

Decoding is PIL's (libjpeg-turbo), with JPEG draft mode: the decoder scales the DCT down by 1/2,
1/4 or 1/8 whenever the result still has at least the pixels the final resize needs, which
makes a large photo several times cheaper to decode (docs/models-and-data.md).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)


def resized_crop_params(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop, torchvision's algorithm: up to 10 tries of
    a random area fraction and log-uniform aspect ratio, then a centre crop of the clamped ratio.

    Draws, in order, per try: `rng.uniform(*SCALE)`, `rng.uniform(log 3/4, log 4/3)`, and on
    success `rng.integers(0, H - h + 1)`, `rng.integers(0, W - w + 1)`."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _draft(image: Image.Image, width: int, height: int) -> tuple[float, float]:
    """Let a JPEG decode at a reduced scale that still has width x height pixels; returns the
    factors from original to decoded coordinates (1.0 for other formats)."""
    full = image.size
    if image.format == "JPEG":
        image.draft(image.mode, (max(1, width), max(1, height)))
    return image.size[0] / full[0], image.size[1] / full[1]


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")  # grey, CMYK, palette, RGBA


def train_transform(image: Image.Image, size: int, rng: np.random.Generator, flip: bool) -> np.ndarray:
    """uint8 (size, size, 3): a random resized crop, mirrored with probability 1/2 if `flip`.
    The flip is drawn after the crop: `rng.random() < 0.5`."""
    width, height = image.size
    top, left, h, w = resized_crop_params(width, height, rng)
    mirror = flip and rng.random() < 0.5
    sx, sy = _draft(image, math.ceil(width * size / w), math.ceil(height * size / h))
    out = _crop_resize(_rgb(image), (left * sx, top * sy, (left + w) * sx, (top + h) * sy), size)
    return out[:, ::-1] if mirror else out


def _crop_resize(image: Image.Image, box: tuple[float, ...], size: int) -> np.ndarray:
    """torchvision's crop, then resize: the filter reads no pixel outside the crop (PIL's
    resize(box=) alone would read past its edges, changing the border rows and columns). After a
    JPEG draft the box may fall between pixels: crop the whole pixels around it, resize the box."""
    x0, y0 = math.floor(box[0]), math.floor(box[1])
    x1, y1 = min(math.ceil(box[2]), image.size[0]), min(math.ceil(box[3]), image.size[1])
    inner = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
    crop = image.crop((x0, y0, x1, y1))
    return np.asarray(crop.resize((size, size), Image.BILINEAR, box=inner), dtype=np.uint8)


def eval_transform(image: Image.Image, size: int) -> np.ndarray:
    """uint8 (size, size, 3): short side resized to round(size * 256 / 224), centre crop."""
    short = round(size * 256 / 224)
    width, height = image.size
    if width <= height:
        new = (short, int(short * height / width))
    else:
        new = (int(short * width / height), short)
    _draft(image, *new)
    resized = _rgb(image).resize(new, Image.BILINEAR)
    top = int(round((new[1] - size) / 2.0))
    left = int(round((new[0] - size) / 2.0))
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
