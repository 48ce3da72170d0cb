"""ImageNet-class runs end to end: torchvision's ResNet-18 on a streamed JPEG folder, both sides."""

import pytest

from tests.helpers.sides import DRIVERS
from harness.photos import make_photo_folder
from harness.processes import finish, start_train
from tests.helpers.tb import DESIGN_TAGS, scalars


@pytest.mark.slow
def test_both_sides_train_resnet18_on_a_streamed_photo_folder(tmp_path):
    """The issue's command on a folder of 10 classes of 80-200 px photos, one of which stops
    decoding after the scan: both exit 0, write every contract tag, and count the same bad image."""
    photos = make_photo_folder(tmp_path / "photos", per_class=12)
    victim = photos / "train" / "cat" / "train_0005.jpg"
    victim.write_bytes(victim.read_bytes()[:300])  # truncated: decodes to an error, not at scan time
    logdir = tmp_path / "logs"
    argv = ["--model", "resnet18", "--dataset", "imagefolder", "--data-dir", str(photos), "--image-size", "64",
            "--epochs", "1", "--batch-size", "16", "--num-workers", "2", "--log-every", "2", "--logdir", str(logdir)]
    done = finish({side: start_train(side, argv) for side in DRIVERS})  # started together
    lines = {}
    for side, out in done.items():
        assert out.returncode == 0, out.stderr[-3000:]
        lines[side] = [line for line in out.stderr.splitlines() if "cannot decode" in line]
        version = logdir / side / "resnet18-imagefolder" / "version_0"
        tags = scalars(version)
        assert DESIGN_TAGS <= set(tags), sorted(DESIGN_TAGS - set(tags))
        assert tags["data/bad_images"][-1][1] == 1, tags["data/bad_images"]
    for side, named in lines.items():
        assert len(named) == 1 and str(victim) in named[0], (side, named)
    runs = {side: scalars(logdir / side / "resnet18-imagefolder" / "version_0") for side in DRIVERS}
    assert set(runs["lightning"]) == set(runs["flax"])
