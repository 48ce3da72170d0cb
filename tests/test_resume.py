"""--resume on both sides: a resumed run ends bit-identical to an uninterrupted one; --resume last
passes over what a kill or a damaged disk left; a path it cannot use, the other side's run
included, is one line; and train.py processes stopped by Ctrl-C, then SIGKILL, resume to the end.

The fast tests continue a copy of the reference run (tests/helpers/reference.py), with its two
loader workers, in this process (tests/helpers/in_process.py).
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from common.config import TrainConfig, parse_config
from tests.helpers.sides import DRIVERS, FLAX_SIDES, SIDES
from harness.lockstep import final_weights
from harness.processes import finish, start_train
from tests.helpers.checkpoints import assert_saved_alike, flat, newest_step
from tests.helpers.in_process import run_epochs_then_stop, run_main
from tests.helpers.reference import REFERENCE_ARGV
from tests.helpers.tb import first_step, scalars

IN_THIS_PROCESS = {"lightning": [], "flax": ["--num-workers", "0"]}  # flags of a run in this process


def forbid_forking(monkeypatch) -> None:
    """os.fork raises from here on: the flax side's loader workers start from a fork server, never
    by forking its process, whose JAX threads a child would inherit stopped, perhaps mid-lock."""
    def fork():
        raise AssertionError("the flax side forked its process")

    monkeypatch.setattr(os, "fork", fork)


def checkpoint_names(version: Path) -> list[str]:
    return sorted(p.name for p in (version / "checkpoints").iterdir())


@pytest.mark.parametrize("side", SIDES)
def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path, reference_runs, side, monkeypatch):
    straight = reference_runs[side]  # uninterrupted, with these flags
    argv = [*straight.argv, "--logdir", str(tmp_path), "--run-name", "split"]  # 2 loader workers
    first, second = (tmp_path / side / "split" / f"version_{n}" for n in (0, 1))
    if side in FLAX_SIDES:
        forbid_forking(monkeypatch)
    run_epochs_then_stop(side, argv, epochs=1)
    assert newest_step(side, first) == 3
    if side in FLAX_SIDES:
        assert checkpoint_names(first) == ["3"]

    resumed = run_main(side, argv + ["--resume", "last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert newest_step(side, straight.version) == newest_step(side, second) == 6
    # Everything the two runs saved at their end: on the flax side the optimizer state and the
    # random key too.
    saved = assert_saved_alike(side, straight.version, second)
    if side in FLAX_SIDES:  # what it saved is what it ended with
        assert int(resumed.returned.step) == 6
        items = resumed.returned.checkpoint_items()
        final = flat(jax.device_get({"params": items["params"], "batch_stats": items["batch_stats"]}))
        for key, value in final.items():
            assert np.array_equal(value, saved[key]), key

    # It resumed rather than started over (which would end on the same weights): it wrote a new
    # version folder and logged only its own steps. The interrupted run's folder is untouched.
    assert [s for s, _ in scalars(second)["train/loss"]] == [3, 4, 5]
    assert scalars(second)["train/loss"] == scalars(straight.version)["train/loss"][3:]
    assert newest_step(side, first) == 3
    if side in FLAX_SIDES:  # with a copy of the checkpoint it resumed from
        assert checkpoint_names(first) == ["3"] and checkpoint_names(second) == ["3", "6"]


# --------------------------------------------------------------------------- --resume last

def leave_a_save_cut_short(side: str, checkpoints: Path) -> None:
    """What a kill during a save leaves: Lightning's temporary file beside its destination
    (lightning_side/checkpoint_io.py), Orbax's temporary folder, renamed in only when complete."""
    if side == "lightning":
        (checkpoints / "epoch002-step9.ckpt.partial").write_bytes(b"\0" * 10)
        return
    partial = checkpoints / "11.orbax-checkpoint-tmp-1234567890"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half-written").write_bytes(b"\0" * 10)


