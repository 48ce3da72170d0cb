"""The one way to run a train.py's main(argv) in the test process: a process's ending (its exit
code, stdout and stderr) without a process's imports (about 10 s of a core each)."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import subprocess
import sys
import threading
from typing import Sequence

import pytest

from common.sides import FLAX_SIDES, train_command

# The function each side's main() hands the parsed flags to: what a test wraps to add Lightning
# callbacks or to keep what the run returned.
DRIVERS = {"lightning": ("lightning_side.train", "train"), "flax": ("flax_side.loop", "train_and_evaluate"),
           "nnx": ("nnx_side.loop", "train_and_evaluate")}


class InProcessRun(subprocess.CompletedProcess):
    """A CompletedProcess, and `returned`: what the side's driver returned (Lightning's train()
    its summary, flax's train_and_evaluate() its final TrainState), None where it did not return."""

    returned: object = None


def run_main(side: str, argv: Sequence[str], *, callbacks: Sequence = ()) -> InProcessRun:
    """`python <side>_side/train.py argv` in this process: the exit code of the SystemExit main
    ended in (0 if it returned), and what it printed. `callbacks` are added to the Lightning
    Trainer's. An exception that main lets through (a bug, a KeyboardInterrupt) passes on.

    Undone when it returns: the process-wide hooks with which main quiets a disk fault's reports
    (common.disk_faults.quiet: sys.excepthook, sys.unraisablehook, threading.excepthook, the absl
    and asyncio log filters). The flax side's os._exit after a disk fault (flax_side/train.py's
    leave_at_once, for Orbax's writer threads) becomes a SystemExit here; nothing else's does (a
    forked loader worker ends with os._exit)."""
    if callbacks and side != "lightning":
        raise ValueError(f"callbacks are Lightning's; the {side} side takes none")
    script = importlib.import_module(f"{side}_side.train")
    module, name = DRIVERS[side]
    driver_module = importlib.import_module(module)
    driver, returned = getattr(driver_module, name), []

    def recorded(config):
        returned.append(driver(config, callbacks=callbacks) if callbacks else driver(config))
        return returned[-1]

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        keep_process_hooks(monkeypatch)
        if side == "lightning":
            lightning_logs_to(sys.stderr, monkeypatch)
        if side in FLAX_SIDES:  # NNX's main is the flax side's (flax_side/train.py's launch)
            flax_script = importlib.import_module("flax_side.train")
            monkeypatch.setattr(flax_script, "leave_at_once", exit_by_system_exit(flax_script.leave_at_once))
        monkeypatch.setattr(driver_module, name, recorded)
        code = exit_code(script.main, list(argv))
    run = InProcessRun(train_command(side, list(argv)), code, out.getvalue(), err.getvalue())
    run.returned = returned[0] if returned else None
    return run


def keep_process_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hooks and log filters common.disk_faults.quiet replaces or adds to, given back when
    monkeypatch is undone."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "filters", list(logger.filters))


def lightning_logs_to(stream, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's loggers print through a StreamHandler bound to the sys.stderr of the moment
    Lightning was imported: perhaps an earlier test's capture, closed since."""
    import lightning  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler):
                monkeypatch.setattr(handler, "stream", stream)


def exit_by_system_exit(leave):
    """`leave(code)`, which ends the process with os._exit, with a SystemExit instead."""
    def leave_here(code: int) -> None:
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setattr(os, "_exit", sys.exit)
            leave(code)

    return leave_here


def exit_code(main, argv: list[str]) -> int:
    """main(argv)'s exit status as a process would have it."""
    try:
        main(argv)
    except SystemExit as exit:
        return 0 if exit.code is None else exit.code if isinstance(exit.code, int) else 1
    return 0


def run_epochs_then_stop(side: str, argv: Sequence[str], *, epochs: int) -> None:
    """A run stopped at an epoch boundary, once the checkpoint of its `epochs`-th epoch is written,
    as a kill there would leave it: Lightning's Trainer told to stop as that epoch ends, the flax
    loop interrupted as the next one starts (before any step, so with no Ctrl-C checkpoint)."""
    if side == "lightning":
        import lightning as L

        class StopThere(L.Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                trainer.should_stop = trainer.current_epoch + 1 >= epochs

        done = run_main(side, argv, callbacks=[StopThere()])
        assert done.returncode == 0, done.stderr[-3000:]
        return
    from flax_side import epochs as flax_epochs

    real_train_epoch = flax_epochs.train_epoch

    def stopped_there(*args, epoch, **kwargs):
        if epoch == epochs:
            raise KeyboardInterrupt
        return real_train_epoch(*args, epoch=epoch, **kwargs)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(flax_epochs, "train_epoch", stopped_there)
        with pytest.raises(KeyboardInterrupt):
            run_main(side, argv)
