"""What each side computes in and how it compiles: Lightning's precision from --precision, its
--compile (torch.compile), and the flax step's XLA compiler options on a CPU, the remedy for XLA's
depth-squared fusion (flax_side/compiler_options.py). Loss scaling under 16-mixed:
test_loss_scaling.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from flax_side.compiler_options import (CPU_INIT_OPTIONS, CPU_STEP_OPTIONS, init_compiler_options,
                                        step_compiler_options)
from flax_side.models import create_model
from flax_side.state import create_train_state, initial_variables
from flax_side.steps import train_step
from harness.processes import finish, start_train
from lightning_side.train import lightning_precision
from tests.helpers.sides import FLAX_SIDES

QUICK = ["--dataset", "digits", "--batch-size", "32", "--limit-train-batches", "3",
         "--limit-val-batches", "2", "--limit-test-batches", "2", "--num-workers", "2"]


# --------------------------------------------------------------------------- Lightning

@pytest.mark.parametrize("flag,cuda,expected", [
    ("auto", False, "32-true"), ("auto", True, "16-mixed"), ("32", False, "32-true"),
    ("16-mixed", True, "16-mixed"), ("bf16-mixed", False, "bf16-mixed"), ("64-true", False, "64-true"),
])
def test_the_precision_flag_maps_to_lightnings_precision(flag, cuda, expected):
    assert lightning_precision(flag, cuda) == expected


@pytest.mark.slow  # torch.compile is slow on a small CPU (see docs/testing.md)
def test_compiled_module_trains_like_the_eager_one(tmp_path):
    """--compile: the same run, in float64 where the compiled kernels' rounding stays at 1e-12,
    with checkpoints that keep the plain module's keys."""
    argv = QUICK + ["--epochs", "1", "--log-every", "1", "--precision", "64-true", "--logdir", str(tmp_path)]
    done = finish({name: start_train("lightning", [*argv, "--run-name", name, *extra])  # started together
                   for name, extra in (("eager", []), ("compiled", ["--compile"]))})
    for out in done.values():
        assert out.returncode == 0, out.stderr[-3000:]
    eager, compiled = (torch.load(tmp_path / "lightning" / name / "version_0" / "checkpoints" / "last.ckpt",
                                  weights_only=True)["state_dict"] for name in ("eager", "compiled"))
    assert eager.keys() == compiled.keys()
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-9, atol=1e-9, msg=key)


# --------------------------------------------------------------------------- flax on a CPU

