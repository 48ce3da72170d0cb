"""train.py processes started together (each spends much of its time in imports and XLA's
compiler) and waited for as one: the lockstep runner's and the tests'."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
from pathlib import Path

from common.sides import train_command

ROOT = Path(__file__).resolve().parents[1]


def start_train(side: str, argv: list[str], *, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    """`python <side>_side/train.py argv` from the project root, in a session of its own (so that
    finish() can kill it with its loader workers), stderr piped."""
    return subprocess.Popen(train_command(side, argv), cwd=ROOT, stdout=stdout,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(processes: dict) -> dict[object, subprocess.CompletedProcess]:
    """key -> CompletedProcess, once every process has ended (their output read as it comes, so
    that no pipe fills up); a process still running after 10 minutes is killed with its children."""
    with concurrent.futures.ThreadPoolExecutor(len(processes)) as pool:
        ended = {key: pool.submit(process.communicate, timeout=600) for key, process in processes.items()}
        try:
            outputs = {key: ended[key].result() for key in processes}
            return {key: subprocess.CompletedProcess(processes[key].args, processes[key].returncode, *outputs[key])
                    for key in processes}
        finally:
            for process in processes.values():
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
