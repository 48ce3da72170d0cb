"""The streamed photos' training transform against torchvision itself: the pixels of a crop and a
flip, the crop boxes drawn, the scale bounds at their edges, and the loader using all of it."""

import io
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as F
from PIL import Image
from scipy import stats
from torchvision.transforms import InterpolationMode

from datamodules import ImageDataModule
from datamodules import transforms
from datamodules.transforms import resized_crop_params, train_transform
from harness.photos import make_photo_folder, photo

# (width, height, output size): down- and upsampling, portrait, landscape, square.
SHAPES = ((150, 97, 64), (97, 150, 32), (300, 300, 224), (40, 30, 48))


def _image(width, height, seed=0):
    """Random pixels, not a JPEG (so no draft decoding): torchvision sees the very same pixels."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _torchvision(image, box, size, mirror):
    out = F.resized_crop(image, *box, [size, size], InterpolationMode.BILINEAR)
    return np.asarray(F.horizontal_flip(out) if mirror else out)


class _Coin:
    """A generator whose only draw is the flip's `random()`: the crop box is fixed by the test."""

    def __init__(self, value):
        self.value = value

    def random(self):
        return self.value


@pytest.mark.parametrize("width,height,size", SHAPES)
def test_a_fixed_crop_and_flip_equal_torchvisions_resized_crop_and_flip(width, height, size, monkeypatch):
    image = _image(width, height)
    # Corners, edges flush right and bottom, the whole image, and a box much smaller than the output.
    boxes = [(0, 0, height // 2, width // 3), (height - 7, width - 9, 7, 9), (0, 0, height, width),
             (height // 4, width // 5, height // 2, width // 2), (3, 2, 5, 4)]
    for box in boxes:
        monkeypatch.setattr(transforms, "resized_crop_params", lambda w, h, rng, box=box: box)
        for coin, flip, mirror in ((0.2, True, True), (0.8, True, False), (0.2, False, False)):
            got = train_transform(image, size, _Coin(coin), flip=flip)
            np.testing.assert_array_equal(got, _torchvision(image, box, size, mirror), err_msg=f"{box} {coin} {flip}")
    # The image is not mirror-symmetric: a flip that was lost would show.
    assert not np.array_equal(_torchvision(image, boxes[3], size, True), _torchvision(image, boxes[3], size, False))


@pytest.mark.parametrize("width,height,size", SHAPES)
def test_a_seeded_crop_and_flip_follow_the_documented_draws(width, height, size):
    """The box from `resized_crop_params`, then the flip from the next `random() < 0.5`."""
    image = _image(width, height, seed=1)
    mirrored = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        box = resized_crop_params(width, height, rng)
        mirrored.append(rng.random() < 0.5)
        got = train_transform(image, size, np.random.default_rng(seed), flip=True)
        np.testing.assert_array_equal(got, _torchvision(image, box, size, mirrored[-1]), err_msg=str(seed))
    assert 0 < sum(mirrored) < len(mirrored)


class _TorchDraws:
    """The draws `resized_crop_params` asks for, made as torchvision's get_params makes them from
    torch's global generator: then the two must return the very same boxes."""

    def uniform(self, low, high):
        return torch.empty(1).uniform_(low, high).item()

    def integers(self, low, high):
        return torch.randint(low, high, size=(1,)).item()


def test_crop_boxes_are_torchvisions_random_resized_crop_under_the_same_draws():
    reference = T.RandomResizedCrop(224)  # torchvision's default scale (0.08, 1) and ratio (3/4, 4/3)
    boxes = set()
    # Landscape, portrait, square, ImageNet-like, and too wide for any ratio (the centre-crop fallback).
    for width, height in ((200, 120), (120, 200), (400, 400), (500, 375), (1000, 10), (33, 31)):
        image = Image.new("RGB", (width, height))
        with torch.random.fork_rng():  # torch's global generator is left as it was
            torch.manual_seed(width)
            for draw in range(300):
                state = torch.get_rng_state()
                expected = T.RandomResizedCrop.get_params(image, reference.scale, reference.ratio)
                torch.set_rng_state(state)
                assert resized_crop_params(width, height, _TorchDraws()) == expected, (width, height, draw)
                boxes.add(expected)
    assert len(boxes) > 1200  # the draws really vary


def _draws(width, height, count, seed=0):
    rng = np.random.default_rng(seed)
    boxes = np.array([resized_crop_params(width, height, rng) for _ in range(count)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (top + h <= height).all() and (left >= 0).all() and (left + w <= width).all()
    return h * w / (width * height), np.log(w / h)


def test_crop_scale_and_ratio_reach_torchvisions_bounds():
    """Area fraction in [0.08, 1], aspect ratio in [3/4, 4/3], each bound reached. At 400 px
    rounding moves a fraction by under 0.5%: a bound of 0.115 or 0.9 would fail here."""
    area, log_ratio = _draws(400, 400, 4000)
    # About 22 of 4000 draws fall in [0.08, 0.085) and about 19 above 0.95.
    assert 0.079 <= area.min() < 0.085 and 0.95 < area.max() <= 1.0
    assert math.log(3 / 4) - 0.01 <= log_ratio.min() < math.log(3 / 4) + 0.01
    assert math.log(4 / 3) - 0.01 < log_ratio.max() <= math.log(4 / 3) + 0.01


def test_crop_distribution_matches_torchvisions_draws():
    """The numpy generator's boxes against torchvision's own, drawn from torch: two-sample KS tests
    on the area fraction and the log aspect ratio."""
    area, log_ratio = _draws(500, 375, 3000, seed=1)
    image, reference = Image.new("RGB", (500, 375)), T.RandomResizedCrop(224)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        theirs = np.array([T.RandomResizedCrop.get_params(image, reference.scale, reference.ratio)
                           for _ in range(3000)])
    assert stats.ks_2samp(area, theirs[:, 2] * theirs[:, 3] / (500 * 375)).pvalue > 0.01
    assert stats.ks_2samp(log_ratio, np.log(theirs[:, 3] / theirs[:, 2])).pvalue > 0.01


def test_a_drafted_jpeg_is_cropped_where_the_full_decode_is():
    """A large JPEG decodes at 1/2..1/8 scale (draft mode), so torchvision's pixels are out of
    reach; the crop must still cover the same region as on the fully decoded image."""
    pixels = photo(np.random.default_rng(0), 3, 400, 500)
    buffer = io.BytesIO()
    pixels.save(buffer, format="JPEG", quality=90)
    for seed in range(6):
        with Image.open(io.BytesIO(buffer.getvalue())) as jpeg, Image.open(io.BytesIO(buffer.getvalue())) as full:
            full.load()
            full = full.copy()  # no format any more: decoded at full size
            drafted = train_transform(jpeg, 32, np.random.default_rng(seed), flip=True).astype(int)
            assert jpeg.size[0] <= pixels.size[0] // 2  # the draft did happen
            reference = train_transform(full, 32, np.random.default_rng(seed), flip=True).astype(int)
        assert np.abs(drafted - reference).mean() < 10, seed


def test_the_training_loader_serves_these_transforms_with_the_flip(tmp_path):
    """Row k of batch i of epoch e is the transform of its file under the generator seeded
    (seed, e, i, k), flip on: the loader adds, drops or reorders nothing."""
    root = make_photo_folder(tmp_path, per_class=2, eval_per_class=1)
    dm = ImageDataModule("imagefolder", data_dir=str(root), batch_size=8, seed=3, image_size=40)
    dm.setup()
    dataset = dm.numpy_dataloader("train").dataset
    mirrored = []
    for epoch, i in ((0, 0), (1, 1)):
        x, y, _ = dataset[(epoch, i)]
        for k, index in enumerate(dataset.batch_indices(epoch, i)):
            with Image.open(dm.train_images.name(int(index))) as image:
                size = image.size
                expected = train_transform(image, 40, np.random.default_rng([3, epoch, i, k]), flip=True)
            np.testing.assert_array_equal(x[k], expected)
            assert y[k] == dm.train_labels[index]
            rng = np.random.default_rng([3, epoch, i, k])
            resized_crop_params(*size, rng)
            mirrored.append(rng.random() < 0.5)
    assert 0 < sum(mirrored) < len(mirrored)
