"""How a run ends, alike on every side: the error types, their one-line form, the exit codes.

A problem the user can fix ends the run with one line, `error: <what happened and what to do>`,
on stderr, and never with a traceback: that line is all the user sees. `run_main` is the one
place that maps an error to its line and its exit code; both train.py files end through it.
The data layer's DataError and `one_line` (the short form of an underlying error, to quote inside
a message) live in datamodules/errors.py, the layer below, which raises them too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, NoReturn

from common import disk_faults
from datamodules.errors import DataError, one_line

__all__ = ["DataError", "EXIT_DISK_FAULT", "EXIT_INTERRUPTED", "EXIT_USAGE", "Interrupted", "RunError",
           "TrainingError", "fail", "one_line", "run_main"]

EXIT_USAGE = 2  # bad input or a diverged run, as argparse exits on a bad flag
EXIT_INTERRUPTED = 130  # Ctrl-C: the shell's code for a run ended by SIGINT
# sysexits.h's EX_IOERR, "an error occurred while doing I/O on some file": a full, read-only or
# vanished disk under --logdir is neither bad input nor a diverged run.
EXIT_DISK_FAULT = 74


class RunError(Exception):
    """A problem the user can fix (unusable weights or checkpoint, a diverged loss, too few
    devices); the message, folded onto one line, names the file or flag and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class TrainingError(RunError):
    """A run that cannot go on: too few devices, a diverged loss."""


class Interrupted(Exception):
    """Ctrl-C: the run stopped after writing a checkpoint; the message says how to go on."""


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """One line on stderr and a non-zero exit: how every user-fixable error ends a run."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def run_main(train: Callable[[], object], logdir: str | Path,
             on_disk_fault: Callable[[int], None] | None = None) -> None:
    """train(), ended the harness's way: user errors exit 2, Ctrl-C 130, a disk fault 74, each
    with its one line; anything else is a bug and keeps its traceback.

    `on_disk_fault(code)` runs after a disk fault's line is printed: a side whose writers run in
    threads of their own ends the process there, before they report the same fault again."""
    disk_faults.quiet(logdir)
    try:
        train()
    except (DataError, RunError) as err:
        fail(str(err))
    except Interrupted as err:
        fail(str(err), EXIT_INTERRUPTED)
    except Exception as err:
        message = disk_faults.find(err, logdir)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        if on_disk_fault is not None:
            on_disk_fault(EXIT_DISK_FAULT)
        raise SystemExit(EXIT_DISK_FAULT) from None
