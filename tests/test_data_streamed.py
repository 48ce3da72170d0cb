"""Photos streamed from disk at any size: the bit-identical-batches contract, the transforms,
bad files mid-run, and memory that does not grow with the folder."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import ImageDataModule
from datamodules import datamodule as datamodule_module
from datamodules.transforms import eval_transform, train_transform
from harness.photos import CLASSES, make_photo_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("photos"), per_class=6, eval_per_class=2)


def _dm(root, workers=0, seed=0, size=48, batch=8):
    dm = ImageDataModule("imagefolder", data_dir=str(root), batch_size=batch, num_workers=workers,
                         seed=seed, image_size=size)
    dm.setup()
    return dm


def _numpy_epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [(np.asarray(x), np.asarray(y), bad) for x, y, bad in loader]


def _torch_epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
    out = []
    for x, y, bad in loader:
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        assert x.is_contiguous(memory_format=torch.channels_last)  # an NCHW view of NHWC memory
        out.append((x.permute(0, 2, 3, 1).numpy(), y.numpy(), bad))
    return out


def _same(a, b):
    assert len(a) == len(b)
    for (xa, ya, ba), (xb, yb, bb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert tuple(ba) == tuple(bb)


def test_folder_is_scanned_not_loaded(photos):
    dm = _dm(photos)
    assert dm.streamed and dm.image_shape == (48, 48, 3)
    assert dm.classes == tuple(sorted(CLASSES)) and "golden retriever" in dm.classes
    assert dm.num_train == 54 and len(dm.val_images) == 6  # 10% of 60 carved for validation
    # ImageNet's statistics: measuring the folder's would mean decoding it first.
    np.testing.assert_allclose(dm.mean, [123.675, 116.28, 103.53])


def test_batches_are_bit_identical_across_workers_and_sides(photos):
    serial, parallel = _dm(photos, workers=0), _dm(photos, workers=2)
    for epoch in (0, 3):
        reference = _numpy_epoch(serial.numpy_dataloader("train"), epoch)
        assert reference[0][0].shape == (8, 48, 48, 3) and reference[0][0].dtype == np.uint8
        _same(reference, _numpy_epoch(parallel.numpy_dataloader("train"), epoch))
        _same(reference, _torch_epoch(parallel.train_dataloader(), epoch))
    for split in ("val", "test"):
        reference = _numpy_epoch(serial.numpy_dataloader(split), 0)
        _same(reference, _torch_epoch(parallel._loader(split, datamodule_module.to_torch_nchw, False), 0))
        assert sum(len(y) for _, y, _ in reference) == len(getattr(serial, f"{split}_labels"))
    # The seed changes the order and the crops; the epoch changes them too.
    other = _numpy_epoch(_dm(photos, seed=1).numpy_dataloader("train"), 0)
    assert not np.array_equal(other[0][0], _numpy_epoch(serial.numpy_dataloader("train"), 0)[0][0])


def test_a_batch_depends_only_on_seed_epoch_and_index(photos):
    dm = _dm(photos)
    dataset = dm.numpy_dataloader("train").dataset
    fresh = _dm(photos).numpy_dataloader("train").dataset
    x, y, _ = dataset[(2, 4)]
    dataset[(0, 1)], dataset[(5, 0)]  # whatever came before
    x2, y2, _ = fresh[(2, 4)]
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_each_rank_decodes_its_rows_of_the_global_batch(photos):
    whole = _dm(photos).numpy_dataloader("train").dataset
    halves = []
    for rank in (0, 1):
        dm = _dm(photos)
        dm.shard(rank, 2)
        halves.append(dm.numpy_dataloader("train").dataset[(1, 2)])
    x, y, _ = whole[(1, 2)]
    np.testing.assert_array_equal(np.concatenate([h[0] for h in halves]), x)
    np.testing.assert_array_equal(np.concatenate([h[1] for h in halves]), y)
    assert len(halves[0][1]) == 4


def test_grey_and_cmyk_jpegs_come_out_rgb(photos):
    grey, cmyk = photos / "train" / "airplane" / "train_0001.jpg", photos / "train" / "airplane" / "train_0002.jpg"
    assert Image.open(grey).mode == "L" and Image.open(cmyk).mode == "CMYK"
    for path in (grey, cmyk):
        with Image.open(path) as image:
            out = train_transform(image, 32, np.random.default_rng(0), flip=True)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    with Image.open(grey) as image:
        out = eval_transform(image, 32)
    assert (out[..., 0] == out[..., 1]).all()  # grey stays grey


def test_evaluation_transform_is_torchvisions_resize_and_centre_crop():
    import torchvision.transforms as T

    rng = np.random.default_rng(0)
    for w, h, size in ((150, 97, 64), (97, 150, 64), (300, 300, 224), (120, 81, 32)):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # not a JPEG: no draft
        expected = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size)])(image)
        np.testing.assert_array_equal(eval_transform(image, size), np.asarray(expected))


def test_a_file_that_fails_to_decode_mid_run_is_replaced_counted_and_named_once(photos, tmp_path, caplog):
    import shutil

    root = shutil.copytree(photos, tmp_path / "photos")
    dms = [_dm(root, workers=w) for w in (0, 2)]
    labels = dms[0].train_labels
    # The victim's replacement, the next image of the split, is of another class.
    place = next(p for p in range(len(labels) - 1) if labels[p] != labels[p + 1])
    victim = Path(dms[0].train_images.name(place))
    # Truncated after the scan: its header still opens, its pixels fail once the crop is drawn.
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    epochs = [_numpy_epoch(dms[0].numpy_dataloader("train"), 0), _torch_epoch(dms[1].train_dataloader(), 0)]
    _same(*epochs)  # the same replacement on both sides, with any number of workers
    named = [bad for _, _, batch_bad in epochs[0] for bad in batch_bad]
    assert len(named) == 1 and str(victim) in named[0]
    with caplog.at_level("WARNING"):
        for _ in range(2):
            for _, _, bad in epochs[0]:
                dms[0].note_bad_images(bad)
    assert len(dms[0].bad_images) == 1
    assert sum(str(victim) in r.getMessage() for r in caplog.records) == 1  # named once
    # Replaced by the next image of the split: that image's own transform, with its label.
    dataset = dms[0].numpy_dataloader("train").dataset
    i, row = next((i, int(np.flatnonzero(idx == place)[0])) for i in range(len(dataset))
                  if place in (idx := dataset.batch_indices(0, i)))
    with Image.open(dms[0].train_images.name(place + 1)) as replacement:
        expected = train_transform(replacement, 48, np.random.default_rng([0, 0, i, row]), flip=True)
    np.testing.assert_array_equal(epochs[0][i][0][row], expected)
    assert epochs[0][i][1][row] == labels[place + 1] != labels[place]


def test_an_image_folder_too_large_for_memory_is_streamed(photos, monkeypatch):
    monkeypatch.setattr(datamodule_module, "in_memory_budget", lambda: 1000)
    dm = _dm(photos, size=32)
    assert dm.streamed
    x, _, _ = next(iter(dm.numpy_dataloader("train")))
    assert x.shape == (8, 32, 32, 3)
    monkeypatch.undo()
    assert not _dm(photos, size=32).streamed  # the 32 px default holds a small folder in memory


def test_synthetic_and_in_memory_sources_stream_at_any_size():
    synthetic = ImageDataModule("synthetic", batch_size=4, image_size=64, synthetic_train_size=40,
                                synthetic_test_size=8)
    synthetic.setup()
    x, y, _ = next(iter(synthetic.numpy_dataloader("train")))
    assert x.shape == (4, 64, 64, 3) and y.shape == (4,)
    digits = ImageDataModule("digits", batch_size=4, image_size=48)
    digits.setup()
    x, _, _ = next(iter(digits.numpy_dataloader("train")))
    assert x.shape == (4, 48, 48, 3) and not digits.hflip
    assert digits.mean[0] == digits.mean[1]  # measured on its grey images, not ImageNet's


MEMORY_PROBE = """
import json, resource, sys
from datamodules import ImageDataModule
dm = ImageDataModule("imagefolder", data_dir=sys.argv[1], batch_size=16, image_size=64)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
dm.setup()
loader = dm.numpy_dataloader("train")
for _ in loader:
    pass
