"""How loader workers start and end when the process they load for runs JAX (the flax side).

Forking a process in which JAX runs copies its threads' locks, perhaps held, into a child that
has none of the threads. The flax side's workers start from a fork server instead, which has
imported the data modules once. A worker forked from it has the fork server for a parent, so
torch's own watch (a worker ends when its parent does) never sees the loading process die; and
the fork server lives as long as any worker does. Each worker therefore also watches the process
it loads for and ends with it, so that a killed run leaves no process behind.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import select
import threading
import time


def worker_context(start_method: str):
    """The multiprocessing context the workers start in; a fork server imports what a worker
    needs when it starts, so that each worker starts in about a tenth of a second rather than
    importing torch again (harness/examples/worker_start_cost.py measures it)."""
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        # Not the caller's __main__ (the default): a train.py that imports JAX.
        context.set_forkserver_preload(["datamodules.batches", "datamodules.streamed", __name__])
    return context


def ending_with_this_process():
    """A DataLoader worker_init_fn: the worker ends as soon as the process now running does."""
    return functools.partial(end_with, os.getpid())


def end_with(pid: int, worker_id: int) -> None:
    """Watches process `pid` from a daemon thread of this worker and ends the worker when it ends."""
    threading.Thread(target=_exit_when_ended, args=(pid,), name="end-with-loader", daemon=True).start()


def _exit_when_ended(pid: int) -> None:
    try:
        handle = os.pidfd_open(pid)  # Linux 5.3+: readable once the process has ended
    except (AttributeError, OSError):
        handle = None
    if handle is not None:
        select.select([handle], [], [])
    else:
        while _running(pid):
            time.sleep(1.0)
    os._exit(0)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
