"""The benchmark command runs every measurement and prints the whole table."""

import contextlib
import io
import json

import numpy as np
import pytest

from common.architectures import CIFAR_ARCHITECTURES
from harness.benchmark import command, measurements, nnx_forms
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
    ratios = [float(cell) for cell in rows["end-to-end / raw"].split("|")[2:5]]
    assert all(0 < r < 3 for r in ratios), ratios
    assert "| lightning | flax | nnx | best flax / best lightning | best nnx / best lightning |" in out
    assert "- NNX against linen, as their trainers compile the step: nnx / flax: raw step" in out
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


# --------------------------------------------------------------------------- what NNX costs

TINY = "resnet2"  # conv, BatchNorm, classifier: one stage of width 8 and no block


@pytest.fixture
def tiny_resnet(monkeypatch):
    """The smallest CIFAR ResNet under the name TINY, and the benchmark's NNX states of it drawn in numpy: the
    forms' rules do not depend on depth, and JAX's random initialisation alone compiles for
    over 10 s on 2 cores."""
    import optax
    from flax import nnx

    from nnx_side.convert import linen_to_nnx
    from nnx_side.models import create_model
    from nnx_side.state import create_train_state

    monkeypatch.setitem(CIFAR_ARCHITECTURES, TINY, ((8,), 0, "A"))
    built_by_api = measurements.new_train_state

    def new_train_state(api, model, image_size, variables=None):
        if api != "nnx" or variables is not None:
            return built_by_api(api, model, image_size, variables)
        abstract = nnx.eval_shape(lambda: create_model(model, measurements.NUM_CLASSES, rngs=nnx.Rngs(0)))
        rng = np.random.default_rng(0)
        variables = {"params": {}, "batch_stats": {}}
        for collection, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
            for path, var in nnx.to_flat_state(nnx.state(abstract, kind)):
                if collection == "params":
                    value = rng.normal(1.0 if path[-1] == "scale" else 0.0, 0.3, var.shape)
                else:
                    value = np.ones(var.shape) if path[-1] == "var" else np.zeros(var.shape)
                node = variables[collection]
                for key in path[:-1]:
                    node = node.setdefault(key, {})
                node[path[-1]] = value.astype(var.dtype)
        return create_train_state(linen_to_nnx(variables, abstract), schedule=optax.constant_schedule(measurements.LR),
                                  momentum=0.9, nesterov=True, weight_decay=1e-4, loss_scaling=False)

    monkeypatch.setattr(measurements, "new_train_state", new_train_state)


@pytest.mark.slow  # six forms, each compiled (7 s): a tool's test, beside the benchmark's own
def test_every_form_of_the_nnx_step_computes_the_trainers_step(tiny_resnet):
    """From one NNX state and one batch, two steps under each form (nnx.jit in graph and tree
    mode, cached_partial, jit_partial) give the losses, the parameters and the BatchNorm
    statistics of the NNX trainer's steps (jax.jit over split/merge); linen's steps from the same
    weights, converted, give them too. So --nnx-overhead times one computation in each form."""
    import jax

    from flax_side.devices import create_mesh
    from nnx_side.convert import nnx_to_linen

    mesh = create_mesh(1)
    split = measurements.new_train_state("nnx", TINY, 8)
    before = nnx_to_linen(split.merge().model)
    batch = measurements.synthetic_batch(4, 8, mesh)
    after = {}
    for form in nnx_forms.FORMS:  # two steps: the second starts from the state the first left
        runner = nnx_forms.build(form, split, measurements.step_spec(TINY, 4, 8), mesh)
        losses = [float(runner.step(batch)["loss"]) for _ in range(2)]
        after[form] = losses, runner.variables()
    trainers_losses, trainers = after.pop("split-merge")
    assert np.isfinite(trainers_losses).all() and trainers_losses[1] < trainers_losses[0]
    for collection in ("params", "batch_stats"):  # the step moved both
        moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), trainers[collection], before[collection])
        assert all(jax.tree.leaves(moved)), collection
    assert set(after) == set(nnx_forms.FORMS) - {"split-merge"}
    for form, (losses, variables) in after.items():
        assert losses == pytest.approx(trainers_losses, rel=1e-6), form
        assert jax.tree.structure(variables) == jax.tree.structure(trainers), form
        for path, value in jax.tree_util.tree_leaves_with_path(variables):
            expected = dict(jax.tree_util.tree_leaves_with_path(trainers))[path]
            np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7,
                                       err_msg=f"{form}: {jax.tree_util.keystr(path)}")


@pytest.mark.slow
def test_nnx_overhead_prints_its_table(capsys, tiny_resnet, measurements_in_this_process):
    assert main(["--nnx-overhead", "--model", TINY, "--image-size", "8", "--overhead-batch-sizes", "2", "4",
                 "--overhead-forms", "linen", "nnx-jit", "--steps", "2", "--windows", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"What NNX costs: {TINY}'s train step in each form, 8 px, fp32, one device;")
    assert "the median of 2 timed windows of 2 / 1 steps" in out  # batch 2 gets twice batch 4's steps
    tables = [[line for line in block.splitlines() if line.startswith("| ")] for block in out.split("\n\n")]
    tables = [t for t in tables if t]
    assert len(tables) == 3  # ms per step, host time per call, memory and first step
    for rows in tables:
        assert rows[0] == "| form | batch 2 | batch 4 |"
        assert [row.split("|")[1].strip() for row in rows[2:]] == [nnx_forms.FORMS["linen"], nnx_forms.FORMS["nnx-jit"]]
    def printed(cell):  # (ms, half its last digit, ratio)
        ms, ratio = cell.strip().split(" (×")
        return float(ms.replace(",", "")), 0.5 * 10.0 ** -len(ms.split(".")[1]), float(ratio.rstrip(")"))

    linen, nnx = ([printed(cell) for cell in row.split("|")[2:4]] for row in tables[0][2:])
    assert all(ratio == 1.0 for _, _, ratio in linen)  # linen's time is the unit, at each batch size
    for (linen_ms, e, _), (ms, f, ratio) in zip(linen, nnx):
        assert (ms - f) / (linen_ms + e) - 0.005 <= ratio <= (ms + f) / (linen_ms - e) + 0.005
    memory, first = tables[2][3].split("|")[2].split(" / ")
    assert float(memory.replace(",", "")) > 0 and float(first) > 0