print(json.dumps({"grew_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


@pytest.mark.slow  # decodes a large folder
def test_memory_does_not_grow_with_the_folder(tmp_path):
    # 400x300 photos: held decoded, 600 of them would take 216 MB, 1200 of them 432 MB.
    def folder(name, per_class):
        root = tmp_path / name
        rng = np.random.default_rng(0)
        for label in range(10):
            (root / "train" / str(label)).mkdir(parents=True)
            (root / "val" / str(label)).mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (1, 1, 3), dtype=np.uint8).repeat(300, 0).repeat(400, 1)
                Image.fromarray(pixels).save(root / "train" / str(label) / f"{k}.jpg")
            Image.fromarray(pixels).save(root / "val" / str(label) / "0.jpg")
        return root

    probes = {name: subprocess.Popen([sys.executable, "-c", MEMORY_PROBE, str(folder(name, per_class))],
                                     cwd=ROOT, stdout=subprocess.PIPE, text=True)  # each its own peak
              for name, per_class in (("small", 60), ("large", 120))}
    grew = {}
    for name, probe in probes.items():
        stdout, _ = probe.communicate(timeout=600)
        assert probe.returncode == 0, name
        grew[name] = json.loads(stdout.strip().splitlines()[-1])["grew_mb"]
    # The same peak within 15% of what decoding one more folder's worth would cost (216 MB).
    assert grew["large"] - grew["small"] < 0.15 * 216, grew
