"""A logdir that cannot be written, and a disk that fills during a checkpoint, made for real:
a small or read-only tmpfs (root only), a file in the folder's place, a folder that denies writing.
Both train.py end with one line, exit 74 (common/disk_faults.py), keep their complete checkpoints,
and continue with --resume last once the run folder is on a disk with room.

Faults any user can make, so that these run where mount and chattr are refused (a normal user, a
container without CAP_SYS_ADMIN): a file size limit (RLIMIT_FSIZE: EFBIG), a checkpoint written
through /dev/full (ENOSPC), a folder without the write bit for a user other than root."""

import contextlib
import errno
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from common import disk_faults
from common.errors import EXIT_DISK_FAULT as EXIT_CODE
from harness.processes import finish, start_train
from tests.helpers.in_process import run_main
from tests.helpers.reference import REFERENCE_ARGV
from tests.helpers.tb import scalars
from tests.helpers.sides import DRIVERS

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
        pytest.skip(f"this machine cannot mount a tmpfs ({' '.join(made.stderr.split()) or made.returncode}); "
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
        small = {side: mounts.enter_context(tmpfs(tmp / f"small-{side}", TOO_SMALL[side])) for side in DRIVERS}
        flax = start_train("flax", [*REFERENCE_ARGV, "--logdir", str(small["flax"] / "logs")])
        try:
            lightning = run_main("lightning", [*REFERENCE_ARGV, "--logdir", str(small["lightning"] / "logs")])
        finally:
            done = finish({("full", "flax"): flax})
        done["full", "lightning"] = lightning
        for side in DRIVERS:  # "move the run folder to a disk with room"
            shutil.copytree(tmp / f"small-{side}" / "logs", tmp / f"roomy-{side}", symlinks=True)
            done["roomy", side] = tmp / f"roomy-{side}"
    for side in DRIVERS:  # in this process: the steps are compiled already, the imports done
        resumed = run_main(side, [*REFERENCE_ARGV, "--logdir", str(done["roomy", side]), "--resume", "last",
                                  "--num-workers", "0"])
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    return done


# The runs below end in this process, where the flax side's os._exit after a disk fault is a
# SystemExit (tests/helpers/in_process.py): their faults come before any save, or after the last
# one completed, with no Orbax writer thread left to report them again.
@pytest.mark.parametrize("side", DRIVERS)
def test_a_read_only_logdir_is_one_line(tmp_path, side):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as disk:
        done = run_main(side, [*RUN, "--epochs", "1", "--logdir", str(disk / "logs")])
        assert_one_line_disk_fault(done, str(disk / "logs"), "read-only", "another --logdir")


@pytest.mark.parametrize("side", DRIVERS)
def test_a_file_where_the_logdir_should_be_is_one_line(tmp_path, side):
    (tmp_path / "logs").write_text("a user's file, not a folder")
    done = run_main(side, [*RUN, "--epochs", "1", "--logdir", str(tmp_path / "logs")])
    assert_one_line_disk_fault(done, str(tmp_path / "logs"), "a file stands where a folder should be")
    assert (tmp_path / "logs").read_text() == "a user's file, not a folder"


@pytest.mark.parametrize("side", DRIVERS)
def test_an_immutable_logdir_is_one_line(tmp_path, side):
    """The immutable flag, which binds root too (root only; a normal user's case: a folder without
    the write bit, below)."""
    logdir = tmp_path / "locked"
    logdir.mkdir()
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("the immutable flag needs root and chattr; the write-bit test below covers a normal user")
    locked = subprocess.run(["chattr", "+i", str(logdir)], capture_output=True, text=True)
    if locked.returncode != 0:
        pytest.skip(f"chattr +i was refused ({locked.stderr.strip()}); the write-bit test below runs instead")
    try:
        done = run_main(side, [*RUN, "--epochs", "1", "--logdir", str(logdir)])
    finally:
        subprocess.run(["chattr", "-i", str(logdir)], capture_output=True)
    assert_one_line_disk_fault(done, str(logdir), "permission denied")
    assert not any(logdir.iterdir())


# Runs of each side on a small tmpfs, as processes: slow. Fast: the whole-or-nothing .ckpt
# through /dev/full and a full disk's one line (test_each_disk_fault_is_named_with_what_to_do).
@pytest.mark.slow
@pytest.mark.parametrize("side", DRIVERS)
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


@pytest.mark.parametrize("side", DRIVERS)
def test_a_logdir_that_vanishes_mid_run_is_one_line(tmp_path, side, monkeypatch):
    """The run folder deleted once the first epoch's checkpoint is complete, and made again at
    once, as Orbax's writer or TensorBoard's would make it (a checkpoints folder, a new event
    file), before the second epoch's end is checked: the run stops there with one line, instead
    of writing on into the folder made again. (The reference run's flags: its compiled flax steps
    are cached.)"""
    version = tmp_path / side / "reference" / "version_0"
    checked = []
    real_check = disk_faults.RunFolder.check

    def deleted_and_made_again_before_the_second_check(folder):
        checked.append(folder.path)
        if len(checked) == 2:
            deadline = time.monotonic() + 60  # Orbax renames a step folder in when it is complete
            while not (any(version.glob("checkpoints/*.ckpt")) if side == "lightning"
                       else (version / "checkpoints" / "3" / "state").is_dir()):
                assert time.monotonic() < deadline, sorted(version.rglob("*"))
                time.sleep(0.05)
            # The logger's and Orbax's threads may be writing in it meanwhile: delete until gone.
            while (tmp_path / side).exists():
                shutil.rmtree(tmp_path / side, ignore_errors=True)
                assert time.monotonic() < deadline
            (version / "checkpoints").mkdir(parents=True)
            (version / "events.out.tfevents.0.made-again").write_bytes(b"")
        return real_check(folder)

    monkeypatch.setattr(disk_faults.RunFolder, "check", deleted_and_made_again_before_the_second_check)
    done = run_main(side, [*REFERENCE_ARGV, "--logdir", str(tmp_path), "--num-workers", "0"])
    assert checked == [version, version]
    assert_one_line_disk_fault(done, str(version), "vanished", "another --logdir")
    # Nothing written into the folder made again: no .ckpt file, no Orbax step folder.
    assert sorted(p.name for p in (version / "checkpoints").iterdir()) == []
    assert sorted(p.name for p in version.iterdir()) == ["checkpoints", "events.out.tfevents.0.made-again"]


# --------------------------------------------------------------------------- faults any user can make

def _real_error(make) -> OSError:
    try:
        make()
    except OSError as err:
        return err
    raise AssertionError("the fault did not happen")


def _write_dev_full() -> None:
    with open("/dev/full", "wb") as file:  # the kernel's always-full device: every write fails
        file.write(b"x")
        file.flush()


def _read_only_file_system_error(logdir: Path) -> OSError:
    """A real EROFS where this machine has a read-only mount it can try to write into, else the
    error as the system would raise it for a file under `logdir`."""
    for line in Path("/proc/mounts").read_text().splitlines():
        mount_point, options = line.split()[1], line.split()[3].split(",")
        if "ro" in options and os.path.isdir(mount_point):
            try:
                err = _real_error(lambda: open(os.path.join(mount_point, ".disk-fault-probe"), "wb"))
            except AssertionError:
                continue
            if err.errno == errno.EROFS:
                return err
    return OSError(errno.EROFS, os.strerror(errno.EROFS), str(logdir / "events.out.tfevents.1"))


def _tensorstore_file_too_large(folder: Path) -> str:
    """The text of TensorStore's error for a write past RLIMIT_FSIZE, raised by TensorStore itself
    in a child process (the limit is a process's)."""
    code = ("import resource, tensorstore as ts\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
            f"kv = ts.KvStore.open({{'driver': 'file', 'path': {str(folder) + '/'!r}}}).result()\n"
            "try:\n    kv.write('d/0', b'x' * 5000).result()\n"
            "except Exception as err:\n    print(err)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("fault", ["ENOSPC", "EDQUOT", "EFBIG, TensorStore's text", "ENOSPC, TensorStore's text",
                                   "EROFS", "EROFS, TensorStore's text"])
