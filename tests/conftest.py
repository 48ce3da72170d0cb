"""Settings for the whole test session, and the runs several tests share."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from harness.processes import finish, start_train
from tests.helpers.reference import REFERENCE_ARGV, ReferenceRun

# XLA's persistent compilation cache, one per session: a flax step compiled once is loaded by
# every later run of the same step, in this process and in the train.py processes the tests start (they inherit the variable). Set before JAX is first
# imported, which reads it then; a session of its own keeps the user's cache and the tests apart.
_CACHE = tempfile.mkdtemp(prefix="jax-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)


def call_main(main, argv, monkeypatch: pytest.MonkeyPatch) -> int:
    """main(argv), a train.py's, in this process: the code of the SystemExit it ended in, or 0
    if it returned. The process-wide hooks with which main quiets a disk fault's reports (common/disk_faults.py)
    are undone when monkeypatch is."""
    import logging
    import threading

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "filters", list(logger.filters))
    # Lightning's loggers print through a StreamHandler bound to the sys.stderr of the moment
    # Lightning was imported: perhaps an earlier test's capture, closed since.
    import lightning  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler):
                monkeypatch.setattr(handler, "stream", sys.stderr)
    try:
        main(argv)
    except SystemExit as exit:
        return exit.code
    return 0


@pytest.fixture
def in_process_main(monkeypatch, capsys):
    """Calls a train.py's main(argv) in this process (call_main): its code, stdout and stderr as
    a CompletedProcess."""
    def call(main, argv) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = call_main(main, argv, monkeypatch)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out.out, out.err)

    return call


@pytest.fixture
def no_compilation_cache():
    """For tests that time or inspect compilation itself."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    os.environ.pop("JAX_COMPILATION_CACHE_DIR")
    try:
        yield
    finally:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
        jax.config.update("jax_enable_compilation_cache", True)


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory) -> dict[str, ReferenceRun]:
    """side -> its finished reference run, both started together (each mostly waits on its
    imports). Read it, or copy_to() a folder of the test's own: never write into it."""
    logdir = tmp_path_factory.mktemp("reference")
    done = finish({side: start_train(side, [*REFERENCE_ARGV, "--logdir", str(logdir)], stdout=subprocess.PIPE)
                   for side in ("lightning", "flax")})
    for side, run in done.items():
        assert run.returncode == 0, f"the {side} reference run failed: {run.stderr[-3000:]}"
    return {side: ReferenceRun(side, logdir, run.stdout) for side, run in done.items()}


@pytest.fixture(scope="session")
def float64_lockstep(tmp_path_factory) -> dict:
    """harness/lockstep.py's lockstep of the default recipe in float64, 10 steps of 8 images from one
    init (XLA's float64 convolutions are slow on a CPU; 4 a device on two): the Lightning side,
    the flax side, and the flax side on two host devices. The first two run in this process,
    whose imports are done (a train.py process spends about 10 s of a core on them), while the
    third runs as a process (its host devices must be set before JAX starts)."""
    import importlib

    import jax

    from harness.lockstep import lockstep

    with pytest.MonkeyPatch.context() as monkeypatch:
        def in_this_process(side, argv):
            return call_main(importlib.import_module(f"{side}_side.train").main, argv, monkeypatch)

        try:
            return lockstep(tmp_path_factory.mktemp("lockstep"), steps=10, precision="64-true", batch_size=8,
                            flax_devices=(1, 2), in_this_process=in_this_process)
        finally:
            jax.config.update("jax_enable_x64", False)  # the flax side's 64-true turned it on
