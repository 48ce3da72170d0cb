"""docs/design.md's tag contract: the tags and steps each side's short run writes, the same on
both, as a user sees them through a real TensorBoard server."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from common.config import parse_config
from tests.helpers.sides import DRIVERS, SIDES
from harness.processes import finish, start_train
from tests.helpers.in_process import run_main
from tests.helpers.schedules import learning_rates
from tests.helpers.tb import DESIGN_TAGS, scalars

RUN = ["--dataset", "digits", "--batch-size", "32", "--epochs", "2", "--limit-train-batches", "3",
       "--limit-val-batches", "2", "--limit-test-batches", "2", "--log-every", "2", "--run-name", "contract"]


# What each side's checkpoints folder holds at the end of the reference run.
CHECKPOINTS_AT_THE_END = {
    "lightning": lambda checkpoints: (checkpoints / "last.ckpt").is_file(),
    "flax": lambda checkpoints: (sorted(p.name for p in checkpoints.iterdir()) == ["3", "6"]
                                 and (checkpoints / "6" / "state").is_dir()),
}
CHECKPOINTS_AT_THE_END["nnx"] = CHECKPOINTS_AT_THE_END["flax"]


@pytest.mark.parametrize("side", SIDES)
def test_a_short_run_writes_the_design_tag_set(side, reference_runs):
    run = reference_runs[side]  # 2 epochs x 3 batches, cosine with warm-up, every step logged
    version = run.version
    assert f"[{side}] best val/acc" in run.stdout and str(version) in run.stdout
    logged = scalars(version)
    assert DESIGN_TAGS <= set(logged) and "train/loss_scale" not in logged
    assert [s for s, _ in logged["train/loss"]] == list(range(6))  # 2 epochs x 3 batches, every step
    assert [s for s, _ in logged["train/acc"]] == list(range(6))
    lr = learning_rates(side, run.argv, steps_per_epoch=3)
    for step, logged_lr in logged["train/lr"]:
        assert logged_lr == pytest.approx(lr(step), rel=1e-6, abs=1e-9), step
    for tag in ("val/loss", "val/acc", "perf/epoch_seconds", "perf/train_images_per_sec"):
        assert [s for s, _ in logged[tag]] == [2, 5], tag  # each epoch's last step
    for tag in ("loss", "acc"):  # the epoch's mean, at its last step, of the batches logged above
        means = [np.mean([v for s, v in logged[f"train/{tag}"] if s in epoch]) for epoch in (range(3), range(3, 6))]
        assert [s for s, _ in logged[f"train/{tag}_epoch"]] == [2, 5], tag
        assert [v for _, v in logged[f"train/{tag}_epoch"]] == pytest.approx(means, rel=1e-6), tag
    for tag in ("test/loss", "test/acc"):
        assert [s for s, _ in logged[tag]] == [6], tag  # the step count, as Lightning's test()
    assert (2, 0.0) in logged["epoch"] and (5, 1.0) in logged["epoch"]  # 0-based, at epoch end
    assert (6, 2.0) in logged["epoch"]  # beside test/*
    assert all(0 <= v <= 1 for _, v in logged["val/acc"]) and logged["perf/train_images_per_sec"][0][1] > 0
    assert CHECKPOINTS_AT_THE_END[side](version / "checkpoints"), sorted((version / "checkpoints").iterdir())
    assert (version / "hparams.yaml").read_text().count("dataset: digits") == 1
    assert parse_config(side, ["--config", str(version / "hparams.yaml")]) == parse_config(side, run.argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(base: str, path: str, **query):
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture
def tensorboard(tmp_path):
    logdir = tmp_path / "logs"
    done = finish({side: start_train(side, [*RUN, "--logdir", str(logdir)]) for side in DRIVERS})
    for out in done.values():
        assert out.returncode == 0, out.stderr[-3000:]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # until the server is up and has read both runs
            try:
                runs = get_json(base, "/data/plugin/scalars/tags")
                if len(runs) == 2 and all(DESIGN_TAGS <= set(tags) for tags in runs.values()):
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"tensorboard did not serve both runs: {server.stderr.read()[-2000:]}")
            time.sleep(0.5)
        yield base, runs
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow  # a run per side and a real TensorBoard; the fast train tests check the tag set
def test_both_runs_list_the_same_tags_over_the_same_steps(tensorboard):
    base, runs = tensorboard
    assert set(runs) == {"lightning/contract/version_0", "flax/contract/version_0"}
    lightning, flax = runs["lightning/contract/version_0"], runs["flax/contract/version_0"]
    assert set(lightning) == set(flax)
    assert DESIGN_TAGS <= set(lightning) and "train/loss_scale" not in lightning
    for tag in lightning:
        steps = {}
        for run in runs:
            points = get_json(base, "/data/plugin/scalars/scalars", run=run, tag=tag)
            steps[run] = sorted({step for _, step, _ in points})
        assert steps["lightning/contract/version_0"] == steps["flax/contract/version_0"], tag
    # log every 2 steps (Lightning's rule: steps 1, 3, 5), epochs end at steps 2 and 5, test at 6
    train = get_json(base, "/data/plugin/scalars/scalars", run="flax/contract/version_0", tag="train/loss")
    assert [step for _, step, _ in train] == [1, 3, 5]


@pytest.mark.parametrize("side", DRIVERS)
def test_an_epoch_timed_at_zero_seconds_logs_nan_images_per_sec(tmp_path, side, monkeypatch, reference_runs):
    """perf/* come every epoch: an epoch whose clock reads 0 s (a resume that enters an epoch at
    its end trains no batch) logs NaN images/s instead of dropping the tags, and the report's
    throughput passes over it."""
    import math

    from harness.trials import find_trials

    if side == "lightning":
        from lightning_side.callbacks import EpochThroughput

        monkeypatch.setattr(EpochThroughput, "_now", lambda self, trainer: 0.0)
    else:
        from flax_side import epochs

        real_train_epoch = epochs.train_epoch

        def timed_at_zero(*args, **kwargs):
            state, _, means = real_train_epoch(*args, **kwargs)
            return state, 0.0, means

        monkeypatch.setattr(epochs, "train_epoch", timed_at_zero)
    done = run_main(side, [*reference_runs[side].argv, "--logdir", str(tmp_path), "--num-workers", "0"])
    assert done.returncode == 0, done.stderr[-3000:]
    logged = scalars(tmp_path / side / "reference" / "version_0")
    assert logged["perf/epoch_seconds"] == [(2, 0.0), (5, 0.0)]
    assert [step for step, _ in logged["perf/train_images_per_sec"]] == [2, 5]
    assert all(math.isnan(v) for _, v in logged["perf/train_images_per_sec"])
    (trial,) = find_trials(tmp_path)
    assert math.isnan(trial.summary()["train images/s"]) and trial.summary()["test/acc"] >= 0