def test_each_disk_fault_is_named_with_what_to_do(tmp_path, fault):
    """common/disk_faults.find on the errors the libraries raise: an OSError, or TensorStore's
    text with the system's message (Orbax's writer). Real ones where a user can make them."""
    logdir = tmp_path / "logs"
    checkpoint = logdir / "flax" / "r" / "version_0" / "checkpoints" / "3"
    if fault == "ENOSPC":
        real = _real_error(_write_dev_full)
        err = OSError(real.errno, real.strerror, str(checkpoint))
    elif fault == "EDQUOT":
        err = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(checkpoint))
    elif fault == "EFBIG, TensorStore's text":
        text = _tensorstore_file_too_large(checkpoint)
        assert "File too large" in text, text  # the system's text, as TensorStore passes it on
        err, checkpoint = ValueError(text), checkpoint / "d" / "0.__lock"
    elif fault == "ENOSPC, TensorStore's text":  # the form of the text above, with ENOSPC's message
        err = ValueError(f'OUT_OF_RANGE: Failed writing: "{checkpoint}/d/0.__lock": Failed to write 4000 '
                         f"bytes to file 3: No space left on device [os_error_code='28']")
        checkpoint = checkpoint / "d" / "0.__lock"
    elif fault == "EROFS":
        err = _read_only_file_system_error(logdir)
        logdir, checkpoint = Path(err.filename).parent, Path(err.filename)
    else:
        err = ValueError(f"FAILED_PRECONDITION: Error opening file \"{checkpoint}\": Read-only file system "
                         "[os_error_code='30']")
    cause, advice = {
        "EN": ("no space left on the device", "Free space under --logdir, or move the run folder to a disk with room"),
        "ED": ("the disk quota is exceeded", "Free space under --logdir, or move the run folder to a disk with room"),
        "EF": ("the file grew past the size this process may write",
               "Free space under --logdir, or move the run folder to a disk with room"),
        "ER": ("the file system is read-only", "Make --logdir writable, or give another --logdir"),
    }[fault[:2]]
    wrapped = RuntimeError("a library's error")  # the fault as the cause of another error
    wrapped.__cause__ = err
    expected = (f"cannot write {checkpoint}: {cause}. {advice}; the run's complete checkpoints are kept, "
                "and --resume last continues from the newest")
    assert disk_faults.find(err, logdir) == expected
    assert disk_faults.find(wrapped, logdir) == expected
    assert disk_faults.find(RuntimeError("no system message"), logdir) is None


