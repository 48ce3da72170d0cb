"""The measurements of the benchmark, each run by command.py in a fresh process of its own: the
raw step of each side, the shared loader, and the float32 matmul peak. Each returns a dict that
the process prints as JSON."""

from __future__ import annotations

import functools
import os
import tempfile
import time
from pathlib import Path

from common.runs import host_peak_memory_mb


def _process_age() -> float:
    """Seconds since this process started (Linux), so imports count towards the first step."""
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def raw_lightning(model: str, batch: int, steps: int, devices: int, compile: bool = False,
                  image_size: int = 32) -> dict:
    import torch

    from lightning_side.module import ResNetModule, parameter_groups

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = ResNetModule(model=model).to(device)  # channels_last, normalisation on the device
    optimizer = torch.optim.SGD(parameter_groups(module.model, 1e-4), lr=0.1, momentum=0.9, nesterov=True)
    images = torch.randint(0, 256, (batch, image_size, image_size, 3), dtype=torch.uint8).permute(0, 3, 1, 2).to(device)
    labels = torch.randint(0, 10, (batch,), device=device)
    forward = torch.compile(module) if compile else module  # as train.py --compile does

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = module.loss(forward(images), labels)
        loss.backward()
        optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    sync()
    first = _process_age()
    for _ in range(3):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return {"raw": steps * batch / (time.perf_counter() - start), "first_step": first,
            "peak_mb": (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                        else host_peak_memory_mb())}



# The recipe every flax measurement trains with: train.py's defaults (SGD, momentum 0.9 Nesterov,
# weight decay 1e-4 on conv and dense kernels) at a constant LR 0.1, fp32, 10 classes.
LR = 0.1
NUM_CLASSES = 10


def flax_api(api: str):
    """flax_side.api.LINEN ("flax") or nnx_side.api.NNX ("nnx"): the one place the two differ.
    Imported here, so that JAX starts after a caller has set XLA_FLAGS."""
    if api == "flax":
        from flax_side.api import LINEN

        return LINEN
    if api == "nnx":
        from nnx_side.api import NNX

        return NNX
    raise ValueError(f"unknown flax API {api!r}: flax (linen) or nnx")


def new_train_state(api: str, model: str, image_size: int, variables=None):
    """`api`'s step-0 train state of `model` for the recipe above, as train.py builds it
    (FlaxApi.new_state): fresh weights from key 0, or `variables` in linen's layout."""
    import jax
    import optax

    from common.config import TrainConfig
    from flax_side.precision import setup_precision

    config = TrainConfig(model=model, precision="32", lr=LR)
    return flax_api(api).new_state(config, NUM_CLASSES, (image_size, image_size, 3), setup_precision(config),
                                   optax.constant_schedule(LR), jax.random.key(0), variables)


def step_spec(model: str, batch: int, image_size: int):
    """What the steps are compiled for besides the state (flax_side/compiled_steps.py)."""
    import numpy as np

    from flax_side.compiled_steps import StepSpec

    return StepSpec(model=model, batch_size=batch, image_shape=(image_size, image_size, 3),
                    mean=np.full(3, 127.0), std=np.full(3, 64.0))


def synthetic_batch(batch: int, image_size: int, mesh):
    """(uint8 images, int32 labels), drawn from seed 0 and put on the devices, split along `mesh`."""
    import jax
    import numpy as np

    from flax_side.devices import batch_sharding

    rng = np.random.default_rng(0)
    return jax.device_put((rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8),
                           rng.integers(0, NUM_CLASSES, batch).astype(np.int32)), batch_sharding(mesh))


def compiled_step(api: str, state, spec, mesh, compiler_options: dict | None = None):
    """`api`'s train step exactly as train.py compiles it (flax_side/compiled_steps.py): over
    `state` (donated), for `spec`'s batch, with train.py's compiler options (None) or these."""
    import optax

    from flax_side.compiled_steps import compile_train_step

    return compile_train_step(state, optax.constant_schedule(LR), spec, mesh, compiler_options,
                              step=flax_api(api).train_step)


