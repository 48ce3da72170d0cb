"""Loss scaling under 16-mixed: both sides start from torch's scale, grow and back off on the same
steps, and skip a step whose gradients overflow, counting it and leaving the weights and the
optimizer state as they were; with overflow forced, the same steps on both sides."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from common.architectures import CIFAR_ARCHITECTURES
from common.sides import SIDES
from flax_side.models import CifarResNet, create_model as create_flax_model
from flax_side.state import create_train_state, initial_variables
from flax_side.steps import train_step
from harness.lockstep import final_weights
from lightning_side.models import create_model
from tests.helpers.in_process import run_main
from tests.helpers.tb import scalars

STEPS = 3
# Overflows float16 gradients for certain: every step of the run is skipped, the scale halving each
# time, on both sides. GradScaler's and DynamicScale's own 2**16 may or may not overflow.
FORCED_SCALE = 2.0 ** 40
# The fp16 steps below compile at XLA's lowest optimisation level, in a fraction of the
# default's time: what they check (which values a skipped step keeps) does not depend on it.
FAST_OPTIONS = {"xla_backend_optimization_level": 0}


def test_both_sides_start_from_the_same_loss_scale():
    """torch's GradScaler default, 2**16, on both sides; the run below shows that each side's
    16-mixed run starts from its constant (patched there) and logs it as train/loss_scale."""
    from flax_side import state as flax_state
    from lightning_side import train as lightning_train

    assert lightning_train.INITIAL_LOSS_SCALE == flax_state.INITIAL_LOSS_SCALE == 2.0 ** 16


@pytest.mark.slow  # float16 on a CPU is slow (docs/testing.md)
def test_forced_overflow_skips_the_same_steps_and_changes_no_weight(tmp_path, monkeypatch):
    from flax_side import state as flax_state
    from lightning_side import train as lightning_train

    monkeypatch.setattr(lightning_train, "INITIAL_LOSS_SCALE", FORCED_SCALE)
    monkeypatch.setattr(flax_state, "INITIAL_LOSS_SCALE", FORCED_SCALE)
    torch.manual_seed(0)
    start = create_model("resnet20", num_classes=10).state_dict()
    torch.save(start, tmp_path / "start.pt")  # one start for both sides: the same gradients
    argv = ["--dataset", "digits", "--epochs", "1", "--limit-train-batches", str(STEPS), "--batch-size", "8",
            "--limit-val-batches", "1", "--limit-test-batches", "1", "--log-every", "1", "--precision", "16-mixed",
            "--init-from", str(tmp_path / "start.pt"), "--logdir", str(tmp_path)]
    for side in SIDES:
        done = run_main(side, argv)
        assert done.returncode == 0, done.stderr[-3000:]

    logged, weights = {}, {}
    for side in SIDES:
        version = tmp_path / side / "resnet20-digits" / "version_0"
        logged[side] = scalars(version)
        weights[side] = final_weights(side, version)
        skipped = [v for _, v in logged[side]["train/skipped_steps"]]
        scale = [v for _, v in logged[side]["train/loss_scale"]]
        assert skipped == [1, 2, 3], (side, skipped)  # every step skipped, and counted
        assert scale == [FORCED_SCALE / 2 ** k for k in range(STEPS)], (side, scale)
        # The skipped updates changed no weight (BatchNorm's running statistics are not weights).
        for name, value in start.items():
            if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                np.testing.assert_array_equal(weights[side][name], value.double().numpy(), err_msg=(side, name))
    assert logged["lightning"]["train/skipped_steps"] == logged["flax"]["train/skipped_steps"] \
        == logged["nnx"]["train/skipped_steps"]

    # ... nor the optimizer state: no momentum yet on either side.
    ckpt = torch.load(tmp_path / "lightning" / "resnet20-digits" / "version_0" / "checkpoints" / "last.ckpt",
                      map_location="cpu", weights_only=True)
    assert all(not s or not torch.any(s["momentum_buffer"]) for s in ckpt["optimizer_states"][0]["state"].values())
    import orbax.checkpoint as ocp

    from flax_side.checkpoint import create_manager

    for side in ("flax", "nnx"):
        checkpoints = tmp_path / side / "resnet20-digits" / "version_0" / "checkpoints"
        restored = create_manager(checkpoints, create=False).restore(
            STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        trace = restored["state"]["opt_state"]
        floats = [np.asarray(leaf) for leaf in jax.tree.leaves(trace) if np.asarray(leaf).dtype.kind == "f"]
        assert floats and not any(np.any(leaf) for leaf in floats), side
        assert int(restored["state"]["step"]) == STEPS, side


def test_dynamic_scale_grows_and_backs_off_on_the_same_steps_as_torch_gradscaler():
    from flax.training.dynamic_scale import DynamicScale

    from flax_side.state import dynamic_scale_interval

    interval = 3
    finite = [True] * 7 + [False] + [True] * 4 + [False, False] + [True] * 5
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=interval)
    param = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([param], lr=0.0)
    dyn = DynamicScale(growth_interval=dynamic_scale_interval(interval), scale=8.0)
    torch_scales, flax_scales = [], []
    for ok in finite:
        optimizer.zero_grad()
        scaler.scale((param * (1.0 if ok else float("inf"))).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        torch_scales.append(scaler.get_scale())
        dyn, _, _, _ = dyn.value_and_grad(lambda p: (p * (1.0 if ok else jnp.inf)).sum())(jnp.ones(1))
        flax_scales.append(float(dyn.scale))
    assert flax_scales == torch_scales
    assert len(set(torch_scales)) > 2  # it did grow and back off


def test_nnx_loss_scale_moves_as_linens_dynamic_scale_and_unscales_alike():
    """The NNX loss scale (nnx_side/loss_scale.py) against linen's DynamicScale, which the test
    above holds to GradScaler: the same scale after every step of a run of finite and
    non-finite gradients, and the same unscaled value and gradients."""
    from flax import nnx
    from flax.training.dynamic_scale import DynamicScale

    from flax_side.state import dynamic_scale_interval
    from nnx_side.loss_scale import DynamicLossScale

    class Weight(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.full((3,), 1.5))

    interval = 3
    finite = [True] * 7 + [False] + [True] * 4 + [False, False] + [True] * 5
    model = Weight()
    nnx_scale = DynamicLossScale(growth_interval=dynamic_scale_interval(interval), scale=8.0)
    linen_scale = DynamicScale(growth_interval=dynamic_scale_interval(interval), scale=8.0)
    nnx_scales, linen_scales = [], []
    for ok in finite:
        factor = 1.0 if ok else jnp.inf
        is_finite, (loss, aux), grads = nnx_scale.value_and_grad(
            lambda m: ((m.w[...] ** 2).sum() * factor, 7), has_aux=True)(model)
        linen_scale, linen_finite, (linen_loss, _), linen_grads = linen_scale.value_and_grad(
            lambda w: ((w ** 2).sum() * factor, 7), has_aux=True)(jnp.full((3,), 1.5))
        assert bool(is_finite) == bool(linen_finite) == ok and aux == 7
        if ok:
            assert float(loss) == float(linen_loss) == 6.75
            np.testing.assert_array_equal(grads["w"][...], linen_grads)
            np.testing.assert_array_equal(grads["w"][...], np.full(3, 3.0))
        nnx_scales.append(float(nnx_scale.scale[...]))
        linen_scales.append(float(linen_scale.scale))
    assert nnx_scales == linen_scales
    assert len(set(nnx_scales)) > 2  # it did grow and back off


def test_nnx_fp16_overflow_skips_the_step_and_halves_the_scale():
    """The NNX step's skipped step (nnx_side/steps.py), as the linen test above: params,
    optimizer state (its update count included) and BatchNorm statistics kept; the batch count
    advances, the scale halves and the skip is counted; the next finite step goes through."""
    from flax import nnx

    from nnx_side.models import CifarResNet as NnxResNet
    from nnx_side.state import create_train_state as create_nnx_state
    from nnx_side.steps import train_step as nnx_train_step

    widths, _, shortcut = CIFAR_ARCHITECTURES["resnet20"]
    schedule = optax.constant_schedule(0.1)
    split = jax.jit(compiler_options=FAST_OPTIONS)(lambda: create_nnx_state(
        NnxResNet(widths, (1,) * len(widths), shortcut, dtype=jnp.float16, rngs=nnx.Rngs(0)),
        schedule=schedule, momentum=0.9, nesterov=True, weight_decay=1e-4, loss_scaling=True))()
    step = jax.jit(functools.partial(nnx_train_step, mean=np.full(3, 127.0), std=np.full(3, 60.0),
                                     input_dtype=jnp.float32, label_smoothing=0.0, schedule=schedule),
                   donate_argnums=0, compiler_options=FAST_OPTIONS)
    rng = np.random.default_rng(0)
    batch = (rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 8).astype(np.int32))

    def kept(split):  # what a skipped step must keep: the model's variables and the optimizer's
        state = split.merge()
        return jax.device_get(nnx.to_pure_dict(nnx.state((state.model, state.optimizer))))

    def with_scale(split, scale):
        state = split.merge()
        state.loss_scale.scale[...] = jnp.float32(scale)
        return type(split).of(state)

    split = with_scale(split, 2.0 ** 100)
    before = kept(split)
    split, metrics = step(split, batch)
    after = kept(split)
    assert jax.tree.structure(before) == jax.tree.structure(after)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    state = split.merge()
    assert int(state.step[...]) == 1 and int(state.optimizer.step[...]) == 0
    assert float(state.loss_scale.scale[...]) == 2.0 ** 99  # stored back, halved
    assert float(metrics["loss_scale"]) == 2.0 ** 100  # the scale this step used
    assert int(state.loss_scale.fin_steps[...]) == 0
    assert int(metrics["skipped_steps"]) == 1  # train/skipped_steps

    split, metrics = step(with_scale(split, 2.0 ** 16), batch)  # a normal step goes through
    state = split.merge()
    assert np.isfinite(float(metrics["loss"]))
    assert int(state.step[...]) == 2 and int(state.optimizer.step[...]) == 1
    assert float(state.loss_scale.scale[...]) == 2.0 ** 16 and int(state.loss_scale.fin_steps[...]) == 1
    assert int(metrics["skipped_steps"]) == 1  # still the one
    assert not np.array_equal(jax.device_get(state.model.fc.kernel[...]), before[0]["fc"]["kernel"])
    assert not np.array_equal(jax.device_get(state.model.bn1.mean[...]), before[0]["bn1"]["mean"])


def test_lightning_16_mixed_on_a_cpu_stays_float16_with_a_loss_scaler():
    from lightning.pytorch.plugins import MixedPrecision

    from lightning_side.train import precision_arguments
    args = precision_arguments("16-mixed")
    if torch.cuda.is_available():
        assert args == {"precision": "16-mixed"}
        return
    (plugin,) = args["plugins"]
    assert isinstance(plugin, MixedPrecision) and plugin.scaler is not None
    assert plugin.scaler.get_scale() == 2.0 ** 16  # GradScaler's default, as flax's DynamicScale
    with plugin.forward_context():
        out = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert out.dtype == torch.float16


def test_flax_fp16_overflow_skips_the_step_and_halves_the_scale():
    """A non-finite gradient (a scale of 2**100 overflows float16) changes nothing but the
    counters: params, opt_state (optax's count included) and batch_stats keep their values,
    state.step advances (it counts batches, as Lightning's global_step), the scale halves."""
    # ResNet-20 with the first block of each stage only (a ResNet-8): the step's rules do not
    # depend on depth, and its float16 step compiles in a third of the time. Its weights are those
    # blocks of ResNet-20's init (float32 parameters either way), which the session's compilation
    # cache holds from the reference runs; an init of its own would compile for 7 s.
    widths, _, shortcut = CIFAR_ARCHITECTURES["resnet20"]
    model = CifarResNet(widths, (1,) * len(widths), shortcut, dtype=jnp.float16)
    full = initial_variables(create_flax_model("resnet20"), jax.random.key(0), (32, 32, 3))
    variables = {kind: {name: value for name, value in layers.items()
                        if not name.startswith("layer") or name.endswith("_0")} for kind, layers in full.items()}
    schedule = optax.constant_schedule(0.1)
    state = create_train_state(model, variables,
                               schedule=schedule, momentum=0.9, nesterov=True, weight_decay=1e-4,
                               loss_scaling=True)
    step = jax.jit(functools.partial(train_step, mean=np.full(3, 127.0), std=np.full(3, 60.0),
                                     input_dtype=jnp.float32, label_smoothing=0.0, schedule=schedule),
                   donate_argnums=0, compiler_options=FAST_OPTIONS)
    rng = np.random.default_rng(0)
    batch = (rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 8).astype(np.int32))
    kept = ("params", "opt_state", "batch_stats")

    state = state.replace(dynamic_scale=state.dynamic_scale.replace(scale=jnp.float32(2.0 ** 100)))
    before = jax.device_get({k: getattr(state, k) for k in kept})
    state, metrics = step(state, batch)
    after = jax.device_get({k: getattr(state, k) for k in kept})
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    assert int(state.step) == 1
    assert float(state.dynamic_scale.scale) == 2.0 ** 99  # stored back, halved
    assert float(metrics["loss_scale"]) == 2.0 ** 100  # the scale this step used
    assert int(state.dynamic_scale.fin_steps) == 0
    assert int(metrics["skipped_steps"]) == 1  # train/skipped_steps

    state = state.replace(dynamic_scale=state.dynamic_scale.replace(scale=jnp.float32(2.0 ** 16)))
    state, metrics = step(state, batch)  # a normal step goes through
    assert np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 2 and int(optax.tree_utils.tree_get(state.opt_state, "count")) == 1
    assert float(state.dynamic_scale.scale) == 2.0 ** 16 and int(state.dynamic_scale.fin_steps) == 1
    assert int(metrics["skipped_steps"]) == 1  # still the one
    assert not np.array_equal(jax.device_get(state.params["fc"]["kernel"]), before["params"]["fc"]["kernel"])


def test_lightning_16_mixed_skips_an_overflowing_step_and_counts_it(tmp_path, monkeypatch):
    """Lightning's 16-mixed as train.py builds it (precision_arguments, from INITIAL_LOSS_SCALE)
    and its train/skipped_steps callback, on a tiny model: with the scale forced past float16's
    range, every step is skipped, counted and halves the scale, and no weight moves."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from lightning_side import train as lightning_train
    from lightning_side.callbacks import SkippedSteps

    if torch.cuda.is_available():
        pytest.skip("on a GPU, 16-mixed is Lightning's own plugin; this checks the one built for the CPU")
    monkeypatch.setattr(lightning_train, "INITIAL_LOSS_SCALE", FORCED_SCALE)

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    torch.manual_seed(0)
    model = Tiny()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    data = torch.utils.data.TensorDataset(torch.randn(STEPS * 2, 4), torch.randint(0, 2, (STEPS * 2,)))
    skipped = SkippedSteps(1)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=CSVLogger(tmp_path), callbacks=[skipped],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        **lightning_train.precision_arguments("16-mixed"))
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=2))
    scaler = trainer.precision_plugin.scaler
    assert scaler.get_scale() == FORCED_SCALE / 2 ** STEPS
    assert skipped.state_dict() == {"skipped": STEPS}
    assert trainer.logged_metrics["train/skipped_steps"] == STEPS
    for name, value in model.state_dict().items():
        assert torch.equal(value, start[name]), name