def _run_as_a_process(argv: list[str], preexec=None, env=None, prefix: list[str] = ()) -> dict:
    """Both sides' train.py as processes started together; side -> CompletedProcess."""
    from common.sides import train_command
    from harness.processes import ROOT

    started = {side: subprocess.Popen([*prefix, *train_command(side, argv)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True,
                                      preexec_fn=preexec, env=env)
               for side in DRIVERS}
    return finish(started)


FILE_LIMIT = 512 * 1024  # below a checkpoint's size on either side (2.2 MB), above an event file's


@pytest.fixture(scope="module")
def file_limit_runs(tmp_path_factory) -> tuple[Path, dict]:
    """Both sides with RLIMIT_FSIZE under a checkpoint's size: the first checkpoint fails with
    EFBIG. (No compilation cache: its files would pass the limit too.)"""
    logdir = tmp_path_factory.mktemp("limit") / "logs"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))

    return logdir, _run_as_a_process([*RUN, "--epochs", "1", "--num-workers", "0", "--logdir", str(logdir)],
                                     limited, env)


# A run of each side as a process: slow. Fast: the EFBIG text of a real RLIMIT_FSIZE write in
# test_each_disk_fault_is_named_with_what_to_do, and the whole-or-nothing .ckpt through /dev/full.
@pytest.mark.slow
@pytest.mark.parametrize("side", DRIVERS)
def test_a_file_size_limit_is_one_line_and_leaves_no_part_of_a_checkpoint(file_limit_runs, side):
    logdir, done = file_limit_runs
    version = logdir / side / "r" / "version_0"
    line = assert_one_line_disk_fault(done[side], "grew past the size", "--resume last")
    assert f"cannot write {version / 'checkpoints'}" in line, line  # the checkpoint's own path
    checkpoints = version / "checkpoints"
    if side == "lightning":  # nothing under a checkpoint's name, no partial file
        assert not any(checkpoints.iterdir()) if checkpoints.exists() else True, sorted(checkpoints.iterdir())
    else:
        assert not [p for p in checkpoints.iterdir() if p.name.isdigit()], sorted(checkpoints.iterdir())
        assert not list((version / "torch_weights").glob("*.pt"))