def resume_last(side: str, argv: list[str]) -> tuple[Path, int]:
    """What --resume last picks, before the run starts: (the checkpoint or checkpoints folder, its step)."""
    config = parse_config(side, [*argv, "--resume", "last"])
    if side == "lightning":
        from lightning_side.resume import resume_checkpoint

        picked = Path(resume_checkpoint(config))
        return picked, torch.load(picked, map_location="cpu", weights_only=True)["global_step"]
    from flax_side import checkpoint

    return checkpoint.find("last", config.logdir, config.run_name)


@pytest.mark.parametrize("side", DRIVERS)
def test_resume_last_passes_over_a_save_cut_short_by_a_kill(tmp_path, side, reference_runs):
    checkpoints = reference_runs[side].copy_to(tmp_path) / "checkpoints"
    leave_a_save_cut_short(side, checkpoints)
    picked = {"lightning": checkpoints / "last.ckpt", "flax": checkpoints}[side]
    assert resume_last(side, [*reference_runs[side].argv, "--logdir", str(tmp_path)]) == (picked, 6)


def damage_the_newest(side: str, checkpoints: Path) -> tuple[str, ...]:
    """The newest checkpoint, complete when written, cut short on disk since: the names the
    warning must give for what it passes over."""
    if side == "lightning":
        newest = (checkpoints / "last.ckpt").resolve()
        newest.write_bytes(newest.read_bytes()[:1000])
        return "passed over 2 damaged", "last.ckpt", "epoch001-step6.ckpt"
    assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [3, 6]
    for data in (checkpoints / "6" / "state").rglob("d/*"):
        data.write_bytes(data.read_bytes()[:16])
    return (f"passed over 1 damaged checkpoint(s): {checkpoints / '6'}",)


def assert_the_previous_epochs_checkpoint(side: str, picked: Path, checkpoints: Path) -> None:
    if side == "lightning":
        assert picked != (checkpoints / "last.ckpt").resolve() and picked.name != "last.ckpt"
        assert picked.parent == checkpoints and "step3" in picked.name, picked
    else:
        assert picked == checkpoints / "3"


@pytest.mark.parametrize("side", DRIVERS)
def test_resume_last_passes_over_a_damaged_newest_checkpoint_and_says_so(tmp_path, side, reference_runs):
    """A checkpoint that completed and was damaged on disk later (a file cut short): --resume
    last restores the one before it, in one line naming both."""
    checkpoints = reference_runs[side].copy_to(tmp_path) / "checkpoints"
    named = damage_the_newest(side, checkpoints)
    done = run_main(side, [*reference_runs[side].argv, "--logdir", str(tmp_path), "--resume", "last",
                           *IN_THIS_PROCESS[side]])
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --resume last passed over "), warnings
    for name in named:
        assert name in warnings[0], (name, warnings[0])
    assert_the_previous_epochs_checkpoint(side, Path(warnings[0].rsplit("; resuming from ", 1)[1]), checkpoints)
    resumed = tmp_path / side / "reference" / "version_1"
    assert first_step(resumed) == 3 and newest_step(side, resumed) == 6
    if side == "flax":
        assert checkpoint_names(resumed) == ["3", "6"]  # not the damaged 6


# --------------------------------------------------------------------------- paths it cannot use

def unusable(make: str, tmp_path: Path) -> Path:
    """A path given to --resume that no run can continue from."""
    if make == "truncated":
        path = tmp_path / "bad.ckpt"
        torch.save({"state_dict": {}, "loops": {}}, path)
        path.write_bytes(path.read_bytes()[:50])
    elif make == "empty file":
        path = tmp_path / "bad.ckpt"
        path.write_bytes(b"")
    elif make == "state_dict only":
        from lightning_side.models import create_model

        path = tmp_path / "bad.ckpt"
        torch.save(create_model("resnet20").state_dict(), path)
    elif make == "lightning checkpoint":
        path = tmp_path / "last.ckpt"
        torch.save({"state_dict": {}, "loops": {}}, path)
    elif make == "empty folder":
        path = tmp_path / "checkpoints"
        path.mkdir()
    else:  # "corrupt step"
        path = tmp_path / "checkpoints"
        (path / "7" / "state").mkdir(parents=True)
        (path / "7" / "state" / "_METADATA").write_text("{ not json")
    return path