def flax_step(model: str, batch: int, devices: int, xla_defaults: bool = False, image_size: int = 32,
              api: str = "flax"):
    """(compiled train step, state, batch): the train step of `api` (linen: "flax", or "nnx")
    exactly as train.py compiles it (flax_side/compiled_steps.py), over a synthetic batch already
    sharded over `devices` devices, with train.py's compiler options or XLA's defaults. JAX is
    imported here, after XLA_FLAGS is set."""
    import jax

    from flax_side.devices import create_mesh, replicated

    mesh = create_mesh(devices)
    state = jax.device_put(new_train_state(api, model, image_size), replicated(mesh))
    data = synthetic_batch(batch, image_size, mesh)
    step = compiled_step(api, state, step_spec(model, batch, image_size), mesh,
                         compiler_options={} if xla_defaults else None)
    return step, state, data


def raw_flax(model: str, batch: int, steps: int, devices: int, compile: bool = False,
             xla_defaults: bool = False, image_size: int = 32, api: str = "flax") -> dict:
    """The raw step of `api` (linen: "flax", or "nnx"): the one worker of both flax columns."""
    if devices > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={devices}")
    start = time.perf_counter()
    compiled, state, data = flax_step(model, batch, devices, xla_defaults, image_size, api)
    compile_seconds = time.perf_counter() - start
    import jax

    from flax_side.devices import peak_memory_mb

    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    state, _ = compiled(state, data)
    jax.block_until_ready(state)
    first = _process_age()
    for _ in range(3):
        state, _ = compiled(state, data)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = compiled(state, data)
    jax.block_until_ready(state)
    return {"raw": steps * batch / (time.perf_counter() - start), "first_step": first,
            "compile_s": compile_seconds, "peak_mb": peak_memory_mb(),
            # XLA counts the FLOPs of one device's share of the sharded program.
            "flops_per_image": float(cost.get("flops", float("nan"))) * devices / batch}


def data_pipeline(batch: int, steps: int, workers: int, image_size: int = 32) -> dict:
    """Augmented images/s of the shared loader: at 32 px the in-memory pipeline on synthetic
    data; above, the streamed one on a generated folder of ImageNet-sized JPEGs (375-500 px a
    side), decoded, RandomResizedCrop'ed and flipped in `workers` workers (0: this process)."""
    from datamodules import ImageDataModule

    with tempfile.TemporaryDirectory() as tmp:
        if image_size == 32:
            dm = ImageDataModule(dataset="synthetic", batch_size=batch, num_workers=workers,
                                 synthetic_train_size=max(batch * (steps + 5), 10_000))
        else:
            from harness.photos import make_photo_folder

            per_class = -(-batch * (steps + 2) // 9)  # 10 classes, 10% of train carved for validation
            make_photo_folder(Path(tmp), per_class=per_class, eval_per_class=1, min_side=375, max_side=500)
            dm = ImageDataModule(dataset="imagefolder", data_dir=tmp, batch_size=batch,
                                 num_workers=workers, image_size=image_size)
        return _loader_rate(dm)


def _loader_rate(dm) -> dict:
    dm.setup()
    loader = dm.numpy_dataloader("train")
    it = iter(loader)
    next(it)  # workers started
    start = time.perf_counter()
    n = 0
    for images, _, _ in it:
        n += len(images)
    return {"data": n / (time.perf_counter() - start), "streamed": dm.streamed}


def matmul_peak() -> dict:
    """GFLOP/s of a float32 2048² matmul in torch and in XLA (their libraries differ;
    figures per CPU in docs/speed.md); the faster is the peak."""
    import jax
    import torch

    n, k = 2048, 10
    a = torch.randn(n, n)
    for _ in range(3):
        a @ a
    start = time.perf_counter()
    for _ in range(k):
        a @ a
    torch_gflops = k * 2 * n ** 3 / (time.perf_counter() - start) / 1e9
    x = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda x: x @ x)
    for _ in range(3):
        f(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(k):
        y = f(x)
    y.block_until_ready()
    xla_gflops = k * 2 * n ** 3 / (time.perf_counter() - start) / 1e9
    return {"torch": torch_gflops, "xla": xla_gflops}

WORKERS = {"raw-lightning": raw_lightning, "raw-flax": raw_flax,
           "raw-nnx": functools.partial(raw_flax, api="nnx"),
           "raw-flax-xla-defaults": functools.partial(raw_flax, xla_defaults=True)}