def test_a_lightning_checkpoint_written_through_a_full_disk_is_whole_or_nothing(tmp_path):
    """The second epoch's checkpoint written through /dev/full (ENOSPC at its first byte), the
    first's complete: one line, and no part of the failed one under any name. (The flax side's
    Orbax writes each checkpoint into a folder of its own and renames it in when complete.)"""
    import lightning as L

    from lightning_side.resume import check_resumable

    class FullDiskForTheSecondCheckpoint(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                folder = Path(trainer.log_dir) / "checkpoints"
                assert (folder / "epoch000-step3.ckpt").is_file(), sorted(folder.iterdir())
                (folder / "epoch001-step6.ckpt.partial").symlink_to("/dev/full")

    done = run_main("lightning", [*RUN, "--epochs", "2", "--logdir", str(tmp_path)],
                    callbacks=[FullDiskForTheSecondCheckpoint()])
    checkpoints = tmp_path / "lightning" / "r" / "version_0" / "checkpoints"
    assert_one_line_disk_fault(done, str(checkpoints / "epoch001-step6.ckpt"), "no space left", "--resume last")
    names = sorted(p.name for p in checkpoints.iterdir())
    assert "epoch000-step3.ckpt" in names and "epoch001-step6.ckpt" not in names, names
    assert not [name for name in names if "partial" in name], names
    for path in checkpoints.glob("*.ckpt"):
        check_resumable(path)  # whole, last.ckpt's link to it included


def _bound_by_mode_bits_or_skip() -> list[str]:
    """The command prefix that makes a child bound by mode bits, as a normal user is: none where
    this process is bound already (a normal user, root without CAP_DAC_OVERRIDE); for root,
    setpriv taking the two capabilities that pass over mode bits from the child."""
    probe = Path(tempfile.mkdtemp(prefix="write-bit-"))
    try:
        probe.chmod(0o555)
        try:
            (probe / "x").write_text("")
        except PermissionError:
            return []
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
        if shutil.which("setpriv") is None:
            pytest.skip("root writes through mode bits, and this machine has no setpriv to drop "
                        "CAP_DAC_OVERRIDE from a child")
        tried = subprocess.run([*prefix, sys.executable, "-c", f"open({str(probe / 'child')!r}, 'w')"],
                               capture_output=True, text=True)
        if "PermissionError" not in tried.stderr:
            pytest.skip(f"root writes through mode bits, and setpriv could not stop it "
                        f"({tried.stderr.strip()[-200:] or 'the write went through'})")
        return prefix
    finally:
        probe.chmod(0o755)
        shutil.rmtree(probe)


# As root, each side runs as a process without the capability to override the mode bits: the
# flax one (its JAX start-up) in the slow suite.
@pytest.mark.parametrize("side", ["lightning", pytest.param("flax", marks=pytest.mark.slow)])
def test_a_folder_without_the_write_bit_is_one_line_for_a_normal_user(tmp_path, side):
    """As a user that mode bits bind: in this process where they bind it already (a normal user,
    root without CAP_DAC_OVERRIDE), else (root) as a process without that capability."""
    prefix = _bound_by_mode_bits_or_skip()
    logdir = tmp_path / "locked"
    logdir.mkdir()
    logdir.chmod(0o555)
    argv = [*RUN, "--epochs", "1", "--num-workers", "0", "--logdir", str(logdir)]
    try:
        if prefix:
            from common.sides import train_command

            done = subprocess.run([*prefix, *train_command(side, argv)], capture_output=True, text=True,
                                  cwd=Path(__file__).resolve().parents[1], timeout=600)
        else:
            done = run_main(side, argv)
    finally:
        logdir.chmod(0o755)
    assert_one_line_disk_fault(done, str(logdir), "permission denied", "Make --logdir writable")
    assert not any(logdir.iterdir())