UNUSABLE = {"lightning": ("truncated", "empty file", "state_dict only", "empty folder"),
            "flax": ("lightning checkpoint", "empty folder", "corrupt step")}


@pytest.mark.parametrize("side,make", [(side, make) for side in DRIVERS for make in UNUSABLE[side]])
def test_an_unusable_resume_path_is_a_one_line_error(tmp_path, side, make):
    path = unusable(make, tmp_path)
    before = path.read_bytes() if path.is_file() else None
    done = run_main(side, [*REFERENCE_ARGV, "--resume", str(path), "--logdir", str(tmp_path / "logs")])
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(path) in lines[0], done.stderr
    assert before is None or path.read_bytes() == before
    assert not (tmp_path / "logs").exists()


def other_sides_run(side: str, tmp_path: Path) -> list[Path]:
    """The paths of a run of the other side that a user might give to --resume."""
    if side == "flax":  # a Lightning run
        run = tmp_path / "lightning" / "r" / "version_0"
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(b"a Lightning checkpoint")
        return [run / "checkpoints" / "last.ckpt", run]
    run = tmp_path / "flax" / "r" / "version_0"
    (run / "checkpoints" / "3" / "state").mkdir(parents=True)
    (run / "torch_weights").mkdir()
    return [run, run / "checkpoints", run / "checkpoints" / "3"]


def find_resume_checkpoint(side: str, given: Path, logdir: Path) -> None:
    """What the side makes of --resume `given`: it raises the error a run would end with."""
    if side == "lightning":
        from lightning_side.resume import resume_checkpoint

        resume_checkpoint(TrainConfig(resume=str(given), logdir=str(logdir)))
    else:
        from flax_side.checkpoint import find

        find(str(given), logdir, "r")


def resume_error(side: str) -> type:
    if side == "lightning":
        from lightning_side.weights import WeightsError

        return WeightsError
    from flax_side.checkpoint import CheckpointError

    return CheckpointError


@pytest.mark.parametrize("side", DRIVERS)
def test_the_other_sides_run_given_to_resume_points_to_init_from(tmp_path, side):
    """A flax run folder to the Lightning side, a Lightning .ckpt or run folder to the flax side:
    the error says that --init-from starts from its weights."""
    for given in other_sides_run(side, tmp_path):
        with pytest.raises(resume_error(side), match="give it to --init-from"):
            find_resume_checkpoint(side, given, tmp_path)
    # A folder of neither side gets no such hint.
    (tmp_path / "other").mkdir()
    with pytest.raises(resume_error(side)) as err:
        find_resume_checkpoint(side, tmp_path / "other", tmp_path)
    assert "--init-from" not in str(err.value)


# --------------------------------------------------------------------------- Ctrl-C, then SIGKILL

# Real signals to train.py processes, and reruns, on both sides: the slow suite. Fast: the
# resumes above and test_ctrl_c.py's Ctrl-C in the middle of a step.
EPOCH, EPOCHS = 10, 3  # steps an epoch; a stop lands a few steps into the epoch after a checkpoint
# A constant LR too high to learn on: val/acc does not rise after the first epoch, so the best
# checkpoint comes before the stops (test_a_resumed_run_reports_and_tests_the_uninterrupted_runs_best).
KILL_ARGV = ["--dataset", "digits", "--epochs", str(EPOCHS), "--limit-train-batches", str(EPOCH),
             "--batch-size", "32", "--limit-val-batches", "1", "--limit-test-batches", "1", "--log-every", "1",
             "--lr", "0.2", "--milestones", "0.99", "--num-workers", "2"]


