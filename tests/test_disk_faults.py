"""A logdir that cannot be written, and a disk that fills during a checkpoint, made for real:
a small or read-only tmpfs (root only), a file in the folder's place, a folder that denies writing.
Both train.py end with one line, exit 74 (common/disk_faults.py), keep their complete checkpoints,
and continue with --resume last once the run folder is on a disk with room."""

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from common import disk_faults
from common.errors import EXIT_DISK_FAULT as EXIT_CODE
from harness.processes import finish, start_train
from tests.helpers.in_process import run_main
from tests.helpers.reference import REFERENCE_ARGV
from tests.helpers.tb import scalars
from common.sides import SIDES

RUN = ["--dataset", "digits", "--batch-size", "32", "--limit-train-batches", "3", "--limit-val-batches", "2",
       "--limit-test-batches", "2", "--log-every", "1", "--run-name", "r"]
# A tmpfs that holds a run's first complete checkpoint but not its next one: Lightning writes
# best-*.ckpt and then epoch*.ckpt (2.2 MB each) after epoch 0; flax writes checkpoint 3
# (2.4 MB with its torch copy) and then checkpoint 6.
TOO_SMALL = {"lightning": "3m", "flax": "5m"}


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("this machine has no mount command; the tmpfs disk-fault tests need it (and root)")
    options = f"size={size}" + (",ro" if read_only else "")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"this machine cannot mount a tmpfs ({made.stderr.strip() or made.returncode}); "
                    "the disk-fault tests need root with CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def assert_one_line_disk_fault(out, *needles):
    assert out.returncode == EXIT_CODE, out.stderr[-3000:]
    # No traceback, from any thread: TensorStore's reports of Orbax's closed event loop included.
    stderr = out.stderr
    assert "Traceback" not in stderr and 'File "' not in stderr, stderr[-3000:]
    assert "ERROR" not in stderr and "Error" not in stderr, stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def full_disk_runs(tmp_path_factory) -> dict:
    """Both sides at once, each on a tmpfs too small for its second checkpoint, with the reference
    run's flags (2 epochs; tests/helpers/reference.py): flax as a process (its disk fault ends it with
    os._exit, after Orbax's writer threads), Lightning in this process meanwhile. Then each run,
    copied to a disk with room, resumed with --resume last in this process. ("full", side) ->
    CompletedProcess; ("roomy", side) -> the copy's logdir."""
    tmp = tmp_path_factory.mktemp("full")
    with contextlib.ExitStack() as mounts:
        small = {side: mounts.enter_context(tmpfs(tmp / f"small-{side}", TOO_SMALL[side])) for side in SIDES}
        flax = start_train("flax", [*REFERENCE_ARGV, "--logdir", str(small["flax"] / "logs")])
        try:
            lightning = run_main("lightning", [*REFERENCE_ARGV, "--logdir", str(small["lightning"] / "logs")])
        finally:
            done = finish({("full", "flax"): flax})
        done["full", "lightning"] = lightning
        for side in SIDES:  # "move the run folder to a disk with room"
            shutil.copytree(tmp / f"small-{side}" / "logs", tmp / f"roomy-{side}", symlinks=True)
            done["roomy", side] = tmp / f"roomy-{side}"
    for side in SIDES:  # in this process: the steps are compiled already, the imports done
        resumed = run_main(side, [*REFERENCE_ARGV, "--logdir", str(done["roomy", side]), "--resume", "last",
                                  "--num-workers", "0"])
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    return done


# The runs below end in this process, where the flax side's os._exit after a disk fault is a
# SystemExit (tests/helpers/in_process.py): their faults come before any save, or after the last
# one completed, with no Orbax writer thread left to report them again.
@pytest.mark.parametrize("side", SIDES)
def test_a_read_only_logdir_is_one_line(tmp_path, side):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as disk:
        done = run_main(side, [*RUN, "--epochs", "1", "--logdir", str(disk / "logs")])
        assert_one_line_disk_fault(done, str(disk / "logs"), "read-only", "another --logdir")


