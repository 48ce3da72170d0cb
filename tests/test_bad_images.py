"""A streamed image that stops decoding after the scan: replaced, counted once in data/bad_images
at the epoch's end (Lightning's BadImageCount callback; flax's epoch loop counts it too, and the
slow tests/test_imagenet_runs.py checks both sides; a flax step compiled for streamed images costs
the fast suite too long). Which image replaces it, with which label: test_data_streamed.py."""

import pytest

from harness.photos import make_photo_folder
from tests.helpers.in_process import run_main
from tests.helpers.tb import scalars


@pytest.mark.parametrize("side", ["lightning"])
def test_a_bad_image_is_counted_in_data_bad_images(tmp_path, side):
    photos = make_photo_folder(tmp_path / "photos", per_class=4, eval_per_class=1, classes=("cat", "dog"),
                               min_side=40, max_side=48)
    victim = photos / "train" / "cat" / "train_0003.jpg"
    victim.write_bytes(victim.read_bytes()[:300])  # truncated: decodes to an error, not at scan time
    argv = ["--dataset", "imagefolder", "--data-dir", str(photos), "--image-size", "36", "--epochs", "1",
            "--batch-size", "4", "--num-workers", "0", "--log-every", "1", "--logdir", str(tmp_path / "logs")]
    done = run_main(side, argv)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = scalars(tmp_path / "logs" / side / "resnet20-imagefolder" / "version_0")
    last_step = logged["train/loss"][-1][0]  # at the end of the one epoch
    assert [(step, value) for step, value in logged["data/bad_images"]] == [(last_step, 1.0)]