def epoch_checkpoint_written(side: str, version: Path, epoch: int) -> bool:
    """Whether the version folder holds the complete checkpoint of that epoch's end."""
    if side == "lightning":
        return any((version / "checkpoints").glob(f"epoch{epoch:03d}-*.ckpt"))
    return (version / "checkpoints" / str(EPOCH * (epoch + 1)) / "state").is_dir()  # Orbax renames it in when complete


def start_both(logdir: Path, *extra: str) -> dict:
    return {side: start_train(side, [*KILL_ARGV, "--logdir", str(logdir), *extra], stdout=subprocess.PIPE)
            for side in DRIVERS}


def stop_both(started: dict, run: dict, how: str, epoch: dict) -> dict:
    """side -> the CompletedProcess of its started run, stopped by the signal `how` a moment
    after the version folder run[side] holds the checkpoint of the end of epoch[side]."""
    try:
        waiting, deadline = set(DRIVERS), time.monotonic() + 300
        while waiting:
            for side in list(waiting):
                process = started[side]
                assert process.poll() is None, f"the {side} run ended before the {how}: {process.communicate()[1][-3000:]}"
                assert time.monotonic() < deadline
                if epoch_checkpoint_written(side, run[side], epoch[side]):
                    time.sleep(0.1)  # a step or two into the next epoch, most of the time
                    process.send_signal(getattr(signal, how))
                    waiting.discard(side)
            time.sleep(0.05)
    except BaseException:
        for process in started.values():
            os.killpg(process.pid, signal.SIGKILL)
        raise
    # What a killed run's loader workers (and flax's fork server) left running, before finish()
    # waits for their ends of its pipes.
    left = {side: [] for side in DRIVERS}
    for side, process in started.items():
        if how == "SIGKILL":
            process.wait()
            left[side] = left_running(process.pid)
    ended = finish(started)
    for side in DRIVERS:
        ended[side].left_running = left[side]
    return ended