@pytest.mark.parametrize("side", SIDES)
def test_a_file_where_the_logdir_should_be_is_one_line(tmp_path, side):
    (tmp_path / "logs").write_text("a user's file, not a folder")
    done = run_main(side, [*RUN, "--epochs", "1", "--logdir", str(tmp_path / "logs")])
    assert_one_line_disk_fault(done, str(tmp_path / "logs"), "a file stands where a folder should be")
    assert (tmp_path / "logs").read_text() == "a user's file, not a folder"


@pytest.mark.parametrize("side", SIDES)
def test_a_logdir_without_write_permission_is_one_line(tmp_path, side):
    logdir = tmp_path / "locked"
    logdir.mkdir()
    if os.geteuid() == 0:  # root writes through any mode bits, not through the immutable flag
        if shutil.which("chattr") is None:
            pytest.skip("root cannot be denied writing here: no chattr to set the immutable flag")
        locked = subprocess.run(["chattr", "+i", str(logdir)], capture_output=True, text=True)
        if locked.returncode != 0:
            pytest.skip(f"root cannot be denied writing here: chattr +i failed ({locked.stderr.strip()})")
    else:
        logdir.chmod(0o555)
    try:
        done = run_main(side, [*RUN, "--epochs", "1", "--logdir", str(logdir)])
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(logdir)], capture_output=True)
        logdir.chmod(0o755)
    assert_one_line_disk_fault(done, str(logdir), "permission denied")
    assert not any(logdir.iterdir())


@pytest.mark.parametrize("side", SIDES)
def test_a_full_disk_keeps_the_complete_checkpoint_and_resume_finishes_elsewhere(full_disk_runs, side):
    out = full_disk_runs["full", side]
    logdir = out.args[out.args.index("--logdir") + 1]
    assert_one_line_disk_fault(out, logdir, "no space left", "--resume last")
    version = full_disk_runs["roomy", side] / side / "reference" / "version_0"
    checkpoints = version / "checkpoints"
    if side == "lightning":
        from lightning_side.resume import check_resumable

        kept = sorted(checkpoints.glob("*.ckpt"))
        assert [p.name for p in kept] == ["best-epoch000-step3.ckpt"], sorted(checkpoints.iterdir())
        check_resumable(kept[0])  # whole, and no partial file beside it
        assert not list(checkpoints.glob("*.partial"))
    else:
        complete = sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit())
        assert complete == ["3"], sorted(checkpoints.iterdir())
        # the torch copy of the checkpoint that never completed is gone; the complete one's stays
        assert sorted(p.name for p in (version / "torch_weights").iterdir()) == ["3.pt"]
    logged = scalars(version.parent / "version_1")
    assert min(step for step, _ in logged["train/loss"]) == 3  # continued after step 3's checkpoint
    assert [step for step, _ in logged["val/acc"]] == [5]
    assert logged["test/acc"][0][0] == 6 and len(logged["test/acc"]) == 1


@pytest.mark.parametrize("side", SIDES)
def test_a_logdir_that_vanishes_mid_run_is_one_line(tmp_path, side, monkeypatch):
    """The run folder deleted once the first epoch's checkpoint is complete, before the second
    epoch's end is checked: the run stops there with one line, instead of writing on into a
    folder it makes again. (The reference run's flags: its compiled flax steps are cached.)"""
    version = tmp_path / side / "reference" / "version_0"
    checked = []
    real_check = disk_faults.RunFolder.check

    def deleted_before_the_second_check(folder):
        checked.append(folder.path)
        if len(checked) == 2:
            deadline = time.monotonic() + 60  # Orbax renames a step folder in when it is complete
            while not (any(version.glob("checkpoints/*.ckpt")) if side == "lightning"
                       else (version / "checkpoints" / "3" / "state").is_dir()):
                assert time.monotonic() < deadline, sorted(version.rglob("*"))
                time.sleep(0.05)
            shutil.rmtree(tmp_path / side)
        return real_check(folder)

    monkeypatch.setattr(disk_faults.RunFolder, "check", deleted_before_the_second_check)
    done = run_main(side, [*REFERENCE_ARGV, "--logdir", str(tmp_path), "--num-workers", "0"])
    assert checked == [version, version]
    assert_one_line_disk_fault(done, str(version), "vanished", "another --logdir")
    assert not version.exists() or not any(version.rglob("*.ckpt"))
