"""common/interrupt.py: the first Ctrl-C is a request honoured between steps, the second stops at once."""

import os
import signal
import time

import pytest

from common.interrupt import CtrlC


def _sigint_and_let_python_handle_it():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # Python runs the handler between bytecodes of the main thread


def test_the_first_ctrl_c_is_a_request_and_the_second_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    ctrl_c = CtrlC()
    ctrl_c.install()
    try:
        _sigint_and_let_python_handle_it()
        assert ctrl_c.requested  # no exception: the step in flight goes on
        with pytest.raises(KeyboardInterrupt):
            _sigint_and_let_python_handle_it()
    finally:
        ctrl_c.restore()
    assert signal.getsignal(signal.SIGINT) is before
