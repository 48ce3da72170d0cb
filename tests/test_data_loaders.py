"""Loaders: both sides see bit-identical batches in the same order, whatever the worker count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules import ImageDataModule, random_crop_flip
from datamodules.batches import BatchDataset, EpochBatchSampler, to_numpy_nhwc, to_torch_nchw


def _dm(dataset="digits", seed=0, num_workers=0, batch_size=64, **kw):
    dm = ImageDataModule(dataset, batch_size=batch_size, seed=seed, num_workers=num_workers, **kw)
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def dm():
    return _dm()


def _epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [(np.asarray(x), np.asarray(y)) for x, y, _ in loader]


def _torch_epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
    out = []
    for x, y, _ in loader:
        assert x.dtype == torch.uint8 and x.ndim == 4 and x.shape[1] == 3 and y.dtype == torch.int64
        out.append((x.permute(0, 2, 3, 1).numpy(), y.numpy()))  # back to NHWC to compare
    return out


def _assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_torch_and_numpy_loaders_agree_for_0_and_2_workers():
    dm0 = _dm(num_workers=0)
    ref = _epoch(dm0.numpy_dataloader("train"), 1)
    assert len(ref) == dm0.steps_per_epoch == (1437 - 144) // 64
    for x, y in ref:
        assert x.dtype == np.uint8 and x.shape == (64, 32, 32, 3) and x.flags.c_contiguous and y.dtype == np.int32
    _assert_same(_torch_epoch(dm0.train_dataloader(), 1), ref)

    dm2 = _dm(num_workers=2)
    torch_loader, numpy_loader = dm2.train_dataloader(), dm2.numpy_dataloader("train")
    assert torch_loader.num_workers == 2 and torch_loader.persistent_workers
    assert numpy_loader.pin_memory is False
    _assert_same(_torch_epoch(torch_loader, 1), ref)
    _assert_same(_epoch(numpy_loader, 1), ref)
    # Persistent workers still follow set_epoch, since the keys come from the main process.
    _assert_same(_epoch(numpy_loader, 2), _epoch(dm0.numpy_dataloader("train"), 2))
    _assert_same(_torch_epoch(dm2.val_dataloader(), 0), _epoch(dm0.numpy_dataloader("val"), 0))


def test_torch_batch_is_channels_last_view(dm):
    x, y, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_the_lightning_module_normalises_uint8_on_the_device():
    """The loaders' uint8 batches are normalised in the module's forward, on the device."""
    from lightning_side.module import ResNetModule

    module = ResNetModule(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))
    images = torch.full((1, 3, 32, 32), 40, dtype=torch.uint8)
    seen = {}
    module.model.forward = lambda x: seen.setdefault("x", x)
    module(images)
    assert torch.allclose(seen["x"][0, :, 0, 0], torch.tensor([15.0, 5.0, 2.0]))


def test_train_batches_follow_the_documented_recipe():
    # The cross-framework contract, spelled out: perm from [seed, epoch], aug rng from [seed, epoch, i].
    dm = _dm("synthetic", seed=5, batch_size=32, synthetic_train_size=300, synthetic_test_size=40)
    assert dm.hflip is True
    batches = _epoch(dm.numpy_dataloader("train"), 3)
    n = dm.num_train
    perm = np.random.default_rng([5, 3]).permutation(n)
    for i, (x, y) in enumerate(batches):
        idx = perm[i * 32 : (i + 1) * 32]
        expected = random_crop_flip(dm.train_images[idx], np.random.default_rng([5, 3, i]), flip=True)
        np.testing.assert_array_equal(x, expected)
        np.testing.assert_array_equal(y, dm.train_labels[idx])
    # The last partial batch is dropped; no image appears twice in an epoch.
    assert len(batches) == n // 32
    seen = np.concatenate([perm[i * 32 : (i + 1) * 32] for i in range(len(batches))])
    assert len(np.unique(seen)) == len(seen) == (n // 32) * 32


def test_digits_train_batches_are_never_flipped(dm):
    x, y = _epoch(dm.numpy_dataloader("train"), 0)[0]
    idx = np.random.default_rng([0, 0]).permutation(dm.num_train)[:64]
    np.testing.assert_array_equal(x, random_crop_flip(dm.train_images[idx], np.random.default_rng([0, 0, 0]), flip=False))


def test_epochs_and_seeds(dm):
    loader = dm.numpy_dataloader("train")
    e0, e1, e0_again = _epoch(loader, 0), _epoch(loader, 1), _epoch(loader, 0)
    _assert_same(e0, e0_again)
    assert not np.array_equal(e0[0][1], e1[0][1])  # a new order every epoch
    other = _epoch(_dm(seed=1).numpy_dataloader("train"), 0)
    assert not np.array_equal(e0[0][1], other[0][1])
    assert not np.array_equal(e0[0][0], other[0][0])


def test_eval_loader_keeps_partial_batch_and_covers_every_image_once():
    dm = _dm(eval_batch_size=50)
    for split, images, labels in (("val", dm.val_images, dm.val_labels), ("test", dm.test_images, dm.test_labels)):
        for loader in (dm.numpy_dataloader(split), getattr(dm, f"{split}_dataloader")()):
            batches = _epoch(loader, 7)  # the epoch does not matter for evaluation
            if split == "val":
                assert [len(y) for _, y in batches] == [50, 50, 44]
            xs = np.concatenate([x if x.shape[-1] == 3 else x.transpose(0, 2, 3, 1) for x, _ in batches])
            np.testing.assert_array_equal(xs, images)  # in order, unaugmented, each exactly once
            np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels)
    _assert_same(_epoch(dm.numpy_dataloader("val"), 0), _epoch(dm.numpy_dataloader("val"), 3))


def test_val_split_is_disjoint_and_independent_of_the_run_seed():
    a, b = _dm(seed=0), _dm(seed=123)
    assert not set(a.train_indices) & set(a.val_indices)
    assert sorted(np.concatenate([a.train_indices, a.val_indices])) == list(range(1437))
    np.testing.assert_array_equal(a.val_indices, b.val_indices)
    np.testing.assert_array_equal(a.val_images, b.val_images)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    # val_size overrides the 10% default, still from the fixed split seed.
    c = _dm(val_size=100)
    assert len(c.val_images) == 100 and c.num_train == 1337


def test_mean_and_std_come_from_the_train_split():
    dm = _dm("synthetic", batch_size=16, synthetic_train_size=400, synthetic_test_size=20, val_size=100)
    assert dm.mean.dtype == np.float64 and dm.mean.shape == (3,) and dm.std.shape == (3,)
    ref = dm.train_images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(dm.mean, ref.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(dm.std, ref.std(axis=0), rtol=1e-12)
    whole = np.concatenate([dm.train_images, dm.val_images]).reshape(-1, 3).astype(np.float64)
    assert not np.allclose(dm.mean, whole.mean(axis=0), rtol=1e-9)  # the val images are left out
    digits = _dm()
    np.testing.assert_allclose(digits.mean, digits.train_images.reshape(-1, 3).mean(axis=0), rtol=1e-12)
    assert digits.mean[0] == digits.mean[1] == digits.mean[2]  # grey -> RGB


def test_sharding_slices_the_global_batch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(100, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=100)
    for train, batch in ((True, 16), (False, 30)):
        whole = BatchDataset(images, labels, batch, train=train, seed=3)
        ranks = [BatchDataset(images, labels, batch, train=train, seed=3, rank=r, world_size=2) for r in (0, 1)]
        assert len(ranks[0]) == len(whole)
        for i in range(len(whole)):
            x, y, _ = whole[(2, i)]
            parts = [ds[(2, i)] for ds in ranks]
            assert len(parts[0][1]) == len(y) // 2  # contiguous halves
            np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
            np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)

    dm = _dm()
    full = _epoch(dm.numpy_dataloader("train"), 4)
    dm.shard(1, 2)
    half = _epoch(dm.numpy_dataloader("train"), 4)
    np.testing.assert_array_equal(half[0][0], full[0][0][32:])
    with pytest.raises(Exception, match="--batch-size"):
        dm.shard(0, 3)


def test_sampler_and_collate_functions():
    sampler = EpochBatchSampler(3)
    assert list(sampler) == [(0, 0), (0, 1), (0, 2)] and len(sampler) == 3
    sampler.set_epoch(5)
    assert list(sampler) == [(5, 0), (5, 1), (5, 2)]
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    labels = np.array([3, 7], dtype=np.int64)
    x, y, bad = to_torch_nchw((images, labels, ("a.jpg",)))
    assert bad == ("a.jpg",)
    assert x.shape == (2, 3, 4, 4) and y.dtype == torch.int64
    np.testing.assert_array_equal(x.numpy(), images.transpose(0, 3, 1, 2))
    xn, yn, _ = to_numpy_nhwc((images, labels, ()))
    assert yn.dtype == np.int32 and xn.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(xn, images)


def test_lightning_sets_the_epoch_on_our_sampler():
    # Lightning's own hook, the one its fit loop runs at every epoch start.
    from lightning.fabric.utilities.data import _set_sampler_epoch

    dm = _dm()
    loader = dm.train_dataloader()
    _set_sampler_epoch(loader, 3)
    assert loader.sampler.epoch == 3
    _assert_same(_torch_epoch(loader, 3), _epoch(dm.numpy_dataloader("train"), 3))


@pytest.mark.filterwarnings("ignore")  # Lightning's own "no validation_step" and pytree notices
def test_lightning_trainer_sees_the_same_batches_as_the_numpy_loader(tmp_path):
    # End to end through a real Trainer: it must keep our sampler and advance its epoch.
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, batch_idx):
            x, y, _ = batch
            self.seen.append((self.current_epoch, x.permute(0, 2, 3, 1).numpy().copy(), y.numpy().copy()))
            return (self.weight * x.float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = ImageDataModule("digits", batch_size=64, seed=9)
    model = Recorder()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, limit_train_batches=2, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert [e for e, _, _ in model.seen] == [0, 0, 1, 1]
    for epoch in (0, 1):
        expected = _epoch(dm.numpy_dataloader("train"), epoch)[:2]
        got = [(x, y) for e, x, y in model.seen if e == epoch]
        _assert_same(got, expected)
