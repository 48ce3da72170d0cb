"""Ctrl-C as a request both trainers honour between two steps, never inside one."""

from __future__ import annotations

import signal
import threading


class CtrlC:
    """While installed, the first SIGINT sets `requested` and a second raises KeyboardInterrupt.

    Python would otherwise raise KeyboardInterrupt wherever the signal lands: inside a forward
    pass (BatchNorm statistics of a step that never updates the weights) or between a jitted
    step's return and the assignment of its result (a donated state gone). Each trainer checks
    `requested` after a step and stops there. Outside the main thread it installs nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
