"""Settings for the whole test session, and the runs several tests share: the reference runs,
the float64 lockstep, the stopped and continued sweep."""

import os
import shutil
import sys
import tempfile

import pytest

from common.sides import SIDES
from tests.helpers.in_process import run_main
from tests.helpers.reference import REFERENCE_ARGV, ReferenceRun
from tests.helpers.sweep import StoppedSweep, stop_then_continue

# XLA's persistent compilation cache, one per session: a flax step compiled once is loaded by
# every later run of the same step, in this process and in the train.py processes the tests
# start (they inherit the variable). Set before JAX is first imported, which reads it then; a
# session of its own keeps the user's cache and the tests apart.
_CACHE = tempfile.mkdtemp(prefix="jax-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
# Every compilation, not only those over JAX's default 1 s: an eval step compiles in 0.6-0.7 s
# and loads in 0.04 s, and some twenty runs compile the same one.
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
# On a GPU, JAX takes 75% of its memory at first use; many tests run torch and JAX in this one
# process (docs/several-gpus.md).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)


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
    """side -> its finished reference run, each run in this process, whose imports are done (a
    train.py process spends about 10 s of a core on them): 29 s for the three against 53 s as
    three processes side by side on 2 cores. Read it, or copy_to() a folder of the test's own:
    never write into it."""
    logdir = tmp_path_factory.mktemp("reference")
    runs = {}
    for side in SIDES:
        done = run_main(side, [*REFERENCE_ARGV, "--logdir", str(logdir)])
        assert done.returncode == 0, f"the {side} reference run failed: {done.stderr[-3000:]}"
        runs[side] = ReferenceRun(side, logdir, done.stdout)
    return runs


@pytest.fixture(scope="session")
def float64_lockstep(tmp_path_factory) -> dict:
    """harness/lockstep.py's lockstep of the default recipe in float64, 10 steps of 8 images from one
    init (XLA's float64 convolutions are slow on a CPU), each side run in this process: the
    Lightning side, the flax side and the NNX side. (Two host devices need a process of their
    own, set before JAX starts: test_several_devices.py runs them in the slow suite.)"""
    import jax

    from harness.lockstep import lockstep

    def in_this_process(side, argv) -> int:
        done = run_main(side, argv)
        sys.stderr.write(done.stderr[-4000:] if done.returncode else "")  # lockstep reports the code
        return done.returncode

    try:
        return lockstep(tmp_path_factory.mktemp("lockstep"), steps=10, precision="64-true", batch_size=8,
                        in_this_process=in_this_process, sides=SIDES)
    finally:
        jax.config.update("jax_enable_x64", False)  # the flax side's 64-true turned it on


@pytest.fixture(scope="session")
def digits_sweep(tmp_path_factory) -> StoppedSweep:
    """`python -m harness.sweep --seeds 3` of a short digits recipe, stopped by Ctrl-C in its first
    run's second epoch, then the same command again to the end (tests/helpers/sweep.py): the
    sweep's own tests (test_sweep.py) and the fp32 whole runs (test_lockstep.py) read it."""
    return stop_then_continue(tmp_path_factory.mktemp("sweep"))
