"""The benchmark command runs every measurement and prints the whole table."""

import contextlib
import io
import json

import pytest

from harness.benchmark import command
from harness.benchmark.command import main

pytestmark = pytest.mark.usefixtures("no_compilation_cache")  # they time or read the compiled step


@pytest.fixture
def measurements_in_this_process(monkeypatch):
    """The driver's measurements run in this process instead of a fresh one each (a process
    start costs seconds of imports; see docs/testing.md): for the tests of the tables built from them.
    test_benchmark_prints_every_row runs them as the command does."""
    def in_process(name, args, devices=1, compile=False):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(command.worker_argv(name, args, devices, compile)) == 0
        return json.loads(out.getvalue().strip().splitlines()[-1])

    monkeypatch.setattr(command, "run_measurement", in_process)


@pytest.mark.slow  # the whole benchmark (its duration: docs/testing.md)
def test_benchmark_prints_every_row(capsys):
    # One device (a flax column per device count, built alike); torch.compile is left out of this check.
    assert main(["--steps", "2", "--batch-size", "16", "--devices", "1", "--no-compile"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for name in ("raw step (images/s)", "end-to-end train.py (images/s)",
                 "time to first step (s)", "FLOP utilisation of the raw step"):
        assert name in rows and rows[name].rstrip().endswith("× |"), rows.get(name)
    ratios = [float(cell) for cell in rows["end-to-end / raw"].split("|")[2:4]]
    assert all(0 < r < 3 for r in ratios), ratios
    assert "| lightning | flax | best flax / best lightning |" in out
    assert "augmented images/s" in out and "GFLOP per image" in out
    convs = [line for line in out.splitlines() if line.startswith(("| 32x32x16", "| 16x16x32", "| 8x8x64"))]
    assert len(convs) == 3 and all(line.count(" / ") == 6 for line in convs)
    profile = next(line for line in out.splitlines() if line.startswith("The flax step on one device"))
    assert "fusion" in profile  # XLA's fused operations, by kind
    gflop = float(out.split(" GFLOP per image")[0].rsplit("- ", 1)[1])
    assert 0.2 < gflop < 0.3  # ResNet-20 training: about 3 x 41 MFLOP forward per image


@pytest.mark.slow
def test_depth_table_reports_cost_per_image_memory_and_growth(capsys, measurements_in_this_process):
    assert main(["--depth", "--depth-models", "resnet20", "resnet32", "--steps", "2",
                 "--batch-size", "8", "--devices", "1"]) == 0
    out = capsys.readouterr().out
    rows: dict = {}  # the first table's rows (images/s and cost); the memory table follows
    for line in out.splitlines():
        if line.startswith("| resnet"):
            rows.setdefault(line.split("|")[1].strip(), line)
    assert set(rows) == {"resnet20", "resnet32"}
    assert "| lightning | flax | flax, XLA defaults |" in out
    assert rows["resnet20"].count("(×1.00)") == 3  # the shallowest is the unit of cost
    growth = next(line for line in out.splitlines() if line.startswith("- resnet20 → resnet32"))
    assert growth.count("lightning's growth") == 2
    assert "compile s" in out


@pytest.mark.slow  # train.py end to end, once a side; the rest in this process
def test_streamed_imagenet_benchmark_says_how_many_workers_feed_each_side(capsys, measurements_in_this_process):
    assert main(["--model", "resnet18", "--image-size", "64", "--batch-size", "4", "--steps", "2",
                 "--devices", "1", "--no-compile", "--no-profile"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resnet18 at 64 px")
    line = next(line for line in out.splitlines() if line.startswith("- streamed JPEG pipeline at 64 px"))
    per_worker = float(line.split(": ", 1)[1].split(" images/s")[0].replace(",", ""))
    assert per_worker > 0
    assert "lightning's best raw step" in line and "flax's best raw step" in line