def test_only_the_cifar_resnets_on_a_cpu_and_a_users_xla_flags_win(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert step_compiler_options("resnet56", "cpu") == CPU_STEP_OPTIONS
    assert step_compiler_options("resnet110", "cpu") == CPU_STEP_OPTIONS
    assert step_compiler_options("resnet20", "cpu") == {}  # 3-block stages: nothing to gain
    assert step_compiler_options("resnet50", "cpu") == {}  # measured slower without fusion
    assert step_compiler_options("resnet18-cifar", "cpu") == {}
    assert step_compiler_options("resnet56", "gpu") == {}
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert step_compiler_options("resnet56", "cpu") == CPU_STEP_OPTIONS
    monkeypatch.setenv("XLA_FLAGS", "--xla_disable_hlo_passes=")  # the user asks for XLA's defaults
    assert step_compiler_options("resnet56", "cpu") == {}



def test_the_initialiser_compiles_at_o1_on_a_cpu_only_and_a_users_xla_flags_win(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    key = jax.random.key(0)
    assert init_compiler_options(key, "cpu") == CPU_INIT_OPTIONS == {"xla_backend_optimization_level": 1}
    assert init_compiler_options(key, "gpu") == {}
    traced = []  # inside jax.eval_shape nothing compiles, and a nested jit may carry no options
    jax.eval_shape(lambda k: traced.append(init_compiler_options(k, "cpu")), key)
    assert traced == [{}]
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
    assert init_compiler_options(key, "cpu") == {}


@pytest.mark.parametrize("side", FLAX_SIDES)
def test_the_initialisers_options_draw_xlas_default_weights(side, monkeypatch):
    """The options are for compile time only: a state built with them holds, bit for bit, the
    weights and statistics that XLA's default options draw (at level 0 the last bit of some differ).
    The smallest CIFAR ResNet (a conv, its BatchNorm, the classifier), so that both compilations
    stay short: its level-0 draws differ too."""
    from common.architectures import CIFAR_ARCHITECTURES
    from flax_side import compiler_options
    from harness.benchmark import measurements

    monkeypatch.setitem(CIFAR_ARCHITECTURES, "resnet2", ((8,), 0, "A"))

    def drawn():
        items = measurements.new_train_state(side, "resnet2", 8).checkpoint_items()
        return jax.device_get({"params": items["params"], "batch_stats": items["batch_stats"]})

    with_options = drawn()
    # --resume and --init-from trace the same initialiser for its shapes (loop.create_state)
    abstract = jax.eval_shape(lambda: measurements.new_train_state(side, "resnet2", 8).checkpoint_items())
    assert jax.tree.map(lambda x: (x.shape, x.dtype), {k: abstract[k] for k in with_options}) == \
        jax.tree.map(lambda x: (x.shape, x.dtype), with_options)
    monkeypatch.setattr(compiler_options, "CPU_INIT_OPTIONS", {})
    defaults = drawn()
    assert jax.tree.structure(with_options) == jax.tree.structure(defaults)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(with_options), jax.tree.leaves(defaults)):
        assert np.array_equal(a, b), jax.tree_util.keystr(path)

def _relus_in_compiled_step(model_name, options):
    """ReLUs (`maximum` ops) XLA computes in one compiled train step, as train.py compiles it."""
    model = create_model(model_name, 10)
    schedule = optax.constant_schedule(0.1)
    state = create_train_state(model, initial_variables(model, jax.random.key(0), (32, 32, 3)),
                               schedule=schedule, momentum=0.9, nesterov=True, weight_decay=1e-4,
                               loss_scaling=False)
    batch = (jnp.zeros((8, 32, 32, 3), jnp.uint8), jnp.zeros((8,), jnp.int32))
    step = jax.jit(functools.partial(train_step, mean=np.full(3, 127.0), std=np.full(3, 64.0),
                                     input_dtype=jnp.float32, label_smoothing=0.0, schedule=schedule),
                   donate_argnums=0, compiler_options=options)
    return step.lower(state, batch).compile().as_text().count(" maximum(")


def test_the_steps_train_py_compiles_get_the_remedy_from_resnet32_on(monkeypatch):
    """The wiring, without compiling: loop.py's compile_train_step and compile_eval_step hand
    jax.jit the remedy's options for resnet32 (5 blocks a stage, the smallest it covers) and
    none for resnet20. The compiled steps' ReLUs are counted in the slow test below."""
    from flax_side import compiled_steps
    from flax_side.compiled_steps import StepSpec, compile_eval_step, compile_train_step
    from flax_side.devices import create_mesh

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    given = []

    class NotCompiled:  # what jax.jit returns here: records the options, compiles nothing
        def __init__(self, fun, **kwargs):
            given.append(kwargs.get("compiler_options"))

        def lower(self, *args):
            return self

        def compile(self):
            return self

    schedule = optax.constant_schedule(0.1)
    for model_name, expected in (("resnet32", CPU_STEP_OPTIONS), ("resnet20", {})):
        model = create_model(model_name, 10)
        state = jax.eval_shape(lambda: create_train_state(
            model, initial_variables(model, jax.random.key(0), (8, 8, 3)), schedule=schedule, momentum=0.9,
            nesterov=True, weight_decay=1e-4, loss_scaling=False))
        spec = StepSpec(model=model_name, batch_size=1, image_shape=(8, 8, 3), mean=np.full(3, 127.0),
                        std=np.full(3, 64.0))
        given.clear()
        with monkeypatch.context() as jit_patched:
            jit_patched.setattr(compiled_steps.jax, "jit", NotCompiled)
            compile_train_step(state, schedule, spec, create_mesh(1))
            compile_eval_step(state, spec, create_mesh(1))
        assert given == [expected, expected], model_name
    assert CPU_STEP_OPTIONS  # the remedy is options, not none


@pytest.mark.slow  # compiles resnet32's and resnet44's train steps (a minute on 2 cores)
@pytest.mark.parametrize("model_name,blocks", [("resnet32", 5), ("resnet44", 7)])
@pytest.mark.usefixtures("no_compilation_cache")  # it reads the compiled step
def test_the_step_train_py_compiles_computes_each_relu_once(monkeypatch, model_name, blocks):
    """The remedy reaches the step the trainer runs: flax_side/compiled_steps.compile_train_step,
    as loop.py calls it (compiler_options from the model), holds one ReLU per ReLU of the forward
    pass (the stem's, and two a block over 3 stages); XLA's fusion would hold 186 and 323. A tiny
    batch of 8x8 images, compiled and never run."""
    from flax_side.compiled_steps import StepSpec, compile_train_step
    from flax_side.devices import create_mesh

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    model = create_model(model_name, 10)
    schedule = optax.constant_schedule(0.1)
    state = create_train_state(model, initial_variables(model, jax.random.key(0), (8, 8, 3)), schedule=schedule,
                               momentum=0.9, nesterov=True, weight_decay=1e-4, loss_scaling=False)
    spec = StepSpec(model=model_name, batch_size=1, image_shape=(8, 8, 3), mean=np.full(3, 127.0),
                    std=np.full(3, 64.0))
    step = compile_train_step(state, schedule, spec, create_mesh(1))
    assert step.as_text().count(" maximum(") == 1 + 2 * 3 * blocks


@pytest.mark.slow  # compiles resnet32's step twice
@pytest.mark.usefixtures("no_compilation_cache")  # it reads the compiled step
def test_without_the_fusion_pass_each_relu_is_computed_once(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    # resnet32: 31 ReLUs forward; the backward reuses their outputs instead of recomputing the chain.
    remedy = _relus_in_compiled_step("resnet32", step_compiler_options("resnet32", "cpu"))
    defaults = _relus_in_compiled_step("resnet32", {})
    assert remedy <= 40, remedy
    assert defaults > 3 * remedy, (defaults, remedy)  # the duplicated chains (O(blocks^2) per stage)
