"""Settings for the whole test session, and the runs several tests share."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.reference import ReferenceRun, start_reference_runs

# XLA's persistent compilation cache, one per session: a flax step compiled once (about 10 s of
# a resnet20 run on 2 cores) is loaded by every later run of the same step, in this process and
# in the train.py processes the tests start (they inherit the variable). Set before JAX is first
# imported, which reads it then; a session of its own keeps the user's cache and the tests apart.
_CACHE = tempfile.mkdtemp(prefix="jax-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE


_TMP = tempfile.mkdtemp(prefix="lightning-vs-flax-tests-")  # the shared runs' folders


def pytest_unconfigure(config):
    for started in _BACKGROUND.values():
        started.stop()  # runs no test waited for (a failing session stopped early)
    shutil.rmtree(_CACHE, ignore_errors=True)
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture
def in_process_main(monkeypatch, capsys):
    """Calls a train.py's main(argv) in this process, which must end in SystemExit: its code,
    stdout and stderr as a CompletedProcess. main quiets a disk
    fault's reports with process-wide hooks (harness/disk_faults.py); they are undone after."""
    import logging
    import threading

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "filters", list(logger.filters))

    def call(main, argv) -> subprocess.CompletedProcess:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(argv, exit_info.value.code, out.out, out.err)

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
def reference_runs() -> dict[str, ReferenceRun]:
    """side -> its finished reference run (tests/reference.py). Read it, or copy_to() a folder of
    the test's own: never write into it."""
    if "reference" not in _BACKGROUND:
        _BACKGROUND["reference"] = start_reference_runs(Path(tempfile.mkdtemp(prefix="reference-", dir=_TMP)))
    return _BACKGROUND["reference"].result()


@pytest.fixture(scope="session")
def float64_lockstep() -> dict:
    """tests/parity.py's lockstep of the default recipe in float64, 10 steps of 16 images from one
    init (XLA's float64 convolutions are slow on a CPU): the Lightning side, the flax side, and
    the flax side on two host devices."""
    if "lockstep" not in _BACKGROUND:
        _BACKGROUND["lockstep"] = _start_lockstep()
    return _BACKGROUND["lockstep"].result()


def _start_lockstep():
    from tests.parity import start_lockstep

    return start_lockstep(Path(tempfile.mkdtemp(prefix="lockstep-", dir=_TMP)), steps=10, precision="64-true",
                          batch_size=16, flax_devices=(1, 2))


# The shared runs the selected tests need, started as soon as the tests are known: they use the
# CPU that in-process tests leave idle (imports, file I/O, one busy core) instead of waiting for
# their first test with the whole machine idle but for them.
_BACKGROUND: dict = {}


@pytest.hookimpl(trylast=True)  # after -m/-k have deselected what will not run
def pytest_collection_modifyitems(session, config, items):
    needed = {name for item in items for name in getattr(item, "fixturenames", ())}
    if "reference_runs" in needed:
        _BACKGROUND["reference"] = start_reference_runs(Path(tempfile.mkdtemp(prefix="reference-", dir=_TMP)))
    if "float64_lockstep" in needed:
        _BACKGROUND["lockstep"] = _start_lockstep()