@pytest.fixture(scope="module")
def kill_resume_runs(tmp_path_factory) -> dict:
    """side -> (the version folder of an uninterrupted run, the stopped run's folder, the
    CompletedProcesses of its three versions: stopped by Ctrl-C after the first epoch's
    checkpoint, resumed and killed after the next epoch's, resumed to the end; the uninterrupted
    run's CompletedProcess). The two sides
    run together, two processes at a time (more than the cores only slow each other down)."""
    logdir = tmp_path_factory.mktemp("runs")
    straight = finish(start_both(logdir))
    for side in DRIVERS:
        assert straight[side].returncode == 0, straight[side].stderr[-3000:]
    folder = {side: logdir / side / "stopped" for side in DRIVERS}
    interrupted = stop_both(start_both(logdir, "--run-name", "stopped"),
                            {side: folder[side] / "version_0" for side in DRIVERS}, "SIGINT",
                            epoch={side: 0 for side in DRIVERS})
    # Killed after the checkpoint of the epoch it resumed in, which must not be the last.
    reached = {side: newest_step(side, folder[side] / "version_0") for side in DRIVERS}
    assert max(reached.values()) < (EPOCHS - 1) * EPOCH, f"Ctrl-C landed too late to kill the resumed run: {reached}"
    killed = stop_both(start_both(logdir, "--run-name", "stopped", "--resume", "last"),
                       {side: folder[side] / "version_1" for side in DRIVERS}, "SIGKILL",
                       epoch={side: reached[side] // EPOCH for side in DRIVERS})
    resumed = finish(start_both(logdir, "--run-name", "stopped", "--resume", "last"))
    return {side: (logdir / side / "resnet20-digits" / "version_0", folder[side],
                   (interrupted[side], killed[side], resumed[side]), straight[side]) for side in DRIVERS}


def left_running(session: int, wait: float = 30.0) -> list[str]:
    """The command lines of the processes still in `session` (a killed run's: start_train starts
    each in a session of its own) once they have had `wait` seconds to notice; killed, if any."""
    def members() -> dict[int, str]:
        found = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == session and fields[0] != "Z":  # fields[3]: the session id
                    found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError, IndexError):
                continue  # it ended while being read
        return found

    deadline = time.monotonic() + wait
    while members() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = members()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return sorted(left.values())


@pytest.mark.slow
@pytest.mark.parametrize("side", DRIVERS)
def test_ctrl_c_saves_the_step_reached_and_says_how_to_go_on(side, kill_resume_runs):
    _, run, (interrupted, killed, _), _ = kill_resume_runs[side]
    errors = [line for line in interrupted.stderr.splitlines() if line.startswith("error:")]
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    assert len(errors) == 1 and "--resume last" in errors[0] and "Traceback" not in interrupted.stderr
    # The checkpoint of the step reached, after the first epoch's: the resumed (then killed)
    # version logs from the step after it, where one that started over would log from 0.
    reached = newest_step(side, run / "version_0")
    assert reached > EPOCH  # a Ctrl-C checkpoint mid-epoch, not only the epoch end's
    assert killed.returncode == -signal.SIGKILL
    assert killed.left_running == [], killed.left_running  # no loader worker outlived the kill
    assert first_step(run / "version_1") == reached


@pytest.mark.slow
@pytest.mark.parametrize("side", DRIVERS)
def test_a_run_resumed_after_ctrl_c_and_sigkill_ends_like_an_uninterrupted_one(side, kill_resume_runs):
    uninterrupted, run, (_, _, resumed), _ = kill_resume_runs[side]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # It went on from the killed version's newest complete checkpoint (an epoch's end after
    # the Ctrl-C's step) to the end.
    resumed_from = newest_step(side, run / "version_1")
    assert resumed_from > newest_step(side, run / "version_0") and resumed_from % EPOCH == 0
    assert [s for s, _ in scalars(run / "version_2")["train/loss"]] == list(range(resumed_from, EPOCHS * EPOCH))
    a = final_weights(side, uninterrupted)
    b = final_weights(side, run / "version_2")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def best_checkpoint_name(side: str, version: Path) -> str:
    """The name of the checkpoint a version folder tests with: Lightning's best-*.ckpt, flax's best step."""
    if side == "lightning":
        (best,) = (version / "checkpoints").glob("best-*.ckpt")
        return best.name
    from flax_side.checkpoint import create_manager

    return str(create_manager(version / "checkpoints", create=False).best_step())


def reported(completed: subprocess.CompletedProcess) -> str:
    """'best val/acc X | test/acc Y' of a run's summary line."""
    (line,) = [line for line in completed.stdout.splitlines() if " best val/acc " in line]
    return line.split(" | ")[0].split("] ")[1] + " | " + line.split(" | ")[1]


@pytest.mark.slow
@pytest.mark.parametrize("side", DRIVERS)
def test_a_resumed_run_reports_and_tests_the_uninterrupted_runs_best(side, kill_resume_runs):
    """Stopped by Ctrl-C and by SIGKILL after the best epoch: the run ends testing the checkpoint
    the uninterrupted run tests, and reports the same best val/acc and test/acc."""
    uninterrupted, run, (_, _, resumed), straight = kill_resume_runs[side]
    val = [v for _, v in scalars(uninterrupted)["val/acc"]]
    assert int(np.argmax(val)) < EPOCHS - 1, f"the best epoch must come before the stops for this test to bite: {val}"
    assert best_checkpoint_name(side, run / "version_2") == best_checkpoint_name(side, uninterrupted)
    for tag in ("test/acc", "test/loss"):
        assert [v for _, v in scalars(run / "version_2")[tag]] == [v for _, v in scalars(uninterrupted)[tag]], tag
    assert reported(resumed) == reported(straight)
