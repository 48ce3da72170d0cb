"""Ctrl-C: a request honoured between two steps (common/interrupt.py), after which the run saves
the step it reached and --resume last goes on from there as if it had never stopped.

Elsewhere: Ctrl-C to train.py processes, then SIGKILL, in test_resume.py; to every process of a
run on several, in test_several_devices.py; to a sweep, in test_sweep.py.
"""

import os
import re
import signal
import time
import warnings

import pytest
import torch

from common.interrupt import CtrlC
from tests.helpers.checkpoints import assert_saved_alike, newest_step
from tests.helpers.in_process import run_main
from tests.helpers.tb import first_step


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


def ctrl_c_during_step(side: str, step: int, monkeypatch) -> list:
    """A real SIGINT in the middle of optimizer step `step`; the Lightning callbacks that send it.
    Lightning: after the step's forward pass (BatchNorm's running statistics have moved), before
    its update. Flax: as the compiled step is called."""
    if side == "lightning":
        import lightning as L

        class CtrlCDuringStep(L.Callback):
            def on_before_backward(self, trainer, pl_module, loss):
                if trainer.global_step == step:
                    os.kill(os.getpid(), signal.SIGINT)

        return [CtrlCDuringStep()]
    from flax_side import epochs

    real_train_epoch = epochs.train_epoch

    def train_epoch(train_step_fn, state, *args, **kwargs):
        def train_step(state, batch):
            if int(state.step) == step:
                os.kill(os.getpid(), signal.SIGINT)
            return train_step_fn(state, batch)

        return real_train_epoch(train_step, state, *args, **kwargs)

    monkeypatch.setattr(epochs, "train_epoch", train_epoch)
    return []


# A flax run in this process loads no data in worker processes: JAX's threads make forking it unsafe.
@pytest.mark.parametrize("side,workers", [("lightning", "0"), ("lightning", "2"), ("flax", "0")])
def test_ctrl_c_mid_step_saves_a_checkpoint_that_resumes_mid_epoch_exactly(tmp_path, side, workers, monkeypatch,
                                                                          reference_runs):
    straight = reference_runs[side]  # uninterrupted (its 2 workers load what 0 would)
    base = [*straight.argv, "--logdir", str(tmp_path), "--num-workers", workers, "--run-name", "split"]
    first, second = (tmp_path / side / "split" / f"version_{n}" for n in (0, 1))
    handler = signal.getsignal(signal.SIGINT)
    try:
        # The step in flight (the 4th, the first of epoch 1's 3 batches) finishes first.
        stopped = run_main(side, base, callbacks=ctrl_c_during_step(side, 3, monkeypatch))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while it stops
    monkeypatch.undo()
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert stopped.returncode == 130 and len(errors) == 1, stopped.stderr[-3000:]
    assert re.search("interrupted at step 4.*--resume last", errors[0]), errors[0]
    assert newest_step(side, first) == 4

    if side == "lightning":  # the loader's position, in the checkpoint for Lightning to restore
        saved = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batch": 1}]

    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        resumed = run_main(side, base + ["--resume", "last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not [w for w in warned if "not resumable" in str(w.message)]  # Lightning's, when it cannot restore the loader
    assert newest_step(side, second) == 6
    assert first_step(second) == 4  # after the Ctrl-C checkpoint
    assert_saved_alike(side, straight.version, second)
